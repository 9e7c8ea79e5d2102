// The shell: who is signed in, the routes (#/agents, #/chat/…, …), the error banner.
import {ApiError, credential, forgetSession, get, hasSession, post, whenSignedOut} from "./api.js";
import {clear, errorBox, h} from "./dom.js";
import * as agents from "./agents.js";
import * as approvals from "./approvals.js";
import * as chat from "./chat.js";
import * as memory from "./memory.js";
import * as people from "./people.js";
import * as runs from "./runs.js";
import * as signin from "./signin.js";
import * as usage from "./usage.js";

const RANK = {viewer: 0, member: 1, admin: 2, owner: 3};

// What every page is given: the principal, and `can(role)` to decide which controls to show
// (the API enforces the same rules anyway).
export const ctx = {
  me: null,
  can: (role) => ctx.me !== null && RANK[ctx.me.role] >= RANK[role],
};

const ROUTES = [
  [/^#\/signin$/, signin.render],
  [/^#\/agents$/, agents.renderList],
  [/^#\/agents\/new$/, agents.renderEdit],
  [/^#\/agents\/(agt_\w+)$/, agents.renderEdit],
  [/^#\/agents\/(agt_\w+)\/versions$/, agents.renderVersions],
  [/^#\/chat\/(agt_\w+)$/, chat.render],
  [/^#\/chat\/(agt_\w+)\/(ses_\w+)$/, chat.render],
  [/^#\/approvals$/, approvals.render],
  [/^#\/memory$/, memory.render],
  [/^#\/runs$/, runs.renderList],
  [/^#\/runs\/(run_\w+)$/, runs.renderRun],
  [/^#\/usage$/, usage.render],
  [/^#\/members$/, people.renderMembers],
  [/^#\/invitations$/, people.renderInvitations],
];

const main = document.getElementById("main");
const banner = document.getElementById("banner");
let cleanup = null;

export function showError(error) {
  clear(banner, errorBox(error), h("button", {type: "button", class: "link", text: "Dismiss",
    onclick: () => { banner.hidden = true; }}));
  banner.hidden = false;
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function signedIn() {
  if (ctx.me) return true;
  if (!credential.get() && !hasSession()) return false;
  try {
    ctx.me = await get("/v1/me");
  } catch (error) {
    if (error.status !== 401) showError(error);
    else if (!credential.get()) forgetSession();
    credential.clear();
    return false;
  }
  document.getElementById("org-name").textContent = ctx.me.org_name || ctx.me.org_id;
  document.getElementById("role").textContent = ctx.me.role;
  document.body.dataset.role = ctx.me.role;
  document.getElementById("top").hidden = false;
  showOrgs();
  return true;
}

// A person in several orgs chooses one: a new sign-in there (new cookies), then every page anew.
function showOrgs() {
  const picker = document.getElementById("org-switch");
  const orgs = (ctx.me && ctx.me.orgs) || [];
  picker.hidden = credential.get() !== null || orgs.length < 2;
  document.getElementById("org-name").hidden = !picker.hidden;  // the picker names the org
  if (picker.hidden) return;
  clear(picker, orgs.map((o) => h("option", {value: o.org_id, text: `${o.org_name} (${o.role})`,
    selected: o.org_id === ctx.me.org_id})));
}

document.getElementById("org-switch").addEventListener("change", async (event) => {
  try {
    await post("/v1/auth/switch-org", {org_id: event.target.value});
  } catch (error) { showError(error); return; }
  ctx.me = null;
  route();
});

export async function signOut() {
  const cookieSession = !credential.get() && ctx.me !== null;
  credential.clear();
  ctx.me = null;
  if (cookieSession) {
    try { await post("/v1/auth/logout"); } catch { /* ended already */ }
  }
  document.getElementById("top").hidden = true;
  delete document.body.dataset.role;
  navigate("#/signin");
}

let generation = 0;

async function route() {
  const mine = ++generation;
  if (cleanup) { try { cleanup(); } catch { /* a page's cleanup must not stop the next */ } cleanup = null; }
  banner.hidden = true;
  let hash = location.hash || "#/agents";
  if (hash !== "#/signin" && !(await signedIn())) hash = "#/signin";
  if (mine !== generation) return;   // another navigation started meanwhile
  if (hash === "#/signin" && location.hash !== "#/signin") history.replaceState(null, "", "#/signin");
  for (const link of document.querySelectorAll("#nav a")) {
    link.toggleAttribute("aria-current", hash.startsWith(link.getAttribute("href")));
  }
  const match = ROUTES.find(([pattern]) => pattern.test(hash));
  // Each view renders into its own element: a slow page finishing after the user moved on
  // fills a detached element, never the current view.
  const view = h("div", {class: "view"});
  clear(main, view);
  if (!match) { clear(view, h("h1", {text: "Not found"}), h("p", {}, h("a", {href: "#/agents", text: "Agents"}))); return; }
  const params = hash.match(match[0]).slice(1);
  let done = null;
  try {
    done = (await match[1](view, ctx, ...params)) || null;
  } catch (error) {
    view.append(errorBox(error instanceof ApiError ? error : {code: "ERROR", message: String(error)}));
  }
  if (mine !== generation) { if (done) done(); return; }
  cleanup = done;
  if (!main.contains(document.activeElement)) main.focus({preventScroll: true});
}

whenSignedOut(() => { if (ctx.me) { showError({code: "UNAUTHENTICATED", message: "Your key no longer works; sign in again."}); signOut(); } });
document.getElementById("sign-out").addEventListener("click", () => { signOut(); });
window.addEventListener("hashchange", route);
// A rejection no page caught: shown, never left to the console.
window.addEventListener("unhandledrejection", (event) => { event.preventDefault(); showError(event.reason || {}); });
signin.finishProvider().then(route);
