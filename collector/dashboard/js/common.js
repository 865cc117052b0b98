// What every page shares: the header (navigation, who is signed in, sign-out), the live
// event stream (one per page) and a status line for messages.

import { api, goSignIn } from "./api.js";
import { $, el, replace } from "./dom.js";

export const session = { role: null, name: null, auth: null };

const PAGES = [["/", "Fleet"], ["/alerts", "Alerts"]];

/** Draw the header and find out who is signed in (redirects to sign-in when nobody is). */
export async function initPage(current) {
  const top = $("#top");
  const liveMark = el("span", { class: "live-mark", id: "live-mark", title: "live updates" }, "offline");
  const who = el("span", { class: "who", id: "who" });
  const signOut = el("button", { type: "button", class: "link-button", id: "sign-out", on: { click: onSignOut } }, "Sign out");
  replace(top,
    el("a", { class: "brand", href: "/" }, "edgemon"),
    el("nav", { "aria-label": "pages" }, PAGES.map(([href, text]) =>
      el("a", { href, "aria-current": href === current ? "page" : null }, text))),
    el("div", { class: "top-right" }, liveMark, who, signOut));
  const me = await api("/edgemon/api/v1/session");
  if (!me.signed_in) { goSignIn(); throw new Error("not signed in"); }
  Object.assign(session, { role: me.role, name: me.name, auth: me.auth });
  if (me.auth === "none") {
    signOut.hidden = true;
    replace(who, el("span", { class: "badge" }, "no sign-in (auth = none)"));
  } else {
    replace(who, el("span", { class: "who-name" }, me.name ?? ""), " ",
      el("span", { class: `badge role-${me.role}` }, me.role));
  }
  return session;
}

async function onSignOut() {
  try {
    await api("/edgemon/api/v1/session", { method: "DELETE", redirect: false });
  } finally {
    location.assign("/login");
  }
}

/** A message in the page's status line (role="status": screen readers announce it). */
export function say(text, kind = "info") {
  const box = $("#status");
  if (!box) return;
  replace(box, text ? el("span", { class: `note note-${kind}` }, text) : "");
}

/**
 * The page's one live stream. `handlers`: {host(data), fleet(data)}. Reconnects by itself
 * (the server asks for 3 s); when the session is gone it goes to sign-in.
 */
export function openLive(host, handlers) {
  const url = host ? `/edgemon/api/v1/live?host=${encodeURIComponent(host)}` : "/edgemon/api/v1/live";
  const mark = () => $("#live-mark");
  let source = null;
  let retry = null;
  const connect = () => {
    source = new EventSource(url);
    source.addEventListener("open", () => { mark().textContent = "live"; mark().classList.add("on"); });
    for (const [kind, fn] of Object.entries(handlers)) {
      source.addEventListener(kind, (event) => {
        let data = null;
        try { data = JSON.parse(event.data); } catch { return; }
        fn(data);
      });
    }
    source.addEventListener("signed-out", () => goSignIn());
    source.addEventListener("error", async () => {
      mark().textContent = "reconnecting";
      mark().classList.remove("on");
      if (source.readyState === EventSource.CLOSED) {
        // the server refused (401, 503): find out why before trying again
        try {
          if (!(await api("/edgemon/api/v1/session")).signed_in) { goSignIn(); return; }
        } catch { /* the collector is down: try again later */ }
        clearTimeout(retry);
        retry = setTimeout(connect, 5000);
      }
    });
  };
  connect();
  addEventListener("pagehide", () => source && source.close());
  return { close: () => source && source.close() };
}

/** Run `fn` at most once per `ms`, the last call winning (live events come in bursts); the
 *  first call waits too (the page has just loaded what it shows). */
export function throttle(fn, ms) {
  let timer = null;
  let last = Date.now();
  return (...args) => {
    const wait = Math.max(0, last + ms - Date.now());
    clearTimeout(timer);
    timer = setTimeout(() => { last = Date.now(); fn(...args); }, wait);
  };
}
