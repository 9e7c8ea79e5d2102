// Runs: a list across the org's recent sessions with filters (status, agent, since), and a run's
// page: its timeline (replayed from its events), duration, tokens, cost, trace id (a link when
// the operator configured a trace UI), and its tool calls.
import {all, follow, get} from "./api.js";
import {clear, errorBox, h, seconds, when} from "./dom.js";
import {Timeline} from "./timeline.js";
import {decisionControls} from "./approvals.js";

const STATUSES = ["", "queued", "running", "awaiting_confirmation", "succeeded", "failed", "cancelled", "timed_out"];

export async function renderList(main) {
  const agents = await all("/v1/agents");
  const names = Object.fromEntries(agents.map((a) => [a.id, a.name]));
  const status = h("select", {name: "status"}, STATUSES.map((s) => h("option", {value: s, text: s || "any status"})));
  const agent = h("select", {name: "agent"}, h("option", {value: "", text: "any agent"}), agents.map((a) => h("option", {value: a.id, text: a.name})));
  const since = h("input", {type: "datetime-local", name: "since"});
  const body = h("tbody");
  const problem = h("div", {role: "status"});
  const show = async (event) => {
    if (event) event.preventDefault();
    problem.replaceChildren();
    try {
      // The runs of the 20 most recent sessions (of the chosen agent): runs live in sessions.
      const sessions = await all("/v1/sessions", {agent_id: agent.value}, 20);
      const lists = await Promise.all(sessions.slice(0, 20).map((s) => all(`/v1/sessions/${s.id}/runs`, {}, 50)));
      const from = since.value ? new Date(since.value) : null;
      const runs = lists.flat().filter((r) => (!status.value || r.status === status.value) && (!from || new Date(r.created_at) >= from))
        .sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
      clear(body, runs.length ? runs.map((r) => h("tr", {},
        h("td", {}, h("a", {href: `#/runs/${r.id}`, text: r.id.slice(0, 16) + "…"})),
        h("td", {text: names[r.agent_id] || r.agent_id}), h("td", {}, h("span", {class: "badge", dataset: {status: r.status}, text: r.status})),
        h("td", {text: when(r.created_at)}), h("td", {text: seconds(r.started_at, r.finished_at)}),
        h("td", {text: String(r.usage.total_tokens)}))) : h("tr", {}, h("td", {colspan: 6, class: "muted", text: "No runs match."})));
    } catch (error) { problem.append(errorBox(error)); }
  };
  main.append(h("h1", {text: "Runs"}),
    h("form", {class: "row card", onsubmit: show}, h("label", {}, "Status ", status), h("label", {}, "Agent ", agent),
      h("label", {}, "Since ", since), h("button", {type: "submit", text: "Filter"})), problem,
    h("div", {class: "scroll"}, h("table", {id: "runs"}, h("thead", {}, h("tr", {}, ["Run", "Agent", "Status", "Created", "Duration", "Tokens"].map((t) => h("th", {scope: "col", text: t})))), body)));
  await show();
}

export async function renderRun(main, ctx, runId) {
  const run = await get(`/v1/runs/${runId}`);
  const traceUrl = document.querySelector('meta[name="agentos-trace-url"]').content;
  const facts = h("dl", {class: "facts", id: "run-facts"});
  const fill = (r) => clear(facts, [
    ["Status", h("span", {class: "badge", dataset: {status: r.status}, text: r.status})],
    ["Agent", h("a", {href: `#/agents/${r.agent_id}`, text: `${r.agent_id} v${r.agent_version}`})],
    ["Session", h("a", {href: `#/chat/${r.agent_id}/${r.session_id}`, text: r.session_id})],
    ["Created", when(r.created_at)], ["Duration", seconds(r.started_at, r.finished_at) || "—"],
    ["Tokens", `${r.usage.total_tokens} (${r.usage.input_tokens} in, ${r.usage.output_tokens} out, ${r.usage.cached_tokens} cached)`],
    ["Cost", `$${Number(r.usage.cost_usd).toFixed(6)}`], ["Model calls", String(r.usage.model_calls)],
    ["Trace", traceUrl ? h("a", {href: traceUrl.replace("{trace_id}", r.trace_id), rel: "noopener", target: "_blank", text: r.trace_id}) : h("code", {text: r.trace_id})],
    r.error ? ["Error", errorBox(r.error)] : null,
  ].filter(Boolean).map(([k, v]) => [h("dt", {text: k}), h("dd", {}, v)]));
  fill(run);
  const timeline = new Timeline({actions: ctx.can("member") ? decisionControls : null});
  main.append(h("h1", {text: `Run ${runId}`}), facts, h("h2", {text: "Timeline"}), timeline.el);
  const stream = follow("run", runId, {after: 0, onEvent: (e) => timeline.add(e),
    onEnd: () => get(`/v1/runs/${runId}`).then(fill, () => {})});
  return () => stream.close();
}
