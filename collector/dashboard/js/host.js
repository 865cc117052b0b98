// One host: a chart per metric (grouped by family) over a chosen range, live.
//
// Data: /edgemon/api/v1/hosts/<host>/charts answers every metric on one time axis (counters as
// rates, null where there is no value, a null row where the data stops: the line breaks).
// Live: the page's one event stream says when the host stored a batch; the page then asks only
// for the tail (from its newest point on) and appends it.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { api, newestOnly, withQuery } from "./api.js";
import { CHARTS, FAMILIES, familyOf } from "./catalog.js";
import { initPage, openLive, say, throttle } from "./common.js";
import { $, el, replace, visible } from "./dom.js";
import { ago, dateTime, number, withUnit } from "./format.js";

const host = decodeURIComponent(location.pathname.split("/")[2] ?? "");
const RANGES = [["15m", 15 * 60e3], ["1h", 3600e3], ["6h", 6 * 3600e3], ["24h", 86400e3], ["7d", 7 * 86400e3], ["30d", 30 * 86400e3]];
const COLOURS = ["#0b5cad", "#c2410c", "#15803d", "#7e22ce", "#be123c", "#0e7490", "#a16207", "#4338ca", "#525252", "#9d174d"];
const MAX_SHOWN = 8; // label values shown at first on a chart; the rest can be ticked on
const HEIGHT = 190;

const view = {
  range: "1h", start: null, end: null, // custom: ms
  doc: null, // the newest charts answer, merged with live tails
  charts: new Map(), // chart id -> {plan, plot, figure, summary}
  selection: new Map(), // chart id -> Map(label value -> shown)
  newestMs: null, lastSeenMs: null, clockSkew: 0, // server clock - browser clock (ms)
  row: null,
};

function readLocation() {
  const p = new URLSearchParams(location.search);
  const range = p.get("range");
  if (range === "custom" && Number(p.get("start")) < Number(p.get("end"))) {
    Object.assign(view, { range, start: Number(p.get("start")), end: Number(p.get("end")) });
  } else if (RANGES.some(([r]) => r === range)) view.range = range;
}

function rangeQuery() {
  if (view.range === "custom") return { start: view.start, end: view.end };
  return { start: `now-${view.range}` };
}

function remember() {
  const params = view.range === "custom" ? { range: "custom", start: view.start, end: view.end } : { range: view.range === "1h" ? "" : view.range };
  history.replaceState(null, "", withQuery(location.pathname, params));
}

// --- plans: which series go on which chart ---------------------------------------------------

function labelsText(labels, skip) {
  return Object.entries(labels).filter(([k]) => k !== skip).map(([k, v]) => `${k}=${visible(v)}`).join(", ");
}

function plans(doc) {
  const byName = new Map(doc.metrics.map((m) => [m.name, m]));
  const used = new Set();
  const out = [];
  for (const spec of CHARTS) {
    const parts = spec.metrics.filter(([name]) => byName.has(name)).map(([name, short]) => ({ metric: byName.get(name), short }));
    if (!parts.length) continue;
    parts.forEach((p) => used.add(p.metric.name));
    out.push({ id: `c:${spec.title}`, family: spec.family, title: spec.title, by: spec.by ?? null, show: spec.show ?? null, parts });
  }
  for (const metric of doc.metrics) {
    if (!used.has(metric.name)) {
      out.push({ id: `m:${metric.name}`, family: familyOf(metric.name), title: metric.name, by: null, show: null, parts: [{ metric, short: "" }] });
    }
  }
  return out;
}

/** The plan's series: [{key, label, value (of the `by` label), values, unit, rate}] */
function seriesOf(plan) {
  const out = [];
  for (const { metric, short } of plan.parts) {
    for (const s of metric.series) {
      const value = plan.by && Object.hasOwn(s.labels, plan.by) ? String(s.labels[plan.by]) : null;
      const rest = labelsText(s.labels, plan.by);
      const parts = [short, value === null ? null : visible(value), plan.by ? null : rest].filter((x) => x);
      const label = parts.join(" ") || (plan.parts.length > 1 ? metric.name : rest) || metric.name;
      out.push({ key: `${metric.name}\u0000${JSON.stringify(Object.entries(s.labels).sort())}`, label, value,
        values: s.values, unit: metric.unit, rate: metric.rate, name: metric.name });
    }
  }
  return out;
}

