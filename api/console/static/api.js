// Talking to the API: fetch with the key from sessionStorage (never in a URL) or, for people who
// signed in with a password or a provider, the cookie session (HttpOnly cookies the page never
// sees; every write echoes the agentos_csrf cookie in X-CSRF-Token, and an expired access cookie
// is refreshed once). Errors as ApiError {status, code, message, details}; `follow` for event
// streams (EventSource with a stream token, resuming after the last seq shown).

const KEY = "agentos.key";
// The console is served at <api>/console/; the API is the directory above.
export const BASE = new URL("../", location.href).href.replace(/\/$/, "");

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

export const credential = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

let onUnauthenticated = () => {};
export function whenSignedOut(handler) { onUnauthenticated = handler; }

function csrfCookie() {
  const found = document.cookie.split("; ").find((c) => c.startsWith("agentos_csrf="));
  return found ? decodeURIComponent(found.slice("agentos_csrf=".length)) : "";
}

// Whether a cookie session may be open (its CSRF cookie is the one the page can see).
export const hasSession = () => csrfCookie() !== "";
// A cookie session that no longer works: forget its CSRF cookie so the next load does not ask.
export function forgetSession() { document.cookie = "agentos_csrf=; Max-Age=0; Path=/; SameSite=Strict"; }

let refreshing = null;
// The cookie session's access cookie lives minutes: trade the refresh cookie for new ones (one
// refresh at a time, shared by every request that needed it). True if it worked.
export function refreshSession() {
  if (!refreshing) {
    refreshing = fetch(BASE + "/v1/auth/refresh", {method: "POST", body: "{}",
      headers: {"Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrfCookie()}})
      .then((r) => r.ok, () => false)
      .finally(() => { refreshing = null; });
  }
  return refreshing;
}

export async function api(method, path, body, {query, contentType, retried} = {}) {
  const url = new URL(BASE + path);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = {Accept: "application/json"};
  const key = credential.get();
  if (key) headers.Authorization = `Bearer ${key}`;
  else if (!["GET", "HEAD"].includes(method)) headers["X-CSRF-Token"] = csrfCookie();
  const init = {method, headers};
  if (body !== undefined) {
    headers["Content-Type"] = contentType || "application/json";
    init.body = contentType ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw new ApiError(0, "NETWORK", "The API could not be reached; check your connection and try again.");
  }
  if (response.status === 204) return null;
  let payload = null;
  try { payload = await response.json(); } catch { payload = null; }
  if (!response.ok) {
    const e = (payload && payload.error) || {};
    if (response.status === 401 && !key && !retried && !path.startsWith("/v1/auth/") && csrfCookie()
        && await refreshSession()) {
      return api(method, path, body, {query, contentType, retried: true});
    }
    const error = new ApiError(response.status, e.code || `HTTP_${response.status}`,
      e.message || response.statusText || "The request failed.", e.details);
    if (response.status === 401 && e.code === "UNAUTHENTICATED") onUnauthenticated(error);
    throw error;
  }
  return payload;
}

export const get = (path, query) => api("GET", path, undefined, {query});
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path, query) => api("DELETE", path, undefined, {query});

// Every page of a list (bounded: the console shows at most `max` items).
export async function all(path, query = {}, max = 500) {
  const out = [];
  let cursor = null;
  do {
    const page = await get(path, {...query, limit: 100, cursor});
    out.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor && out.length < max);
  return out;
}

export const TERMINAL = ["run.succeeded", "run.failed", "run.cancelled", "run.timed_out"];
export const TYPES = ["run.queued", "run.started", "step.started", "memory.recalled", "message.delta", "tool.call",
  "tool.result", "confirmation.required", "confirmation.resolved", "subagent.started", "subagent.completed",
  "message.completed", "run.warning", "budget.warning", ...TERMINAL];

// Follow a session's (or a run's) events from `after` (0: from the start): a fresh stream token
// per connection; on any error the stream closes and reopens after the last seq delivered, so
// nothing is missed or shown twice. `onState` hears "live" / "reconnecting". Returns {close}.
export function follow(kind, id, {after = 0, onEvent, onState = () => {}, onEnd = () => {}}) {
  let last = after, source = null, closed = false, timer = null;
  const open = async () => {
    if (closed) return;
    let grant;
    try {
      grant = await post("/v1/stream-tokens", {[`${kind}_id`]: id});
    } catch (error) {
      if (error.status === 404 || error.status === 401) { onState("closed", error); return; }
      retry();
      return;
    }
    if (closed) return;
    const url = new URL(grant.url);
    url.searchParams.set("after", String(last));
    // Same origin as the page, whatever address the API believes it has.
    source = new EventSource(BASE + url.pathname.replace(/^.*?(\/v1\/)/, "$1") + url.search);
    source.onopen = () => onState("live");
    const deliver = (message) => {
      const event = JSON.parse(message.data);
      if (event.seq <= last) return;   // never twice
      last = event.seq;
      onEvent(event);
      if (kind === "run" && TERMINAL.includes(event.type)) { close(); onEnd(); }
    };
    for (const type of TYPES) source.addEventListener(type, deliver);
    source.onerror = () => {
      if (closed) return;
      source.close();   // not its own retry: the token may have expired
      onState("reconnecting");
      retry();
    };
  };
  const retry = () => { timer = setTimeout(open, 1000); };
  const close = () => { closed = true; clearTimeout(timer); if (source) source.close(); };
  open();
  return {close, last: () => last};
}
