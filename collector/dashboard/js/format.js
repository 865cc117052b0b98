// Numbers for people: bytes in IEC units, rates per second, percentages, durations, ages.

const IEC = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
const SI = ["", "k", "M", "G", "T", "P", "E"];

export function number(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  if (x === 0) return "0";
  const abs = Math.abs(x);
  if (abs >= 1e15 || abs < 1e-4) return x.toExponential(digits - 1);
  const places = Math.max(0, digits - 1 - Math.floor(Math.log10(abs)));
  return x.toLocaleString("en-US", { maximumFractionDigits: Math.min(places, 6) });
}

function scaled(x, base, units, digits) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  let i = 0;
  let v = Math.abs(x);
  while (v >= base && i < units.length - 1) { v /= base; i += 1; }
  const sign = x < 0 ? "-" : "";
  return `${sign}${number(v, digits)}${units[i] ? " " + units[i] : ""}`.replace(/ $/, "");
}

export function bytes(x, digits = 3) { return scaled(x, 1024, IEC, digits); }
export function si(x, digits = 3) { return scaled(x, 1000, SI, digits).replace(/ (?=[kMGTPE]$)/, " "); }
export function percent(x, digits = 3) { return x === null || x === undefined ? "–" : `${number(x, digits)} %`; }

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.abs(seconds);
  const sign = seconds < 0 ? "-" : "";
  if (s < 1) return `${sign}${number(s * 1000, 3)} ms`;
  if (s < 90) return `${sign}${number(s, 3)} s`;
  if (s < 5400) return `${sign}${Math.round(s / 60)} min`;
  if (s < 172800) return `${sign}${number(s / 3600, 2)} h`;
  return `${sign}${number(s / 86400, 2)} d`;
}

/** "12 s ago" for a time `ms` given the server's clock `nowMs`. */
export function ago(ms, nowMs) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, (nowMs - ms) / 1000);
  if (s < 2) return "just now";
  return `${duration(Math.round(s))} ago`;
}

/** A value with its unit; `rate`: a per-second rate of a counter. */
export function withUnit(x, unit, rate = false, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  const per = rate ? "/s" : "";
  switch (unit) {
    case "bytes": return bytes(x, digits) + per;
    case "percent": return percent(x, digits);
    case "seconds": return rate ? `${number(x * 100, digits)} % busy` : duration(x);
    case "": return si(x, digits) + (rate ? " /s" : "");
    default: return `${si(x, digits)} ${unit}${per}`;
  }
}

export function dateTime(ms) {
  if (ms === null || ms === undefined) return "–";
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
