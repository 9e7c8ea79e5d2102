// The timeline of a session's (or one run's) events: one block per run (its input, its steps,
// tool calls with arguments and results, sub-agents nested under the step that delegated, what
// memory was recalled, the streamed answer, how it ended). Every element made from an event
// carries that event's seq (`data-seq`), and events at or below the last seq are ignored, so a
// replay after a reload or a reconnect never shows anything twice.
import {get} from "./api.js";
import {h, json} from "./dom.js";

const ENDED = {"run.succeeded": "succeeded", "run.failed": "failed", "run.cancelled": "cancelled", "run.timed_out": "timed out"};

export class Timeline {
  constructor({onChange = () => {}, actions = null} = {}) {
    this.el = h("ol", {class: "timeline", id: "timeline", "aria-live": "polite"});
    this.runs = new Map();   // run id → {el, status, ...}
    this.last = 0;
    this.onChange = onChange;
    this.actions = actions;   // (toolCallEvent) => element with approve/reject controls, or null
  }

  // The run that holds the session now (later ones wait behind it): what Cancel stops.
  activeRun() {
    return [...this.runs.values()].find((r) => !r.ended) || null;
  }

  add(event) {
    if (event.seq <= this.last) return;
    this.last = event.seq;
    const run = this.run(event);
    const d = event.data || {};
    const mark = {dataset: {seq: String(event.seq), type: event.type}};
    switch (event.type) {
      case "run.queued":
        this.setStatus(run, "queued");
        break;
      case "run.started":
        this.setStatus(run, "running");
        if (d.attempt > 1) run.steps.append(h("li", {class: "note", ...mark, text: `resumed (attempt ${d.attempt})`}));
        break;
      case "step.started": {
        const agent = this.agent(run, d.agent_id);
        const step = h("li", {class: `step step-${d.node}`, ...mark},
          h("span", {class: "node", text: d.node}), agent.name ? h("span", {class: "muted", text: ` ${agent.name}`}) : null);
        agent.list.append(step);
        agent.step = step;
        agent.text = null;
        break;
      }
      case "memory.recalled": {
        const items = d.items || [];
        this.agent(run, d.agent_id).list.append(h("li", {class: "memory", ...mark},
          h("details", {}, h("summary", {text: `memory: ${items.length} items, ${d.turns || 0} earlier turns, ${d.tokens || 0} tokens`}),
            h("ul", {}, items.map((i) => h("li", {text: `${i.kind} · ${i.scope} · score ${Number(i.score).toFixed(3)} · ${i.id}`}))),
            d.summary ? h("p", {text: d.summary}) : null)));
        break;
      }
      case "message.delta": {
        const agent = this.agent(run, d.agent_id);
        if (agent === run.agents.get("root")) {
          if (!run.answerDelta) { run.answerDelta = event.seq; run.answer.dataset.seq = String(event.seq); }
          run.answer.hidden = false;
          run.answer.textContent += d.text;
        } else {
          if (!agent.text) { agent.text = h("p", {class: "subtext", ...mark}); agent.list.append(h("li", {}, agent.text)); }
          agent.text.textContent += d.text;
        }
        break;
      }
      case "tool.call": {
        const item = this.toolItem(run, d, mark);
        item.querySelector(".args").textContent = json(d.args);
        item.querySelector(".state").textContent = "running";
        break;
      }
      case "tool.result": {
        const item = run.tools.get(d.tool_call_id) || this.toolItem(run, d, {});
        const out = h("div", {class: d.error ? "result error-text" : "result", ...mark},
          h("strong", {text: d.error ? "error: " : "result: "}), h("pre", {text: d.error ? d.error : typeof d.output === "string" ? d.output : json(d.output)}));
        item.append(out);
        item.querySelector(".state").textContent = d.error ? "failed" : "done";
        break;
      }
      case "confirmation.required": {
        const item = this.toolItem(run, d, mark);
        item.querySelector(".args").textContent = json(d.args);
        item.querySelector(".state").textContent = d.kind === "plan" ? "plan waits for approval" : "waits for approval";
        item.classList.add("pending");
        this.setStatus(run, "awaiting approval");
        const controls = this.actions ? this.actions(d) : null;
        if (controls) item.append(controls);
        break;
      }
      case "confirmation.resolved": {
        const item = run.tools.get(d.tool_call_id);
        if (item) {
          item.classList.remove("pending");
          for (const c of item.querySelectorAll(".decide")) c.remove();
          item.append(h("div", {class: "decision", ...mark, text: `${d.decision} by ${d.decided_by}${d.reason ? ` — ${d.reason}` : ""}${d.args ? " (edited arguments)" : ""}`}));
          if (d.args) item.querySelector(".args").textContent = json(d.args);
          item.querySelector(".state").textContent = d.decision;
        }
        break;
      }
      case "subagent.started": {
        const known = run.agents.get(d.agent_id);
        if (known && !known.done) {   // the delegation resumes (after an approval): same box
          known.list.append(h("li", {class: "note", ...mark, text: "resumed"}));
          break;
        }
        const parent = this.agent(run, d.parent_agent_id);
        const box = h("li", {class: "subagent", ...mark}, h("div", {class: "subhead", text: `sub-agent ${d.name}`}), h("ol", {class: "sub"}));
        (parent.step || parent.list).append(box);
        run.agents.set(d.agent_id, {id: d.agent_id, name: d.name, list: box.querySelector("ol"), step: null, text: null, box});
        break;
      }
      case "subagent.completed": {
        const agent = run.agents.get(d.agent_id);
        if (agent) { agent.done = true; agent.box.append(h("div", {class: "muted", ...mark, text: `${d.name} answered`})); }
        break;
      }
      case "message.completed":
        run.answer.hidden = false;
        run.answer.textContent = d.message.content;
        run.answer.dataset.final = String(event.seq);
        break;
      case "run.warning":
      case "budget.warning":
        run.steps.append(h("li", {class: "warning", ...mark, text: d.message || `${d.budget}: ${d.percent}% used`}));
        break;
      default:
        if (event.type in ENDED) {
          run.ended = true;
          this.setStatus(run, ENDED[event.type]);
          const e = d.error;
          run.el.append(h("div", {class: `end end-${event.type.split(".")[1]}`, ...mark},
            e ? [h("strong", {text: e.code}), ` ${e.message}`] : ENDED[event.type],
            d.usage ? h("span", {class: "muted", text: ` · ${d.usage.total_tokens} tokens`}) : null));
        }
    }
    this.places();
    this.onChange(event);
  }

