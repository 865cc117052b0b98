// Alerts: what fires now, recent transitions, and silences (created and expired with an admin
// token, as is reloading the rules; the server refuses both to a read token whatever this page
// shows).

import { api, withQuery } from "./api.js";
import { initPage, openLive, say, session, throttle } from "./common.js";
import { $, el, replace, visible } from "./dom.js";
import { dateTime, number } from "./format.js";

const OPS = [["=", false, true], ["!=", false, false], ["=~", true, true], ["!~", true, false]];
let hostFilter = new URLSearchParams(location.search).get("host") ?? "";

function chips(labels, skip = []) {
  const entries = Object.entries(labels ?? {}).filter(([k]) => !skip.includes(k));
  if (!entries.length) return el("span", { class: "muted" }, "–");
  return el("span", { class: "chips" }, entries.map(([k, v]) => el("span", { class: "chip" }, `${visible(k)}=${visible(v)}`)));
}

function hostLink(name) {
  return el("a", { href: `/hosts/${encodeURIComponent(name)}` }, visible(name));
}

function value(v) {
  return v === null || v === undefined ? "–" : number(v, 4);
}

// A page of the active alerts at a time (10,000 hosts down must not mean 10,000 rows): the
// server counts them all, the page shows the counts and walks the pages with its cursor.
const PAGE = 100;
let cursors = [];  // the "after" of each page before this one: [] on the first page

async function loadActive() {
  const [wanted, host] = [cursors.slice(), hostFilter];
  const after = wanted.at(-1);
  const doc = await api(withQuery("/edgemon/api/v1/alerts", { host, limit: PAGE, after }));
  if (wanted.length !== cursors.length || after !== cursors.at(-1) || host !== hostFilter) return;  // turned or filtered since
  if (!doc.alerts.length && cursors.length) {  // this page emptied since: back to the first
    cursors = [];
    return loadActive();
  }
  const rows = doc.alerts.map((a) => el("tr", { dataset: { rule: a.rule, host: a.host, status: a.status } },
    el("td", {}, el("span", { class: `state alert-${a.status}` }, a.status)),
    el("td", {}, visible(a.rule)),
    el("td", {}, hostLink(a.host)),
    el("td", {}, chips(a.labels)),
    el("td", { class: "num" }, value(a.value)),
    el("td", {}, dateTime(a.fired_at_ms ?? a.active_since_ms)),
    el("td", { class: "annotation" }, visible(a.annotations?.summary ?? "")),
    el("td", {}, a.silenced_by ? el("span", { class: "badge", title: a.silenced_by }, "silenced") : "–"),
    el("td", {}, canWrite() ? el("button", { type: "button", on: { click: () => prefill(a) } }, "Silence…") : "")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 9, class: "empty" }, "Nothing is firing or pending.")));
  replace($("#active-rows"), rows);
  replace($("#alert-counts"), el("span", { class: "count count-firing" }, el("span", { class: "count-n" }, number(doc.counts.firing, 0)), " firing"),
    el("span", { class: "count" }, el("span", { class: "count-n" }, number(doc.counts.pending, 0)), " pending"));
  replace($("#alert-rules"), doc.rules.map((r) => el("li", { dataset: { rule: r.rule } },
    `${visible(r.rule)}: ${number(r.firing, 0)} firing, ${number(r.pending, 0)} pending`)));
  const first = cursors.length * PAGE + 1;
  $("#active-range").textContent = doc.total
    ? `Showing ${number(first, 0)}–${number(first + doc.alerts.length - 1, 0)} of ${number(doc.total, 0)}`
    : "";
  $("#active-prev").disabled = !cursors.length;
  $("#active-next").disabled = !doc.next;
  $("#active-next").dataset.after = doc.next ?? "";
}

let turning = false;  // a page on its way: a second press waits for it (the cursor is its)

function turnPage(step) {
  if (turning) return;
  if (step > 0 && $("#active-next").dataset.after) cursors.push($("#active-next").dataset.after);
  else if (step < 0 && cursors.length) cursors.pop();
  else return;
  turning = true;
  loadActive().then(() => $("#active-h").scrollIntoView({ block: "nearest" }))
    .catch((e) => say(e.message, "error"))
    .finally(() => { turning = false; });
}

