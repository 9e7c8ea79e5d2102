// Approvals: every pending tool call and plan of the org (sub-agents' included), with the exact
// arguments; edit them then approve, or reject with a reason. The inbox refreshes every few
// seconds, keeping what you are editing.
import {all, post} from "./api.js";
import {errorBox, h, json, when} from "./dom.js";

// Approve (with edited arguments when the text changed) / reject-with-reason controls for one call.
export function decisionControls(call) {
  const id = call.tool_call_id || call.id;
  const original = json(call.args);
  const args = h("textarea", {class: "args-edit", name: "args", rows: Math.min(12, original.split("\n").length + 1),
    "aria-label": `Arguments of ${call.name}`, spellcheck: "false", value: original});
  const reason = h("input", {name: "reason", placeholder: "Reason (told to the model)", "aria-label": "Reason for rejecting"});
  const problem = h("div", {role: "status"});
  const decide = async (action) => {
    problem.replaceChildren();
    let body = {};
    if (action === "approve" && args.value !== original) {
      try { body = {args: JSON.parse(args.value)}; } catch (e) {
        problem.append(errorBox({code: "INVALID_JSON", message: `The arguments are not valid JSON: ${e.message}`}));
        return;
      }
    }
    if (action === "reject" && reason.value.trim()) body = {reason: reason.value.trim()};
    try { await post(`/v1/tool-calls/${id}/${action}`, body); box.dispatchEvent(new CustomEvent("decided", {bubbles: true})); }
    catch (error) { problem.append(errorBox(error)); }
  };
  const box = h("div", {class: "decide", dataset: {edit: "1"}}, args,
    h("div", {class: "actions"}, h("button", {type: "button", text: "Approve", onclick: () => decide("approve")}),
      reason, h("button", {type: "button", class: "danger", text: "Reject", onclick: () => decide("reject")})), problem);
  return box;
}

export async function render(main, ctx) {
  const list = h("ul", {class: "cards", id: "inbox"});
  const empty = h("p", {class: "muted", text: "Nothing waits for a decision."});
  const status = h("div", {role: "status"});
  main.append(h("h1", {text: "Approvals"}), status, list, empty);
  const items = new Map();
  const names = Object.fromEntries((await all("/v1/agents")).map((a) => [a.id, a.name]));
  let timer = null, stopped = false;
  const refresh = async () => {
    try {
      const pending = await all("/v1/tool-calls", {status: "pending"}, 200);
      status.replaceChildren();
      const ids = new Set(pending.map((c) => c.id));
      for (const [id, el] of items) if (!ids.has(id)) { el.remove(); items.delete(id); }
      for (const c of pending) {
        if (items.has(c.id)) continue;
        const el = h("li", {class: "card", dataset: {toolCall: c.id}},
          h("div", {class: "bar"}, h("h2", {}, h("code", {text: c.name}), c.kind === "plan" ? " (plan)" : ""), h("span", {class: "muted", text: when(c.created_at)})),
          h("p", {class: "muted"}, "agent ", h("strong", {text: names[c.agent_id] || c.agent_id}), " · run ", h("a", {href: `#/runs/${c.run_id}`, text: c.run_id})),
          ctx.can("member") ? decisionControls(c) : h("pre", {text: json(c.args)}));
        el.addEventListener("decided", () => { el.remove(); items.delete(c.id); empty.hidden = items.size > 0; });
        items.set(c.id, el);
        list.append(el);
      }
      empty.hidden = items.size > 0;
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
    if (!stopped) timer = setTimeout(refresh, 2000);
  };
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
