// The collector's API with the session cookie (same origin only; the token is never here).

export class ApiError extends Error {
  constructor(status, message, doc = null) { super(message); this.status = status; this.doc = doc; }
}

/** A path on this server to come back to after signing in (never another host). */
export function safeNext(target) {
  if (typeof target !== "string" || !target.startsWith("/") || target.startsWith("//") || target.includes("\\")) return "/";
  return target;
}

export function goSignIn() {
  const here = location.pathname + location.search;
  location.assign(here === "/" ? "/login" : `/login?next=${encodeURIComponent(here)}`);
}

export async function api(path, { method = "GET", body, signal, redirect = true } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let doc = null;
  try { doc = await response.json(); } catch { doc = null; }
  if (response.status === 401 && redirect) goSignIn();
  if (!response.ok) {
    const message = doc && typeof doc.error === "string" ? doc.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, message, doc);
  }
  return doc;
}

/** `path?key=value&...` from a Map or object of parameters (empty values left out). */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  const entries = params instanceof Map ? params.entries() : Object.entries(params);
  for (const [key, value] of entries) {
    if (value !== undefined && value !== null && value !== "") query.append(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** A fetcher whose every call aborts the one before it: only the newest answer is drawn.
 *  `busy()`: whether a call is under way. An aborted call rejects with an AbortError. */
export function newestOnly() {
  let current = null;
  const call = async (path, options = {}) => {
    current?.abort();
    const controller = new AbortController();
    current = controller;
    try {
      return await api(path, { ...options, signal: controller.signal });
    } finally {
      if (current === controller) current = null;
    }
  };
  call.busy = () => current !== null;
  return call;
}
