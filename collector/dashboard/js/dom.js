// Building the document safely: strings only ever become text nodes, never markup.
// Untrusted text (host, metric, label and annotation strings) goes through here.

const SAFE_ATTRS = new Set([
  "id", "href", "title", "type", "name", "value", "placeholder", "for", "role", "colspan",
  "tabindex", "min", "max", "step", "autocomplete", "required", "checked", "disabled",
  "aria-label", "aria-sort", "aria-pressed", "aria-live", "aria-current", "aria-describedby",
  "aria-expanded", "aria-controls", "aria-busy", "aria-labelledby", "scope", "datetime", "maxlength", "inputmode",
  "list", "selected", "spellcheck", "hidden",
]);

/** el("a", {class: "x", href: "/p", dataset: {k: "v"}}, "text", child, ...) */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else if (SAFE_ATTRS.has(key) || key.startsWith("data-")) {
      if (key === "href" && !/^[/#]/.test(String(value))) throw new Error("links stay on this server");
      node.setAttribute(key, value === true ? "" : String(value));
    } else throw new Error(`attribute ${key} is not allowed`);
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace every child of `node` with `children`. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** The text of a value as it may be shown: control characters become visible marks. */
export function visible(text) {
  return String(text).replace(/[\u0000-\u001f\u007f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}