function selectionFor(plan, series) {
  let chosen = view.selection.get(plan.id);
  if (!chosen) { chosen = new Map(); view.selection.set(plan.id, chosen); }
  const values = [...new Set(series.map((s) => s.value).filter((v) => v !== null))].sort(naturally);
  values.forEach((v, i) => {
    if (!chosen.has(v)) chosen.set(v, plan.show ? plan.show(v) : i < MAX_SHOWN);
  });
  if (plan.show && values.length && !values.some((v) => chosen.get(v))) chosen.set(values[0], true);
  return { values, chosen };
}

function naturally(a, b) {
  return a.localeCompare(b, "en", { numeric: true });
}

// --- drawing ---------------------------------------------------------------------------------

function formatter(series, digits) {
  const { unit, rate, name } = series;
  if (name === "system_boot_time_seconds") return (v) => (v === null || v === undefined ? "–" : dateTime(v * 1000));
  return (v) => withUnit(v, unit, rate, digits);
}

function drawAll(doc) {
  for (const chart of view.charts.values()) chart.plot?.destroy();
  view.charts.clear();
  const container = $("#charts");
  const sections = new Map(FAMILIES.map(([id, title]) => [id, el("section", { id: `family-${id}`, class: "family", "aria-labelledby": `family-${id}-h` },
    el("h2", { id: `family-${id}-h` }, title), el("div", { class: "chart-grid" }))]));
  const list = plans(doc);
  for (const plan of list) {
    const grid = sections.get(plan.family).querySelector(".chart-grid");
    grid.append(chartFigure(plan));
  }
  const present = FAMILIES.filter(([id]) => sections.get(id).querySelector("figure"));
  replace(container, present.map(([id]) => sections.get(id)));
  replace($("#families"), present.map(([id, title]) => el("a", { href: `#family-${id}` }, title)));
  // plots need their figure in the document to know their width
  for (const plan of list) makePlot(plan, doc);
  container.setAttribute("aria-busy", "false");
  if (!list.length) replace(container, el("p", { class: "empty" }, "No data in this range."));
}

function chartFigure(plan) {
  const figure = el("figure", { class: "chart", tabindex: "0", dataset: { chart: plan.id, metric: plan.parts.map((p) => p.metric.name).join(" ") } },
    el("figcaption", {}, el("span", { class: "chart-title" }, visible(plan.title)), el("span", { class: "chart-unit muted" })),
    el("div", { class: "plot" }), el("p", { class: "chart-summary muted" }), el("div", { class: "chart-pick" }));
  view.charts.set(plan.id, { plan, figure, plot: null });
  return figure;
}

function makePlot(plan, doc) {
  const chart = view.charts.get(plan.id);
  const series = seriesOf(plan);
  const { values, chosen } = selectionFor(plan, series);
  const errors = plan.parts.map((p) => p.metric.error).filter((e) => e);
  const width = Math.max(240, chart.figure.clientWidth - 16);
  const opts = {
    width, height: HEIGHT, ms: 1,
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: true }, y: yScale(series[0]) },
    legend: { live: true },
    axes: [
      { stroke: "#3d444d", grid: { stroke: "#e6e8eb" }, ticks: { stroke: "#d0d7de" } },
      { stroke: "#3d444d", grid: { stroke: "#e6e8eb" }, ticks: { stroke: "#d0d7de" }, size: 78,
        values: (u, splits) => splits.map(series.length ? formatter(series[0], 3) : String) },
    ],
    series: [{ value: (u, v) => (v === null || v === undefined ? "–" : dateTime(v)) },
      ...series.map((s, i) => ({
        label: s.label, stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: false,
        show: s.value === null ? true : chosen.get(s.value), value: (u, v) => formatter(s, 5)(v),
      }))],
    hooks: { setSelect: [(u) => zoomTo(u)] },
  };
  const data = [doc.x, ...series.map((s) => s.values)];
  const plot = new uPlot(opts, data, chart.figure.querySelector(".plot"));
  Object.assign(chart, { plot, series });
  const first = series[0];
  chart.figure.querySelector(".chart-unit").textContent = first ? unitText(first) : "";
  describe(chart, doc, errors);
  if (values.length > 1) drawPicker(chart, values, chosen);
}