async function loadHistory() {
  const doc = await api(withQuery("/edgemon/api/v1/alerts/history", { host: hostFilter, limit: 100 }));
  const rows = doc.history.map((h) => el("tr", {},
    el("td", {}, dateTime(h.at_ms)),
    el("td", {}, visible(h.rule)),
    el("td", {}, hostLink(h.host)),
    el("td", {}, `${h.from} → `, el("span", { class: `state alert-${h.status}` }, h.status)),
    el("td", { class: "num" }, value(h.value)),
    el("td", {}, chips(h.labels)),
    el("td", {}, [h.silenced ? "silenced" : null, h.historical ? "history only" : null, h.notified ? "notified" : null].filter((x) => x).join(", ") || "–")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No transitions recorded.")));
  replace($("#history-rows"), rows);
}

async function loadSilences() {
  const doc = await api(withQuery("/edgemon/api/v1/silences", { all: $("#show-expired").checked ? "true" : "" }));
  const rows = doc.silences.map((s) => el("tr", { dataset: { silence: s.id, state: s.state } },
    el("td", {}, el("span", { class: `state silence-${s.state}` }, s.state)),
    el("td", {}, el("span", { class: "chips" }, s.matchers.map((m) => el("span", { class: "chip" }, matcherText(m))))),
    el("td", {}, dateTime(s.starts_ms)),
    el("td", {}, dateTime(s.ends_ms)),
    el("td", {}, visible(s.created_by ?? "")),
    el("td", { class: "annotation" }, visible(s.comment ?? "")),
    el("td", {}, canWrite() && s.state !== "expired" ? el("button", { type: "button", on: { click: () => expire(s.id) } }, "Expire") : "")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No silences.")));
  replace($("#silence-rows"), rows);
}

function matcherText(m) {
  const op = OPS.find(([, regex, equal]) => regex === Boolean(m.isRegex) && equal === (m.isEqual !== false))?.[0] ?? "=";
  return `${visible(m.name)}${op}${visible(m.value)}`;
}

function canWrite() {
  return session.role === "admin";
}

// --- the silence form ---------------------------------------------------------------------------

function matcherRow(name = "", op = "=", text = "") {
  const row = el("div", { class: "matcher" },
    el("input", { class: "m-name", "aria-label": "label name", placeholder: "alertname", value: name, maxlength: "128", autocomplete: "off", spellcheck: "false" }),
    el("select", { class: "m-op", "aria-label": "operator" }, OPS.map(([o]) => el("option", { value: o, selected: o === op }, o))),
    el("input", { class: "m-value", "aria-label": "value", placeholder: "value", value: text, maxlength: "1024", autocomplete: "off", spellcheck: "false" }),
    el("button", { type: "button", class: "link-button", "aria-label": "remove this matcher", on: { click: () => { row.remove(); } } }, "Remove"));
  return row;
}

function prefill(alert) {
  replace($("#matchers"), matcherRow("alertname", "=", alert.rule), matcherRow("host", "=", alert.host));
  $("#comment").focus();
}

async function createSilence(event) {
  event.preventDefault();
  const matchers = [...document.querySelectorAll("#matchers .matcher")].map((row) => {
    const [, isRegex, isEqual] = OPS.find(([o]) => o === row.querySelector(".m-op").value);
    return { name: row.querySelector(".m-name").value.trim(), value: row.querySelector(".m-value").value, isRegex, isEqual };
  }).filter((m) => m.name);
  if (!matchers.length) { say("Add at least one matcher (a label name and a value).", "error"); return; }
  try {
    const made = await api("/edgemon/api/v1/silences", { method: "POST", body: {
      matchers, duration: $("#duration").value, comment: $("#comment").value, createdBy: $("#created-by").value } });
    say(`Silence ${made.id} created, until ${dateTime(made.ends_ms)}.`);
    $("#comment").value = "";
    await refresh();
  } catch (error) {
    say(`Not created: ${error.message}`, "error");
  }
}

async function expire(id) {
  try {
    await api(`/edgemon/api/v1/silences/${encodeURIComponent(id)}`, { method: "DELETE" });
    say(`Silence ${id} expired.`);
    await refresh();
  } catch (error) {
    say(`Not expired: ${error.message}`, "error");
  }
}

async function reloadRules() {
  try {
    const done = await api("/edgemon/api/v1/rules/reload", { method: "POST" });
    say(`Rules reloaded from ${visible(done.source)}: ${done.rules} rules, ${done.enabled} enabled.`);
    await refresh();
  } catch (error) {
    const why = Array.isArray(error.doc?.errors) ? error.doc.errors.map((e) => visible(String(e))).join("; ") : error.message;
    say(`Rules not reloaded, the old ones stay: ${why}`, "error");
  }
}

async function refresh() {
  try {
    await Promise.all([loadActive(), loadHistory(), loadSilences()]);
    document.body.dataset.ready = "1";
  } catch (error) {
    say(error.message, "error");
  }
}

function bind() {
  $("#host-filter").value = hostFilter;
  $("#alert-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    hostFilter = $("#host-filter").value.trim();
    cursors = [];
    history.replaceState(null, "", withQuery("/alerts", { host: hostFilter }));
    refresh();
  });
  $("#active-prev").addEventListener("click", () => turnPage(-1));
  $("#active-next").addEventListener("click", () => turnPage(1));
  $("#add-matcher").addEventListener("click", () => $("#matchers").append(matcherRow()));
  $("#silence-form").addEventListener("submit", createSilence);
  $("#reload-rules").addEventListener("click", reloadRules);
  $("#show-expired").addEventListener("change", () => loadSilences().catch((e) => say(e.message, "error")));
  replace($("#matchers"), matcherRow("alertname"));
}

bind();
await initPage("/alerts");
$("#created-by").value = session.name ?? "";
if (!canWrite()) {
  for (const control of $("#silence-form").querySelectorAll("input, select, button")) control.disabled = true;
  $("#silence-note").hidden = false;
  $("#reload-rules").disabled = true;
  $("#reload-note").hidden = false;
}
await refresh();
openLive(null, { fleet: throttle(refresh, 2000) });
