// The fleet: every host with its state and current figures. Sorting, filtering and paging
// happen on the server (/edgemon/api/v1/fleet), so 10,000 hosts cost one page of rows here.

import { newestOnly, withQuery } from "./api.js";
import { initPage, openLive, say, throttle } from "./common.js";
import { $, append, el, replace, visible } from "./dom.js";
import { ago, bytes, number, percent } from "./format.js";

const STATES = ["online", "stale", "offline"];
const COLUMNS = [
  // [column, heading, cell(row), numeric]
  ["host", "Host", hostCell, false],
  ["state", "State", (r) => el("span", { class: `state state-${r.state}` }, r.state), false],
  ["last_seen_ms", "Last seen", (r) => el("span", { class: "age", dataset: { ms: r.last_seen_ms ?? "" } }, ""), true],
  ["cpu_percent", "CPU", (r) => bar(r.cpu_percent), true],
  ["memory_percent", "Memory", (r) => bar(r.memory_percent), true],
  ["disk_percent", "Worst disk", (r) => bar(r.disk_percent, r.disk_mount), true],
  ["net_bytes_per_s", "Network", netCell, true],
  ["alerts_firing", "Alerts", alertsCell, true],
  ["backlog_samples", "Back-log", (r) => r.backlog_samples === null ? "–" : number(r.backlog_samples), true],
  ["dropped_samples", "Dropped", (r) => r.dropped_samples === null ? "–" : number(r.dropped_samples), true],
  ["clock_offset_ms", "Clock offset", (r) => r.clock_offset_ms === null ? "–" : `${number(r.clock_offset_ms)} ms`, true],
];

const view = readLocation();
let last = null; // the newest answer: {generated_ms, ...}, and when it arrived
let arrived = 0;

function readLocation() {
  const p = new URLSearchParams(location.search);
  const states = new Set((p.get("state") ?? "").split(",").filter((s) => STATES.includes(s)));
  const column = COLUMNS.some(([c]) => c === p.get("sort")) ? p.get("sort") : "host";
  return {
    q: p.get("q") ?? "", states, sort: column, order: p.get("order") === "desc" ? "desc" : "asc",
    offset: Math.max(0, Number.parseInt(p.get("offset") ?? "0", 10) || 0),
    limit: [50, 100, 250, 500].includes(Number(p.get("limit"))) ? Number(p.get("limit")) : 100,
    fColumn: p.get("fcol") ?? "", fOp: p.get("fop") === "max" ? "max" : "min", fValue: p.get("fval") ?? "",
  };
}

function query() {
  const q = new Map([["offset", view.offset], ["limit", view.limit], ["sort", view.sort], ["order", view.order],
    ["q", view.q], ["state", [...view.states].join(",")]]);
  if (view.fColumn && view.fValue !== "" && Number.isFinite(Number(view.fValue))) q.set(`${view.fOp}.${view.fColumn}`, view.fValue);
  return q;
}

function remember() {
  const p = new Map([["q", view.q], ["state", [...view.states].join(",")], ["sort", view.sort === "host" ? "" : view.sort],
    ["order", view.order === "asc" ? "" : view.order], ["offset", view.offset || ""], ["limit", view.limit === 100 ? "" : view.limit],
    ["fcol", view.fColumn], ["fop", view.fColumn ? view.fOp : ""], ["fval", view.fColumn ? view.fValue : ""]]);
  history.replaceState(null, "", withQuery("/", p));
}

function hostCell(r) {
  return el("a", { href: `/hosts/${encodeURIComponent(r.host)}`, class: "host-link" }, visible(r.host));
}

function bar(value, detail) {
  if (value === null || value === undefined) return "–";
  const level = value >= 90 ? "high" : value >= 75 ? "warn" : "ok";
  const fill = el("span", { class: `bar-fill level-${level}` });
  fill.style.width = `${Math.max(0, Math.min(100, value))}%`;
  return el("span", { class: "bar", title: detail ? `${visible(detail)}: ${percent(value)}` : percent(value) },
    el("span", { class: "bar-track" }, fill), el("span", { class: "bar-text" }, percent(value, 2)));
}

function netCell(r) {
  if (r.net_bytes_per_s === null) return "–";
  return el("span", { title: `received ${bytes(r.net_rx_bytes_per_s)}/s, sent ${bytes(r.net_tx_bytes_per_s)}/s` },
    `${bytes(r.net_bytes_per_s)}/s`);
}

function alertsCell(r) {
  if (!r.alerts_firing) return el("span", { class: "muted" }, "0");
  return el("a", { href: withQuery("/alerts", { host: r.host }), class: "alert-count" }, String(r.alerts_firing));
}

