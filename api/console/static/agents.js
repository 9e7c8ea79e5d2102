// Agents: the list, the editor (every field of POST/PATCH /v1/agents, with the API's validation
// errors shown under the field they name), and the version history with a diff.
import {all, api, get} from "./api.js";
import {append, clear, errorBox, field, h, json, when} from "./dom.js";
import {navigate} from "./app.js";
import {diffLines} from "./diff.js";

export async function renderList(main, ctx) {
  const list = await all("/v1/agents");
  main.append(h("div", {class: "bar"}, h("h1", {text: "Agents"}),
    ctx.can("member") ? h("a", {class: "button", href: "#/agents/new", text: "New agent", dataset: {edit: "1"}}) : null));
  if (list.length === 0) { main.append(h("p", {class: "muted", text: "No agents yet."})); return; }
  main.append(h("ul", {class: "cards", id: "agent-list"}, list.map((a) => h("li", {class: "card", dataset: {agent: a.name}},
    h("div", {class: "bar"}, h("h2", {}, h("a", {href: `#/chat/${a.id}`, text: a.name})), h("span", {class: "badge", text: `v${a.version}`})),
    h("p", {class: "muted", text: `${a.model} · ${a.skills.length} skills · mode ${a.mode}`}),
    h("p", {class: "actions"},
      h("a", {href: `#/chat/${a.id}`, text: "Chat"}),
      h("a", {href: `#/agents/${a.id}`, text: ctx.can("member") ? "Edit" : "View"}),
      h("a", {href: `#/agents/${a.id}/versions`, text: "Versions"}))))));
}

const MODELS = ["offline:default", "offline:echo", "openai:gpt-4o-mini", "anthropic:claude-3-5-haiku-latest"];

async function providerModels() {
  // The org's providers (GET /v1/providers) with each one's models (GET …/models, cached by the
  // server); a provider that does not answer still offers its default model.
  const page = await get("/v1/providers");
  const lists = await Promise.allSettled(page.data.map((p) => get(`/v1/providers/${p.id}/models`)));
  return page.data.flatMap((p, i) => {
    const listed = lists[i].status === "fulfilled" ? lists[i].value.data.map((m) => m.id) : [];
    return [...new Set([p.default_model, ...listed].filter(Boolean))].map((m) => `${p.name}:${m}`);
  });
}

