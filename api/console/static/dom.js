// Building the page: `h(tag, props, ...children)` makes an element. No innerHTML anywhere, so
// text from the API (names, arguments, answers) can never become markup.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name === "value") el.value = value;
    else if (name === "checked") el.checked = Boolean(value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export const json = (value) => JSON.stringify(value, null, 2);

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, {dateStyle: "short", timeStyle: "medium"});
}

export function seconds(start, end) {
  if (!start) return "";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// An API error as people read it: its message and its code.
export function errorBox(error) {
  return h("div", {class: "error", role: "alert"},
    h("strong", {text: error.code || "ERROR"}), " ", error.message || String(error));
}

export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h("div", {class: "field", dataset: {field: control.name || ""}},
    h("label", {for: id, text: label}), control,
    hint ? h("small", {class: "hint", text: hint}) : null,
    h("small", {class: "field-error", role: "status"}));
}