/** Percentages from 0 to 100 (or beyond); everything else from 0 unless it goes negative. */
function yScale(first) {
  const percent = first?.unit === "percent" && !first.rate;
  return { range: (u, min, max) => {
    const lo = Math.min(0, min ?? 0);
    const hi = percent ? Math.max(100, max ?? 0) : (max ?? 1) > lo ? max * 1.05 : lo + 1;
    return [lo, hi];
  } };
}

function unitText(s) {
  if (s.name === "system_boot_time_seconds") return "date";
  if (s.unit === "seconds" && s.rate) return "% busy";
  const unit = s.unit === "" ? "" : s.unit;
  return s.rate ? `${unit || "count"}/s` : unit;
}

/** Text for people and tests: the newest value of each shown series, how many points. */
function describe(chart, doc, errors) {
  let points = 0;
  let newest = null;
  const latest = [];
  chart.series.forEach((s, i) => {
    const shown = chart.plot.series[i + 1].show;
    let last = null;
    for (let j = s.values.length - 1; j >= 0; j -= 1) {
      if (s.values[j] !== null) { last = j; break; }
    }
    if (!shown) return;
    points += s.values.reduce((n, v) => n + (v === null ? 0 : 1), 0);
    if (last !== null) {
      newest = Math.max(newest ?? 0, doc.x[last]);
      if (latest.length < 4) latest.push(`${s.label} ${formatter(s, 4)(s.values[last])}`);
    }
  });
  chart.figure.dataset.points = String(points);
  chart.figure.dataset.newest = newest === null ? "" : String(newest);
  const text = errors.length ? errors.join("; ") : latest.length ? `Latest: ${latest.join(", ")}` : "No data in this range.";
  chart.figure.querySelector(".chart-summary").textContent = text;
  chart.figure.setAttribute("aria-label", `${chart.plan.title}. ${text}`);
}

function drawPicker(chart, values, chosen) {
  const boxes = values.map((v) => {
    const id = `pick-${Math.random().toString(36).slice(2)}`;
    const box = el("input", { type: "checkbox", id, checked: chosen.get(v) });
    box.addEventListener("change", () => {
      chosen.set(v, box.checked);
      chart.series.forEach((s, i) => { if (s.value === v) chart.plot.setSeries(i + 1, { show: box.checked }); });
      describe(chart, view.doc, []);
      replace(summary, pickText(chosen, values, chart.plan.by));
    });
    return el("label", { for: id, class: "pick" }, box, " ", visible(v));
  });
  const summary = el("summary", {}, pickText(chosen, values, chart.plan.by));
  replace(chart.figure.querySelector(".chart-pick"), el("details", {}, summary, el("div", { class: "picks" }, boxes)));
}

function pickText(chosen, values, by) {
  const n = values.filter((v) => chosen.get(v)).length;
  return `${by}: ${n} of ${values.length} shown`;
}

function zoomTo(u) {
  if (u.select.width < 5) return;
  const start = Math.round(u.posToVal(u.select.left, "x"));
  const end = Math.round(u.posToVal(u.select.left + u.select.width, "x"));
  u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
  if (end - start < 10_000) return;
  Object.assign(view, { range: "custom", start, end });
  load();
}

// --- loading, live tails -----------------------------------------------------------------------