export async function renderEdit(main, ctx, agentId) {
  const editable = ctx.can("member");
  const [agent, skills, others, models] = await Promise.all([
    agentId ? get(`/v1/agents/${agentId}`) : Promise.resolve(null),
    all("/v1/skills"), all("/v1/agents"), providerModels()]);
  const a = agent || {name: "", instructions: "", model: "offline:default", skills: [], subagents: [], confirm: [],
    mode: "agent", limits: {max_steps: 25, max_tokens: 100000, timeout_s: 600},
    memory: {short_term_tokens: 4000, long_term: true, knowledge: false}};
  const dis = !editable;
  const input = (name, value, attrs = {}) => h("input", {name, value: value ?? "", disabled: dis, ...attrs});
  const name = input("name", a.name, {required: true, maxlength: 100});
  const instructions = h("textarea", {name: "instructions", rows: 6, disabled: dis, value: a.instructions});
  const model = input("model", a.model, {list: "models"});
  const models_ = h("datalist", {id: "models"}, [...new Set([...models, ...MODELS])].map((m) => h("option", {value: m})));
  const pinned = Object.fromEntries(a.skills.map((s) => s.split("@")).map(([n, v]) => [n, v || ""]));
  const skillRows = skills.map((s) => {
    const box = h("input", {type: "checkbox", name: "skill", value: s.name, checked: s.name in pinned, disabled: dis});
    const version = s.version ? h("select", {name: `pin-${s.name}`, disabled: dis, "aria-label": `${s.name} version`},
      h("option", {value: "", text: "latest"}),
      Array.from({length: s.version}, (_, i) => h("option", {value: String(i + 1), text: `v${i + 1}`}))) : null;
    if (version) version.value = pinned[s.name] || "";
    return {s, box, version, el: h("label", {class: "check"}, box, ` ${s.name}`, version ? [" ", version] : null,
      h("small", {class: "muted", text: ` ${(s.description || "").slice(0, 80)}`}))};
  });
  const subRows = others.filter((o) => o.id !== agentId).map((o) => {
    const box = h("input", {type: "checkbox", name: "subagent", value: o.id, checked: a.subagents.includes(o.id), disabled: dis});
    return {box, el: h("label", {class: "check"}, box, ` ${o.name}`)};
  });
  const confirmMode = h("select", {name: "confirm-mode", disabled: dis},
    h("option", {value: "list", text: "the skills listed"}), h("option", {value: "all", text: "all calls"}),
    h("option", {value: "none", text: "none (not even sensitive ones)"}));
  confirmMode.value = Array.isArray(a.confirm) ? "list" : a.confirm;
  const confirmList = input("confirm", Array.isArray(a.confirm) ? a.confirm.join(", ") : "", {placeholder: "e.g. web_fetch, file_manager"});
  const mode = h("select", {name: "mode", disabled: dis}, h("option", {value: "agent", text: "agent"}), h("option", {value: "plan", text: "plan (approve a plan first)"}));
  mode.value = a.mode;
  const num = (n, v) => input(n, String(v), {type: "number", inputmode: "numeric"});
  const maxSteps = num("limits.max_steps", a.limits.max_steps);
  const maxTokens = num("limits.max_tokens", a.limits.max_tokens);
  const timeout = num("limits.timeout_s", a.limits.timeout_s);
  const shortTerm = num("memory.short_term_tokens", a.memory.short_term_tokens);
  const longTerm = h("input", {type: "checkbox", name: "memory.long_term", checked: a.memory.long_term, disabled: dis});
  const knowledge = h("input", {type: "checkbox", name: "memory.knowledge", checked: a.memory.knowledge, disabled: dis});
  const status = h("div", {role: "status", id: "form-status"});

  const body = () => ({
    name: name.value, instructions: instructions.value, model: model.value.trim(),
    skills: skillRows.filter((r) => r.box.checked).map((r) => (r.version && r.version.value ? `${r.s.name}@${r.version.value}` : r.s.name)),
    subagents: subRows.filter((r) => r.box.checked).map((r) => r.box.value),
    confirm: confirmMode.value === "list" ? confirmList.value.split(",").map((x) => x.trim()).filter(Boolean) : confirmMode.value,
    mode: mode.value,
    limits: {max_steps: Number(maxSteps.value), max_tokens: Number(maxTokens.value), timeout_s: Number(timeout.value)},
    memory: {short_term_tokens: Number(shortTerm.value), long_term: longTerm.checked, knowledge: knowledge.checked},
  });

  const form = h("form", {class: "card", id: "agent-form", novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    status.replaceChildren();
    try {
      const saved = agent ? await api("PATCH", `/v1/agents/${agent.id}`, body()) : await api("POST", "/v1/agents", body());
      navigate(`#/agents/${saved.id}`);
      if (agent) status.append(h("p", {class: "ok", text: `Saved as version ${saved.version}.`}));
    } catch (error) {
      status.append(errorBox(error));
      showFieldErrors(form, error);
    }
  }},
  h("div", {class: "bar"}, h("h1", {text: agent ? `Agent ${agent.name}` : "New agent"}),
    agent ? h("span", {class: "badge", text: `v${agent.version}`}) : null),
  agent ? h("p", {class: "actions"}, h("a", {href: `#/chat/${agent.id}`, text: "Chat"}),
    h("a", {href: `#/agents/${agent.id}/versions`, text: "Version history"})) : null,
  field("Name", name), field("Instructions", instructions, "The system prompt."),
  field("Model", model, "provider:model, e.g. offline:default or openai:gpt-4o-mini"), models_,
  h("fieldset", {dataset: {field: "skills"}}, h("legend", {text: "Skills"}), skillRows.map((r) => r.el), h("small", {class: "field-error"})),
  h("fieldset", {dataset: {field: "subagents"}}, h("legend", {text: "Sub-agents"}),
    subRows.length ? subRows.map((r) => r.el) : h("small", {class: "muted", text: "No other agents."}), h("small", {class: "field-error"})),
  h("fieldset", {dataset: {field: "confirm"}}, h("legend", {text: "Needs approval"}), field("Which calls wait for a human", confirmMode), field("Skills", confirmList), h("small", {class: "field-error"})),
  field("Mode", mode),
  h("fieldset", {}, h("legend", {text: "Limits"}), h("div", {class: "row"},
    field("Max steps", maxSteps), field("Max tokens", maxTokens), field("Timeout (s)", timeout))),
  h("fieldset", {}, h("legend", {text: "Memory"}), field("Short-term tokens", shortTerm),
    h("label", {class: "check"}, longTerm, " recall long-term memories"),
    h("label", {class: "check"}, knowledge, " recall the knowledge base")),
  editable ? h("div", {class: "actions"}, h("button", {type: "submit", text: agent ? "Save" : "Create agent", dataset: {edit: "1"}}),
    agent ? h("button", {type: "button", class: "danger", text: "Delete", dataset: {edit: "1"}, onclick: async () => {
      if (!confirm(`Delete agent ${agent.name}?`)) return;
      try { await api("DELETE", `/v1/agents/${agent.id}`); navigate("#/agents"); } catch (error) { status.append(errorBox(error)); }
    }}) : null) : null,
  status);
  main.append(form);
}

