// Usage: tokens and cost per day and per agent for a period (GET /v1/usage, admins), as bars.
import {all, get} from "./api.js";
import {clear, errorBox, h} from "./dom.js";

const today = () => new Date().toISOString().slice(0, 10);

export async function render(main) {
  const from = h("input", {type: "date", name: "from", value: today().slice(0, 8) + "01"});
  const to = h("input", {type: "date", name: "to", value: today()});
  const out = h("div", {id: "usage"});
  const show = async (event) => {
    if (event) event.preventDefault();
    clear(out);
    try {
      const [byDay, byAgent, agents] = await Promise.all([
        get("/v1/usage", {from: from.value, to: to.value, group_by: "day"}),
        get("/v1/usage", {from: from.value, to: to.value, group_by: "agent"}), all("/v1/agents")]);
      const names = Object.fromEntries(agents.map((a) => [a.id, a.name]));
      const t = byDay.totals;
      out.append(h("p", {class: "totals", text: `${t.total_tokens} tokens · $${Number(t.cost_usd).toFixed(4)} · ${t.model_calls} model calls · ${t.sandbox_executions} sandbox runs`}),
        (byDay.budgets || []).map((b) => h("p", {class: b.exceeded ? "error" : b.warning ? "warning" : "muted", text: `${b.budget}: ${b.used} of ${b.limit} (${b.percent}%)`})),
        h("h2", {text: "Per day"}), bars(byDay.data, (d) => d.day),
        h("h2", {text: "Per agent"}), bars(byAgent.data, (d) => names[d.agent_id] || d.agent_id || "—"));
    } catch (error) { out.append(errorBox(error)); }
  };
  main.append(h("h1", {text: "Usage"}), h("form", {class: "row card", onsubmit: show},
    h("label", {}, "From ", from), h("label", {}, "To ", to), h("button", {type: "submit", text: "Show"})), out);
  await show();
}

function bars(rows, label) {
  if (!rows.length) return h("p", {class: "muted", text: "No usage in this period."});
  const max = Math.max(1, ...rows.map((r) => r.total_tokens));
  return h("table", {class: "bars"}, h("tbody", {}, rows.map((r) => {
    const bar = h("span", {class: "bar-fill"});
    bar.style.width = `${(100 * r.total_tokens) / max}%`;
    return h("tr", {}, h("th", {scope: "row", text: label(r)}), h("td", {class: "bar-cell"}, bar),
      h("td", {class: "num", text: `${r.total_tokens} tok · $${Number(r.cost_usd).toFixed(4)}`}));
  })));
}