const fetchCharts = newestOnly();
let tailing = false;
async function load() {
  remember();
  drawRanges();
  $("#charts").setAttribute("aria-busy", "true");
  performance.mark("charts-request");
  try {
    const doc = await fetchCharts(withQuery(`/edgemon/api/v1/hosts/${encodeURIComponent(host)}/charts`, rangeQuery()));
    view.doc = doc;
    noteNewest(doc.newest_sample_ms);
    drawAll(doc);
    performance.mark("charts-drawn");
    performance.measure("charts", "charts-request", "charts-drawn");
    showTier(doc);
    say(doc.metrics_left_out ? `${doc.metrics_left_out} more metrics are not charted (limit per host).` : "");
    document.body.dataset.ready = "1";
  } catch (error) {
    if (error.name !== "AbortError") say(error.message, "error");
  }
}

function showTier(doc) {
  const tiers = [...new Set(doc.metrics.map((m) => m.tier).filter((t) => t))];
  const names = new Map([["raw", "raw samples"], ["1m", "1-minute rollups"], ["1h", "1-hour rollups"]]);
  $("#tier").textContent = `step ${withUnit(doc.step_ms / 1000, "seconds")} · ${tiers.map((t) => names.get(t) ?? t).join(", ")}`;
}

/** Append what arrived since the newest point drawn; drop what slid out of the range. */
async function tail() {
  if (fetchCharts.busy() || tailing || !view.doc || view.range === "custom") return; // a load draws it
  const doc = view.doc;
  if (!doc.x.length) return load();
  const since = doc.x[doc.x.length - 1];
  let part;
  tailing = true;
  try {
    part = await api(withQuery(`/edgemon/api/v1/hosts/${encodeURIComponent(host)}/charts`, { start: since, step: `${doc.step_ms / 1000}s` }));
  } catch (error) {
    say(error.message, "error");
    return;
  } finally {
    tailing = false;
  }
  if (fetchCharts.busy() || view.doc !== doc) return; // the range changed meanwhile
  noteNewest(part.newest_sample_ms);
  const before = new Map(plans(doc).map((p) => [p.id, seriesOf(p).map((s) => s.key).join("|")]));
  const merged = merge(doc, part, Date.now() + view.clockSkew - RANGES.find(([r]) => r === view.range)[1]);
  view.doc = merged;
  const after = plans(merged);
  if (after.length !== before.size || after.some((p) => before.get(p.id) !== seriesOf(p).map((s) => s.key).join("|") || !view.charts.get(p.id)?.plot)) {
    drawAll(merged); // new metrics or series: draw again
    return;
  }
  for (const plan of after) {
    const chart = view.charts.get(plan.id);
    const series = seriesOf(plan);
    chart.series = series;
    chart.plan = plan;
    chart.plot.setData([merged.x, ...series.map((s) => s.values)]);
    describe(chart, merged, []);
  }
}

function merge(doc, part, fromMs) {
  const cut = part.x.length ? part.x[0] : Infinity;
  const keep = [];
  doc.x.forEach((x, i) => { if (x < cut && x >= fromMs) keep.push(i); });
  const gap = part.x.length && keep.length && part.x[0] - doc.x[keep[keep.length - 1]] > 2 * Math.max(doc.step_ms, 10_000);
  const x = [...keep.map((i) => doc.x[i]), ...(gap ? [part.x[0] - 1] : []), ...part.x];
  const partMetrics = new Map(part.metrics.map((m) => [m.name, m]));
  const names = [...new Set([...doc.metrics.map((m) => m.name), ...partMetrics.keys()])].sort();
  const oldMetrics = new Map(doc.metrics.map((m) => [m.name, m]));
  const metrics = names.map((name) => {
    const old = oldMetrics.get(name);
    const fresh = partMetrics.get(name);
    const key = (s) => JSON.stringify(Object.entries(s.labels).sort());
    const freshSeries = new Map((fresh?.series ?? []).map((s) => [key(s), s]));
    const oldSeries = new Map((old?.series ?? []).map((s) => [key(s), s]));
    const keys = [...new Set([...oldSeries.keys(), ...freshSeries.keys()])];
    const series = keys.map((k) => {
      const o = oldSeries.get(k);
      const f = freshSeries.get(k);
      const values = [...keep.map((i) => (o ? o.values[i] : null)), ...(gap ? [null] : []), ...(f ? f.values : part.x.map(() => null))];
      return { labels: (o ?? f).labels, values };
    });
    return { ...(old ?? fresh), series, error: fresh?.error ?? null };
  });
  return { ...doc, x, metrics, newest_sample_ms: part.newest_sample_ms ?? doc.newest_sample_ms };
}