/** The header row is made once and updated in place: focus stays on the button pressed. */
function drawHead() {
  const head = $("#head");
  if (!head.children.length) {
    append(head, COLUMNS.map(([column, heading, , numeric]) => el("th", { scope: "col", class: numeric ? "num" : null, dataset: { column } },
      el("button", { type: "button", class: "sort", on: { click: () => sortBy(column) } }, heading, el("span", { class: "arrow" })))));
  }
  for (const th of head.children) {
    const sorted = view.sort === th.dataset.column;
    th.setAttribute("aria-sort", sorted ? (view.order === "asc" ? "ascending" : "descending") : "none");
    th.querySelector(".arrow").textContent = sorted ? (view.order === "asc" ? " ▲" : " ▼") : "";
  }
}

function sortBy(column) {
  if (view.sort === column) view.order = view.order === "asc" ? "desc" : "asc";
  else { view.sort = column; view.order = column === "host" || column === "state" ? "asc" : "desc"; }
  view.offset = 0;
  refresh();
}

function drawCounts(doc) {
  const box = $("#counts");
  if (!box.children.length) {
    append(box, [STATES.map((state) => el("button", { type: "button", class: `count count-${state}`, dataset: { state }, on: { click: () => toggleState(state) } },
      el("span", { class: "count-n" }), ` ${state}`)), el("span", { class: "count-total" })]);
  }
  for (const button of box.querySelectorAll("button")) {
    button.querySelector(".count-n").textContent = number(doc.counts[button.dataset.state] ?? 0);
    button.setAttribute("aria-pressed", view.states.has(button.dataset.state) ? "true" : "false");
  }
  box.querySelector(".count-total").textContent = `${number(doc.total)} hosts`;
}

function toggleState(state) {
  if (view.states.has(state)) view.states.delete(state); else view.states.add(state);
  view.offset = 0;
  refresh();
}

function drawRows(doc) {
  const rows = doc.hosts.map((r) => el("tr", { dataset: { host: r.host, state: r.state } },
    COLUMNS.map(([column, , cell, numeric]) => el(column === "host" ? "th" : "td",
      { class: numeric ? "num" : null, scope: column === "host" ? "row" : null }, cell(r)))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: COLUMNS.length, class: "empty" }, doc.total ? "No host matches." : "No host has reported yet.")));
  replace($("#rows"), rows);
  const first = doc.matched ? doc.offset + 1 : 0;
  const end = Math.min(doc.offset + doc.limit, doc.matched);
  replace($("#range"), `${number(first)}–${number(end)} of ${number(doc.matched)}`);
  $("#prev").disabled = doc.offset === 0;
  $("#next").disabled = end >= doc.matched;
  replace($("#caption"), `Hosts ${first} to ${end} of ${doc.matched}, sorted by ${view.sort} ${view.order}`);
  tickAges();
}

/** Ages count on between answers, on the server's clock. */
function tickAges() {
  if (!last) return;
  const now = last.generated_ms + (Date.now() - arrived);
  for (const cell of document.querySelectorAll("#rows .age")) {
    const ms = cell.dataset.ms === "" ? null : Number(cell.dataset.ms);
    cell.textContent = ago(ms, now);
  }
}

const fetchFleet = newestOnly();
async function refresh() {
  remember();
  drawHead();
  try {
    const doc = await fetchFleet(withQuery("/edgemon/api/v1/fleet", query()));
    last = doc;
    arrived = Date.now();
    drawCounts(doc);
    drawRows(doc);
    say(doc.loading ? "Loading the fleet's figures from storage; they fill in over the next seconds." : "");
    if (!document.body.dataset.ready) performance.mark("fleet-ready");
    document.body.dataset.ready = "1";
  } catch (error) {
    if (error.name !== "AbortError") say(error.message, "error");
  }
}

function bindControls() {
  $("#q").value = view.q;
  $("#f-column").value = view.fColumn;
  $("#f-op").value = view.fOp;
  $("#f-value").value = view.fValue;
  $("#limit").value = String(view.limit);
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    view.q = $("#q").value.trim();
    view.fColumn = $("#f-column").value;
    view.fOp = $("#f-op").value;
    view.fValue = $("#f-value").value;
    view.offset = 0;
    refresh();
  });
  $("#q").addEventListener("input", throttle(() => { view.q = $("#q").value.trim(); view.offset = 0; refresh(); }, 300));
  $("#clear").addEventListener("click", () => {
    Object.assign(view, { q: "", fColumn: "", fValue: "", offset: 0 });
    view.states.clear();
    bindValues();
    refresh();
  });
  $("#prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - view.limit); refresh(); });
  $("#next").addEventListener("click", () => { view.offset += view.limit; refresh(); });
  $("#limit").addEventListener("change", () => { view.limit = Number($("#limit").value); view.offset = 0; refresh(); });
}

function bindValues() {
  $("#q").value = view.q;
  $("#f-column").value = view.fColumn;
  $("#f-value").value = view.fValue;
}

bindControls();
drawHead();
const ready = initPage("/");
refresh();
await ready;
const later = throttle(() => fetchFleet.busy() || refresh(), 2000); // never abort a person's request
openLive(null, { fleet: later });
setInterval(tickAges, 1000);
setInterval(refresh, 15000); // last-seen ages and stale states move on without any event
