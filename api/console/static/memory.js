// Memory and knowledge: search long-term memories (with scores) by scope, agent or end user,
// delete one; add knowledge documents and watch them go from pending to ready; delete them.
import {all, api, del, get} from "./api.js";
import {clear, errorBox, field, h, when} from "./dom.js";

export async function render(main, ctx) {
  const agents = await all("/v1/agents");
  const query = h("input", {name: "query", type: "search", placeholder: "What to look for"});
  const scope = h("select", {name: "scope"}, ["", "org", "agent", "user", "session"].map((s) => h("option", {value: s, text: s || "any scope"})));
  const agent = h("select", {name: "agent_id"}, h("option", {value: "", text: "any agent"}), agents.map((a) => h("option", {value: a.id, text: a.name})));
  const user = h("input", {name: "user", placeholder: "end user id"});
  const results = h("ul", {class: "cards", id: "memories"});
  const status = h("div", {role: "status"});
  const search = async (event) => {
    if (event) event.preventDefault();
    status.replaceChildren();
    try {
      const page = await get("/v1/memories", {query: query.value.trim(), scope: scope.value, agent_id: agent.value, user: user.value.trim()});
      clear(results, page.data.length ? page.data.map((m) => memoryItem(m, ctx, status)) : h("li", {class: "muted", text: "No memories found."}));
      if (page.note) status.append(h("p", {class: "muted", text: page.note}));
    } catch (error) { status.append(errorBox(error)); }
  };
  main.append(h("h1", {text: "Memory"}),
    h("form", {class: "card", id: "memory-search", onsubmit: search}, h("div", {class: "row"},
      field("Search", query), field("Scope", scope), field("Agent", agent), field("End user", user)),
    h("button", {type: "submit", text: "Search"})), status, results);
  await search();
  main.append(await knowledge(ctx));
}

function memoryItem(m, ctx, status) {
  const el = h("li", {class: "card", dataset: {memory: m.id}},
    h("div", {class: "bar"}, h("span", {}, h("span", {class: "badge", text: m.scope}), " ", h("span", {class: "badge", text: m.kind})),
      m.score !== undefined ? h("span", {class: "score", text: `score ${m.score.toFixed(3)}`}) : h("span", {class: "muted", text: when(m.created_at)})),
    h("p", {text: m.content}),
    h("p", {class: "muted", text: [m.agent_id && `agent ${m.agent_id}`, m.user_id && `user ${m.user_id}`, m.session_id && `session ${m.session_id}`, `source ${m.source}`].filter(Boolean).join(" · ")}),
    ctx.can("member") ? h("button", {type: "button", class: "danger", text: "Delete", dataset: {edit: "1"}, onclick: async () => {
      try { await del(`/v1/memories/${m.id}`); el.remove(); } catch (error) { status.replaceChildren(errorBox(error)); }
    }}) : null);
  return el;
}

async function knowledge(ctx) {
  const list = h("ul", {class: "cards", id: "documents"});
  const status = h("div", {role: "status"});
  let timer = null;
  const refresh = async () => {
    clearTimeout(timer);
    const docs = await all("/v1/knowledge", {}, 200);
    clear(list, docs.length ? docs.map((d) => h("li", {class: "card", dataset: {document: d.id, status: d.status}},
      h("div", {class: "bar"}, h("strong", {text: d.title}), h("span", {class: `badge doc-${d.status}`, text: d.status})),
      h("p", {class: "muted", text: `${d.size_bytes} bytes · ${d.chunks ?? 0} chunks · ${when(d.created_at)}`}),
      d.error ? errorBox(d.error) : null,
      ctx.can("member") ? h("button", {type: "button", class: "danger", text: "Delete", dataset: {edit: "1"}, onclick: async () => {
        try { await del(`/v1/knowledge/${d.id}`); await refresh(); } catch (error) { status.replaceChildren(errorBox(error)); }
      }}) : null)) : h("li", {class: "muted", text: "No documents yet."}));
    // Watch pending documents until the worker is done with them (only while this page shows).
    if (docs.some((d) => d.status === "pending") && list.isConnected) {
      timer = setTimeout(() => refresh().catch((error) => status.replaceChildren(errorBox(error))), 1000);
    }
  };
  const title = h("input", {name: "title", placeholder: "optional"});
  const content = h("textarea", {name: "content", rows: 5});
  const file = h("input", {type: "file", name: "file", accept: ".md,.txt,text/plain,text/markdown"});
  file.onchange = async () => {
    const f = file.files[0];
    if (!f) return;
    content.value = await f.text();
    if (!title.value) title.value = f.name;
  };
  const upload = ctx.can("member") ? h("form", {class: "card", id: "knowledge-upload", onsubmit: async (event) => {
    event.preventDefault();
    status.replaceChildren();
    try {
      const markdown = /\.md$/i.test(title.value) || /^#/m.test(content.value);
      await api("POST", "/v1/knowledge", {content: content.value, title: title.value.trim() || undefined,
        content_type: markdown ? "text/markdown" : "text/plain"});
      content.value = ""; title.value = ""; file.value = "";
      await refresh();
    } catch (error) { status.append(errorBox(error)); }
  }}, h("h3", {text: "Add a document"}), field("File", file, "or paste the text below"), field("Title", title), field("Content", content),
  h("button", {type: "submit", text: "Upload", dataset: {edit: "1"}})) : null;
  const section = h("section", {}, h("h2", {text: "Knowledge base"}), upload, status, list);
  await refresh();
  return section;
}
