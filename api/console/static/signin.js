// Sign-in: with email and password, or an identity provider when the server has one (both leave a
// cookie session: HttpOnly cookies this page never reads); or paste an API key (or a JWT your app
// handed over), which stays in this tab's sessionStorage and is sent only in the Authorization
// header.
import {credential, get, post} from "./api.js";
import {errorBox, field, h} from "./dom.js";
import {ctx, navigate} from "./app.js";

// Where a provider sends the browser back: this page, with ?sso=<provider>&code=…&state=…
// (set AGENTOS_PEOPLE__OAUTH_REDIRECT_URL to <api>/console/?sso={provider}).
let refused = null;  // why a provider's sign-in failed, shown on the sign-in page

export async function finishProvider() {
  const params = new URLSearchParams(location.search);
  const provider = params.get("sso");
  if (!provider || !params.get("code")) return;
  history.replaceState(null, "", location.pathname + "#/agents");
  try {
    await post(`/v1/auth/${encodeURIComponent(provider)}/callback`,
      {code: params.get("code"), state: params.get("state") || "", cookie: true});
    credential.clear();
  } catch (error) {
    refused = error;
  }
}

async function signedInBy(status, attempt) {
  status.replaceChildren();
  try {
    await attempt();
    ctx.me = null;
    await get("/v1/me");
  } catch (error) {
    credential.clear();
    status.append(errorBox(error));
    return;
  }
  navigate("#/agents");
}

export function render(main) {
  const email = h("input", {name: "email", type: "email", autocomplete: "username", required: true});
  const password = h("input", {name: "password", type: "password", autocomplete: "current-password",
    required: true});
  const status = h("div", {role: "status"});
  const providers = h("div", {class: "providers"});
  const byPassword = h("form", {class: "card narrow", id: "password-sign-in", onsubmit: (event) => {
    event.preventDefault();
    signedInBy(status, async () => {
      credential.clear();
      await post("/v1/auth/login", {email: email.value.trim(), password: password.value, cookie: true});
    });
  }},
  h("h1", {text: "Sign in"}),
  field("Email", email), field("Password", password),
  h("button", {type: "submit", text: "Sign in"}), providers, status);

  const key = h("input", {name: "key", type: "password", autocomplete: "off", required: true, spellcheck: "false"});
  const keyStatus = h("div", {role: "status"});
  const byKey = h("form", {class: "card narrow", id: "key-sign-in", onsubmit: (event) => {
    event.preventDefault();
    signedInBy(keyStatus, async () => { credential.set(key.value.trim()); });
  }},
  h("h2", {text: "Or use an API key"}),
  field("API key or token", key, "An org API key (aos_…) or a JWT from your app. Kept in this tab only."),
  h("button", {type: "submit", text: "Sign in with the key"}), keyStatus);
  main.append(byPassword, byKey);
  if (refused) { status.append(errorBox(refused)); refused = null; }
  email.focus();

  get("/v1/auth/providers").then(({providers: names}) => {
    for (const name of names) {
      providers.append(h("button", {type: "button", class: "secondary", dataset: {provider: name},
        text: `Sign in with ${name === "github" ? "GitHub" : "your identity provider"}`,
        onclick: async () => {
          status.replaceChildren();
          try {
            const {authorize_url: url} = await post(`/v1/auth/${name}/start`, {});
            location.assign(url);
          } catch (error) { status.append(errorBox(error)); }
        }}));
    }
  }, () => { /* an older server without the list: password and key only */ });
  return null;
}

