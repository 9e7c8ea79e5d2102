// Chat: the agent's sessions, and one session's timeline, replayed from its first event and
// then followed live (a reload shows the whole conversation again; a dropped connection resumes
// after the last event shown). Send, cancel, and decide waiting calls in place.
import {all, api, follow, get, post} from "./api.js";
import {clear, errorBox, h, when} from "./dom.js";
import {navigate} from "./app.js";
import {Timeline} from "./timeline.js";
import {decisionControls} from "./approvals.js";

export async function render(main, ctx, agentId, sessionId) {
  const [agent, sessions] = await Promise.all([get(`/v1/agents/${agentId}`), all("/v1/sessions", {agent_id: agentId}, 100)]);
  const status = h("div", {role: "status"});
  const newSession = ctx.can("member") ? h("button", {type: "button", text: "New session", dataset: {edit: "1"}, onclick: async () => {
    try {
      const s = await post("/v1/sessions", {agent_id: agentId});
      navigate(`#/chat/${agentId}/${s.id}`);
    } catch (error) { status.replaceChildren(errorBox(error)); }
  }}) : null;
  const list = h("nav", {class: "sessions", "aria-label": "Sessions"}, h("div", {class: "bar"}, h("h2", {text: "Sessions"}), newSession),
    sessions.length ? h("ul", {class: "plain"}, sessions.map((s) => h("li", {},
      h("a", {href: `#/chat/${agentId}/${s.id}`, "aria-current": s.id === sessionId ? "page" : null, text: s.title || when(s.created_at)})))) :
      h("p", {class: "muted", text: "No sessions yet."}), status);
  const pane = h("section", {class: "conversation"});
  main.append(h("div", {class: "bar"}, h("h1", {text: `Chat with ${agent.name}`}), h("a", {href: `#/agents/${agentId}`, text: "Agent settings"})),
    h("div", {class: "chat"}, list, pane));
  if (!sessionId) {
    pane.append(h("p", {class: "muted", text: sessions.length ? "Pick a session, or start a new one." : "Start a new session to chat."}));
    return null;
  }
  return conversation(pane, ctx, sessionId);
}

function conversation(pane, ctx, sessionId) {
  const connection = h("span", {class: "badge", id: "connection", text: "connecting"});
  const status = h("div", {role: "status", id: "chat-status"});
  const cancel = h("button", {type: "button", class: "danger", id: "cancel", text: "Cancel run", hidden: true, dataset: {edit: "1"}});
  const timeline = new Timeline({
    onChange: () => {
      const active = timeline.activeRun();
      cancel.hidden = !ctx.can("member") || !active;
      if (near) timeline.el.lastElementChild?.scrollIntoView({block: "end"});
    },
    actions: ctx.can("member") ? decisionControls : null,
  });
  let near = true;
  cancel.onclick = async () => {
    const run = timeline.activeRun();
    if (!run) return;
    try { await post(`/v1/runs/${run.id}/cancel`); } catch (error) { status.replaceChildren(errorBox(error)); }
  };
  const input = h("textarea", {name: "input", rows: 3, required: true, "aria-label": "Message", placeholder: "Message the agent… (Ctrl+Enter sends)"});
  const send = async (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    status.replaceChildren();
    try {
      await api("POST", `/v1/sessions/${sessionId}/runs`, {input: text});
      input.value = "";
    } catch (error) { status.replaceChildren(errorBox(error)); }
  };
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e); });
  const composer = ctx.can("member") ? h("form", {class: "composer", onsubmit: send}, input,
    h("div", {class: "actions"}, h("button", {type: "submit", text: "Send", dataset: {edit: "1"}}), cancel)) :
    h("p", {class: "muted", text: "Viewers can follow conversations but not send messages."});
  clear(pane, h("div", {class: "bar"}, h("h2", {text: "Conversation"}), connection), timeline.el, status, composer);
  const stream = follow("session", sessionId, {
    after: 0,
    onEvent: (event) => timeline.add(event),
    onState: (state, error) => {
      connection.textContent = state;
      connection.dataset.state = state;
      if (error) status.replaceChildren(errorBox(error));
    },
  });
  return () => stream.close();
}
