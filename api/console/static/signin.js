// Sign-in: paste an API key (or a JWT your app handed over); it stays in this tab's
// sessionStorage and is sent only in the Authorization header.
import {credential, get} from "./api.js";
import {errorBox, field, h} from "./dom.js";
import {ctx, navigate} from "./app.js";

export function render(main) {
  const key = h("input", {name: "key", type: "password", autocomplete: "off", required: true, spellcheck: "false"});
  const status = h("div", {role: "status"});
  const form = h("form", {class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    status.replaceChildren();
    credential.set(key.value.trim());
    try {
      ctx.me = null;
      await get("/v1/me");
    } catch (error) {
      credential.clear();
      status.append(errorBox(error));
      return;
    }
    navigate("#/agents");
  }},
  h("h1", {text: "Sign in"}),
  field("API key or token", key, "An org API key (aos_…) or a JWT from your app. Kept in this tab only."),
  h("button", {type: "submit", text: "Sign in"}), status);
  main.append(form);
  key.focus();
}