// VALIDATION_FAILED names each field by its path (`limits.max_steps`, `subagents`); other codes
// may name one in details.field (a taken name).
function showFieldErrors(form, error) {
  const problems = (error.details && error.details.fields) || (error.details && error.details.field ? [{field: error.details.field, message: error.message}] : []);
  for (const p of problems) {
    const path = String(p.field);
    const holder = [...form.querySelectorAll("[data-field]")].find((el) => el.dataset.field && (path === el.dataset.field || path.startsWith(`${el.dataset.field}.`)));
    if (!holder) continue;
    const slot = holder.querySelector(".field-error");
    if (slot) slot.textContent = [slot.textContent, p.message].filter(Boolean).join("; ");
    const control = holder.querySelector("input, textarea, select");
    if (control) control.setAttribute("aria-invalid", "true");
  }
}

export async function renderVersions(main, ctx, agentId) {
  const [agent, versions] = await Promise.all([get(`/v1/agents/${agentId}`), all(`/v1/agents/${agentId}/versions`)]);
  const pick = (label, initial) => {
    const s = h("select", {"aria-label": label}, versions.map((v) => h("option", {value: String(v.version), text: `v${v.version} · ${when(v.created_at)}`})));
    s.value = String(initial);
    return s;
  };
  const older = pick("Older version", versions.length > 1 ? versions[1].version : versions[0].version);
  const newer = pick("Newer version", versions[0].version);
  const out = h("pre", {class: "diff", id: "diff", tabindex: "0"});
  const config = (v) => {
    const {created_at, created_by, ...rest} = versions.find((x) => String(x.version) === v) || {};
    return json(rest).split("\n");
  };
  const show = () => clear(out, diffLines(config(older.value), config(newer.value)).map(([op, line]) =>
    h("span", {class: op === "+" ? "add" : op === "-" ? "del" : "same", text: `${op} ${line}\n`})));
  older.onchange = show;
  newer.onchange = show;
  main.append(h("h1", {text: `${agent.name}: versions`}),
    h("p", {class: "actions"}, h("a", {href: `#/agents/${agentId}`, text: "Back to the agent"})),
    h("div", {class: "row"}, h("label", {}, "From ", older), h("label", {}, "to ", newer)), out,
    h("ul", {class: "plain"}, versions.map((v) => h("li", {text: `v${v.version} — ${when(v.created_at)} by ${v.created_by || "an API key"}`}))));
  show();
}