  run(event) {
    let run = this.runs.get(event.run_id);
    if (run) return run;
    const input = h("div", {class: "input"});
    const steps = h("ol", {class: "steps"});
    const answer = h("div", {class: "answer", hidden: true});
    const status = h("span", {class: "badge status"});
    const el = h("li", {class: "run", dataset: {run: event.run_id}},
      h("div", {class: "bar"}, h("a", {href: `#/runs/${event.run_id}`, class: "muted", text: event.run_id}), status), input, steps, answer);
    run = {id: event.run_id, el, input, steps, answer, status, ended: false, agents: new Map(), tools: new Map()};
    run.agents.set("root", {name: null, list: steps, step: null, text: null});
    this.runs.set(event.run_id, run);
    this.el.append(el);
    // The input is the run's, not an event's: read it once.
    get(`/v1/runs/${event.run_id}`).then((r) => {
      input.textContent = r.input && r.input.text;
      if (!run.ended) this.setStatus(run, run.statusText || r.status);
    }, () => {});
    return run;
  }

  // Sub-agents are known by their subagent.started; everything else is the run's own agent.
  agent(run, agentId) {
    return (agentId && run.agents.get(agentId)) || run.agents.get("root");
  }

  toolItem(run, d, mark) {
    let item = run.tools.get(d.tool_call_id);
    if (item) return item;
    const agent = this.agent(run, d.agent_id);
    item = h("li", {class: "tool", ...mark, dataset: {...mark.dataset, toolCall: d.tool_call_id}},
      h("div", {class: "bar"}, h("span", {}, h("span", {class: "node", text: "tool"}), " ", h("code", {text: d.name || ""})), h("span", {class: "state muted"})),
      h("pre", {class: "args"}));
    (agent.step || agent.list).append(item);
    run.tools.set(d.tool_call_id, item);
    return item;
  }

  setStatus(run, text) {
    run.statusText = text;
    run.status.dataset.status = text;
    this.places();
  }

  // Every run's status; a queued run shows its place: how many runs of this session are ahead of it.
  places() {
    let ahead = 0;
    for (const run of this.runs.values()) {
      const waiting = !run.ended && run.statusText === "queued" && ahead > 0;
      run.status.textContent = waiting ? `queued · place ${ahead + 1}` : run.statusText || "";
      if (!run.ended) ahead += 1;
    }
  }
}