// --- facts, ranges ---------------------------------------------------------------------------

function noteNewest(ms) {
  if (ms !== null && ms !== undefined && (view.newestMs === null || ms > view.newestMs)) view.newestMs = ms;
  tickAge();
}

function tickAge() {
  const now = Date.now() + view.clockSkew;
  const row = view.row;
  const facts = [
    ["State", row ? el("span", { class: `state state-${row.state}` }, row.state) : "–"],
    ["Newest sample", el("span", { id: "newest-age", dataset: { ms: view.newestMs ?? "" } }, ago(view.newestMs, now))],
    ["Last batch", ago(view.lastSeenMs ?? row?.last_seen_ms ?? null, now)],
    ["Agent instance", row?.instance ? visible(row.instance) : "–"],
    ["Clock offset", row && row.clock_offset_ms !== null ? `${number(row.clock_offset_ms)} ms` : "–"],
    ["Firing alerts", row ? el("a", { href: withQuery("/alerts", { host }) }, String(row.alerts_firing)) : "–"],
  ];
  replace($("#facts"), facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function loadRow() {
  try {
    const doc = await api(withQuery("/edgemon/api/v1/fleet", { host, limit: 1 }));
    view.clockSkew = doc.generated_ms - Date.now();
    view.row = doc.hosts.find((r) => r.host === host) ?? null;
    if (view.row?.newest_sample_ms) noteNewest(view.row.newest_sample_ms);
    tickAge();
  } catch (error) {
    say(error.message, "error");
  }
}

function drawRanges() {
  const box = $("#ranges");
  if (!box.children.length) {
    replace(box, [...RANGES.map(([r]) => r), "custom"].map((r) => el("button", {
      type: "button", class: "range", dataset: { range: r }, on: { click: () => pickRange(r) } }, r)));
  }
  for (const button of box.children) button.setAttribute("aria-pressed", view.range === button.dataset.range ? "true" : "false");
  $("#custom").hidden = view.range !== "custom";
}

function pickRange(r) {
  if (r === "custom") {
    const end = view.range === "custom" ? view.end : Date.now();
    const start = view.range === "custom" ? view.start : end - (RANGES.find(([x]) => x === view.range)?.[1] ?? 3600e3);
    $("#from").value = localInput(start);
    $("#to").value = localInput(end);
    view.range = "custom";
    drawRanges();
    $("#from").focus();
    return;
  }
  view.range = r;
  load();
}

function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60e3);
  return d.toISOString().slice(0, 19);
}

function bind() {
  $("#custom").addEventListener("submit", (event) => {
    event.preventDefault();
    const start = new Date($("#from").value).getTime();
    const end = new Date($("#to").value).getTime();
    if (!(start < end)) { say("The range must start before it ends.", "error"); return; }
    Object.assign(view, { range: "custom", start, end });
    load();
  });
  new ResizeObserver(throttle(() => {
    for (const chart of view.charts.values()) {
      if (chart.plot) chart.plot.setSize({ width: Math.max(240, chart.figure.clientWidth - 16), height: HEIGHT });
    }
  }, 150)).observe($("#charts"));
}

document.title = `${host} · edgemon`;
replace($("#host-name"), visible(host));
readLocation();
bind();
drawRanges();
const ready = initPage("");
loadRow();
load();
await ready;
const liveTail = throttle(tail, 1000);
openLive(host, {
  host: (data) => {
    view.lastSeenMs = data.last_seen_ms;
    noteNewest(data.newest_sample_ms);
    if (view.range !== "custom") liveTail();
  },
  fleet: throttle(loadRow, 5000),
});
setInterval(tickAge, 1000);
