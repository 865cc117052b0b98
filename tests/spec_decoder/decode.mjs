// A decoder of edgemon v1 batches written from protocol/SPEC.md alone, in a second language, to
// show the SPEC is enough (tests/test_protocol_vectors.py runs it on every test vector and
// compares with the reference decoder). Node >= 18, no npm package: msgpack is decoded here; zstd
// frames are parsed here (header, blocks, checksum: to check framing before decompressing) and
// decompressed by the `zstd` command-line tool with the dictionary the frame names.
//
//   node decode.mjs DICTIONARY_DIR FILE.hex...
//   node decode.mjs DICTIONARY_DIR FILE.hex:CATALOGUE.hex[:BASE.hex]...   (SPEC §9, §9.1)
//
// Prints one JSON line per file: {"file", "ok": true, "batch": {...}, "samples": [...]} or
// {"file", "ok": false, "reason", "message"}. Integers are printed as decimal strings (they
// are signed 64-bit: a JavaScript number cannot hold them all); a sample is
// {"name", "kind", "unit", "labels", "ts", "raw", "scale"}: its value is raw / 10**scale.

import { readFileSync, existsSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { join } from "node:path";

// SPEC §6
const MAX_COMPRESSED = 1 << 20;
const MAX_DECOMPRESSED = 8 << 20;
const MAX_TIMESTAMPS = 4096;
const MAX_METRICS = 4096;
const MAX_ENTRIES = 65536;
const MAX_SAMPLES = 1_000_000;
const MAX_LABEL_KEYS = 16;
const MAX_LABEL_VALUES = 262144;
const MAX_KEYS = 64;
const MAX_EXT_ELEMENTS = 1024;
const MAX_EXT_DEPTH = 8;
const MAX_NAME = 128;
const MAX_STRING_BYTES = 256;
const MAX_ID = 64;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

class Refused extends Error {
  constructor(reason, message) {
    super(message);
    this.reason = reason;
  }
}
const refuse = (reason, message) => { throw new Refused(reason, message); };
const schema = (message) => refuse("schema", message);

// --- zstd framing (RFC 8878 §3.1.1) -----------------------------------------------------------

function frameInfo(buf) {
  if (buf.length < 4 || buf.readUInt32LE(0) !== 0xfd2fb528) refuse("not_zstd", "no zstd frame magic");
  if (buf.length < 5) refuse("not_zstd", "truncated frame header");
  const fhd = buf[4];
  const fcsFlag = fhd >> 6, single = (fhd >> 5) & 1, reserved = (fhd >> 3) & 1;
  const checksum = (fhd >> 2) & 1, dictFlag = fhd & 3;
  if (reserved) refuse("not_zstd", "reserved bit set");
  let pos = 5 + (single ? 0 : 1);
  const dictSize = [0, 1, 2, 4][dictFlag];
  let dictId = 0;
  for (let i = 0; i < dictSize; i++) dictId += buf[pos + i] * 2 ** (8 * i);
  pos += dictSize;
  const fcsSize = fcsFlag === 0 ? (single ? 1 : 0) : [0, 2, 4, 8][fcsFlag];
  if (fcsSize === 0) refuse("decompressed_too_large", "the frame does not declare its content size");
  if (pos + fcsSize > buf.length) refuse("not_zstd", "truncated frame header");
  let size = 0n;
  for (let i = 0; i < fcsSize; i++) size += BigInt(buf[pos + i]) << BigInt(8 * i);
  if (fcsSize === 2) size += 256n;
  pos += fcsSize;
  if (size > BigInt(MAX_DECOMPRESSED)) refuse("decompressed_too_large", `declares ${size} bytes`);
  for (;;) { // blocks: walk them to find where the frame ends
    if (pos + 3 > buf.length) refuse("not_zstd", "truncated block header");
    const header = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16);
    const last = header & 1, type = (header >> 1) & 3, blockSize = header >>> 3;
    if (type === 3) refuse("not_zstd", "reserved block type");
    pos += 3 + (type === 1 ? 1 : blockSize);
    if (pos > buf.length) refuse("not_zstd", "truncated block");
    if (last) break;
  }
  pos += checksum ? 4 : 0;
  if (pos > buf.length) refuse("not_zstd", "truncated checksum");
  if (pos !== buf.length) refuse("trailing_bytes", `${buf.length - pos} bytes after the frame`);
  return { dictId, size: Number(size) };
}

function decompress(buf, dictDir) {
  if (buf.length > MAX_COMPRESSED) refuse("too_large", `${buf.length} bytes`);
  const { dictId, size } = frameInfo(buf);
  const args = ["-d", "-c", "-q", "--no-progress"];
  if (dictId !== 0) {
    const path = join(dictDir, `${dictId}.zdict`);
    if (!existsSync(path)) refuse("unknown_dictionary", `dictionary ${dictId}`);
    args.push("-D", path);
  }
  const run = spawnSync("zstd", args, { input: buf, maxBuffer: MAX_DECOMPRESSED + 1 });
  if (run.status !== 0) refuse("not_zstd", `zstd: ${run.stderr.toString().trim()}`);
  if (run.stdout.length !== size) refuse("not_zstd", "content size does not match the header");
  return run.stdout;
}

// --- msgpack (the subset SPEC §2 allows, everything else refused) ------------------------------

const utf8 = new TextDecoder("utf-8", { fatal: true }); // strict: no overlongs, no surrogates

class Reader {
  constructor(buf) { this.buf = buf; this.pos = 0; }
  need(n) {
    if (this.pos + n > this.buf.length) refuse("not_msgpack", "truncated msgpack");
  }
  u8() { this.need(1); return this.buf[this.pos++]; }
  uint(n) {
    this.need(n);
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(this.buf[this.pos++]);
    return v;
  }
  // One value. Returns {t: type, v: value}; types: int (BigInt), float, nil, bool, str, arr, map.
  value(depth) {
    if (depth > 100) refuse("not_msgpack", "nested too deep");
    const b = this.u8();
    if (b <= 0x7f) return { t: "int", v: BigInt(b) };
    if (b >= 0xe0) return { t: "int", v: BigInt(b - 256) };
    if ((b & 0xf0) === 0x80) return this.map(b & 0x0f, depth);
    if ((b & 0xf0) === 0x90) return this.arr(b & 0x0f, depth);
    if ((b & 0xe0) === 0xa0) return this.str(b & 0x1f);
    switch (b) {
      case 0xc0: return { t: "nil", v: null };
      case 0xc2: return { t: "bool", v: false };
      case 0xc3: return { t: "bool", v: true };
      case 0xc1: refuse("not_msgpack", "0xc1 is never used");
      case 0xc4: case 0xc5: case 0xc6: { // bin: skip it, then refuse (a type error, not garbage)
        const n = Number(this.uint(1 << (b - 0xc4))); this.need(n); this.pos += n;
        schema("binary data");
      }
      case 0xc7: case 0xc8: case 0xc9: case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        schema("extension type");
      case 0xca: { this.need(4); const v = this.buf.readFloatBE(this.pos); this.pos += 4; return { t: "float", v }; }
      case 0xcb: { this.need(8); const v = this.buf.readDoubleBE(this.pos); this.pos += 8; return { t: "float", v }; }
      case 0xcc: return { t: "int", v: this.uint(1) };
      case 0xcd: return { t: "int", v: this.uint(2) };
      case 0xce: return { t: "int", v: this.uint(4) };
      case 0xcf: {
        const v = this.uint(8);
        if (v > INT64_MAX) schema("uint64 above 2^63-1");
        return { t: "int", v };
      }
      case 0xd0: return { t: "int", v: BigInt.asIntN(8, this.uint(1)) };
      case 0xd1: return { t: "int", v: BigInt.asIntN(16, this.uint(2)) };
      case 0xd2: return { t: "int", v: BigInt.asIntN(32, this.uint(4)) };
      case 0xd3: return { t: "int", v: BigInt.asIntN(64, this.uint(8)) };
      case 0xd9: return this.str(Number(this.uint(1)));
      case 0xda: return this.str(Number(this.uint(2)));
      case 0xdb: return this.str(Number(this.uint(4)));
      case 0xdc: return this.arr(Number(this.uint(2)), depth);
      case 0xdd: return this.arr(Number(this.uint(4)), depth);
      case 0xde: return this.map(Number(this.uint(2)), depth);
      case 0xdf: return this.map(Number(this.uint(4)), depth);
    }
    refuse("not_msgpack", `byte 0x${b.toString(16)}`);
  }
  str(n) {
    this.need(n);
    const bytes = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    if (n > MAX_STRING_BYTES) schema(`string of ${n} bytes > ${MAX_STRING_BYTES}`);
    let v;
    try { v = utf8.decode(bytes); } catch { schema("string is not valid UTF-8"); }
    return { t: "str", v };
  }
  arr(n, depth) {
    if (n > this.buf.length - this.pos) refuse("not_msgpack", "array longer than the data");
    const v = [];
    for (let i = 0; i < n; i++) v.push(this.value(depth + 1));
    return { t: "arr", v };
  }
  map(n, depth) {
    if (2 * n > this.buf.length - this.pos) refuse("not_msgpack", "map longer than the data");
    const v = new Map();
    for (let i = 0; i < n; i++) {
      const k = this.value(depth + 1);
      if (k.t !== "str") schema("map key is not a string");
      if (v.has(k.v)) schema(`map key ${JSON.stringify(k.v)} twice`);
      v.set(k.v, this.value(depth + 1));
    }
    return { t: "map", v };
  }
}

// --- the batch rules (SPEC §2, §6, §7) --------------------------------------------------------

const NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const HOST = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const INSTANCE = /^[A-Za-z0-9._-]{1,64}$/;
const isName = (s) => s.length <= MAX_NAME && NAME.test(s);

function int(x, what) {
  if (x?.t !== "int") schema(`${what}: not an integer`);
  return x.v;
}
function str(x, what) {
  if (x?.t !== "str") schema(`${what}: not a string`);
  return x.v;
}
function arr(x, what) {
  if (x?.t !== "arr") schema(`${what}: not an array`);
  return x.v;
}
function add64(a, b, what) {
  const s = a + b;
  if (s < INT64_MIN || s > INT64_MAX) schema(`${what}: overflow of signed 64 bits`);
  return s;
}

function checkExtension(x, depth, budget) {
  budget.n += 1;
  if (budget.n > MAX_EXT_ELEMENTS) refuse("too_many_extension_elements", "more than 1024 elements");
  const container = x.t === "arr" || x.t === "map";
  if (container && depth > MAX_EXT_DEPTH) refuse("too_many_extension_elements", "nested more than 8 levels");
  if (x.t === "float" && !Number.isFinite(x.v)) schema("non-finite float");
  if (x.t === "arr") for (const y of x.v) checkExtension(y, depth + 1, budget);
  if (x.t === "map") for (const y of x.v.values()) { budget.n += 1; checkExtension(y, depth + 1, budget); }
}

function checkBatch(top) {
  if (top.t !== "map") schema("not a map");
  const m = top.v;
  if (m.size > MAX_KEYS) refuse("too_many_keys", `${m.size} keys`);
  const v = m.get("v");
  if (v?.t !== "int" || v.v !== 1n) refuse("version", "v is not the integer 1");
  const host = str(m.get("host"), "host");
  if (!HOST.test(host)) schema("host id");
  const instance = str(m.get("instance"), "instance");
  if (!INSTANCE.test(instance)) schema("instance id");
  const seq = int(m.get("seq"), "seq");
  if (seq < 0n) schema("seq < 0");
  const sent = int(m.get("sent"), "sent");
  const tDeltas = arr(m.get("t"), "t");
  if (tDeltas.length > MAX_TIMESTAMPS) refuse("too_many_timestamps", "timestamps");
  const ts = [];
  let acc = 0n;
  tDeltas.forEach((d, i) => {
    const delta = int(d, "t");
    if (i > 0 && delta <= 0n) schema("timestamps not strictly increasing");
    acc = i === 0 ? delta : add64(acc, delta, "timestamps");
    ts.push(acc);
  });
  const metrics = arr(m.get("metrics"), "metrics");
  if (metrics.length > MAX_METRICS) refuse("too_many_metrics", "metrics");
  const names = new Set();
  const samples = [];
  let entries = 0, labelValues = 0;
  for (const metric of metrics) {
    const fields = arr(metric, "metric");
    if (fields.length !== 6) schema("a metric is a 6-element array");
    const [nameX, kindX, unitX, scaleX, keysX, seriesX] = fields;
    const name = str(nameX, "metric name");
    if (!isName(name)) schema("metric name");
    if (names.has(name)) schema("metric name repeated");
    names.add(name);
    const kind = str(kindX, "kind");
    if (kind !== "gauge" && kind !== "counter") schema("kind");
    const unit = str(unitX, "unit");
    if ([...unit].length > MAX_NAME) schema("unit too long");
    const scale = int(scaleX, "scale");
    if (scale < 0n || scale > 9n) schema("scale");
    const keys = arr(keysX, "label keys").map((k) => str(k, "label key"));
    if (keys.length > MAX_LABEL_KEYS || new Set(keys).size !== keys.length || !keys.every(isName)) {
      schema("label keys");
    }
    const covered = new Map(); // label values (JSON) -> set of timestamp indexes
    for (const entryX of arr(seriesX, "series")) {
      const entry = arr(entryX, "series entry");
      if (entry.length !== 3) schema("a series entry is a 3-element array");
      entries += 1;
      if (entries > MAX_ENTRIES) refuse("too_many_series", "series entries");
      const values = arr(entry[0], "label values").map((x) => str(x, "label value"));
      labelValues += values.length;
      if (labelValues > MAX_LABEL_VALUES) refuse("too_many_label_values", "label values");
      if (values.length !== keys.length) schema("label values do not match label keys");
      const offset = int(entry[1], "offset");
      const deltas = arr(entry[2], "values").map((x) => int(x, "value"));
      if (offset < 0n || offset + BigInt(deltas.length) > BigInt(ts.length)) {
        schema("values past the timestamps");
      }
      const id = JSON.stringify(values);
      const seen = covered.get(id) ?? new Set();
      covered.set(id, seen);
      let raw = 0n;
      deltas.forEach((d, i) => {
        raw = i === 0 ? d : add64(raw, d, "values");
        const at = Number(offset) + i;
        if (seen.has(at)) schema("entries of one series cover a timestamp twice");
        seen.add(at);
        samples.push({ name, kind, unit, labels: Object.fromEntries(keys.map((k, j) => [k, values[j]])),
                       ts: ts[at].toString(), raw: raw.toString(), scale: Number(scale) });
      });
      if (samples.length > MAX_SAMPLES) refuse("too_many_samples", "samples");
    }
  }
  const budget = { n: 0 };
  const known = new Set(["v", "host", "instance", "seq", "sent", "t", "metrics"]);
  for (const [key, value] of m) {
    if (known.has(key)) continue;
    if (!isName(key)) schema(`unknown key name ${JSON.stringify(key)}`);
    checkExtension(value, 1, budget);
  }
  // nil, booleans and floats may appear only under unknown keys: everything known was checked
  // to be an int, a string or an array of those above.
  return { batch: { host, instance, seq: seq.toString(), sent: sent.toString() }, samples };
}

// --- msgpack encoding (shortest forms), for the content hashes of SPEC §9 and §9.1 ------------

function encodeValue(x, out) {
  if (x.t === "int") {
    const v = x.v;
    if (v >= 0n && v <= 127n) out.push(Number(v));
    else if (v < 0n && v >= -32n) out.push(Number(v + 256n));
    else {
      const put = (tag, bytes, value) => {
        out.push(tag);
        for (let i = bytes - 1; i >= 0; i--) out.push(Number((BigInt.asUintN(64, value) >> BigInt(8 * i)) & 0xffn));
      };
      if (v > 0n) {
        if (v <= 0xffn) put(0xcc, 1, v);
        else if (v <= 0xffffn) put(0xcd, 2, v);
        else if (v <= 0xffffffffn) put(0xce, 4, v);
        else put(0xcf, 8, v);
      } else if (v >= -128n) put(0xd0, 1, v);
      else if (v >= -32768n) put(0xd1, 2, v);
      else if (v >= -2147483648n) put(0xd2, 4, v);
      else put(0xd3, 8, v);
    }
  } else if (x.t === "str") {
    const bytes = Buffer.from(x.v, "utf8");
    const n = bytes.length;
    if (n < 32) out.push(0xa0 | n);
    else if (n < 256) out.push(0xd9, n);
    else out.push(0xda, n >> 8, n & 0xff);
    for (const b of bytes) out.push(b);
  } else if (x.t === "arr") {
    const n = x.v.length;
    if (n < 16) out.push(0x90 | n);
    else if (n < 65536) out.push(0xdc, n >> 8, n & 0xff);
    else out.push(0xdd, (n >>> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    for (const y of x.v) encodeValue(y, out);
  } else schema("cannot hash this value");
  return out;
}
const sha256hex = (x) => createHash("sha256").update(Buffer.from(encodeValue(x, []))).digest("hex");
const I = (v) => ({ t: "int", v });
const S = (v) => ({ t: "str", v });
const A = (v) => ({ t: "arr", v });

// --- catalogues and batches naming one (SPEC §9), batches going on from a base (§9.1) ----------

function checkCatalogue(top) {
  if (top.t !== "map") schema("not a map");
  const m = top.v;
  const v = m.get("v");
  if (v?.t !== "int" || v.v !== 1n) refuse("version", "v is not the integer 1");
  const host = str(m.get("host"), "host");
  if (!HOST.test(host)) schema("host id");
  if (!INSTANCE.test(str(m.get("instance"), "instance"))) schema("instance id");
  const id = str(m.get("id"), "id");
  if (!/^[0-9a-f]{16}$/.test(id)) schema("catalogue id");
  const metricsX = m.get("metrics");
  const metrics = [], series = [], names = new Set();
  for (const metric of arr(metricsX, "metrics")) {
    const fields = arr(metric, "metric");
    if (fields.length !== 6) schema("a catalogue metric is a 6-element array");
    const name = str(fields[0], "name");
    if (!isName(name) || names.has(name)) schema("metric name");
    names.add(name);
    const kind = str(fields[1], "kind");
    if (kind !== "gauge" && kind !== "counter") schema("kind");
    const keys = arr(fields[4], "label keys").map((k) => str(k, "label key"));
    const seen = new Set();
    for (const labelsX of arr(fields[5], "series")) {
      const labels = arr(labelsX, "label values").map((x) => str(x, "label value"));
      if (labels.length !== keys.length) schema("label values do not match label keys");
      const key = JSON.stringify(labels);
      if (seen.has(key)) schema("a series is listed twice");
      seen.add(key);
      series.push({ metric: metrics.length, labels: labelsX, name, kind });
    }
    metrics.push(fields);
  }
  if (sha256hex(metricsX).slice(0, 16) !== id) refuse("catalogue_hash", "id is not the hash of metrics");
  return { host, id, metrics, series };
}

const REFERENCING = ["catalogue", "values", "sparse", "base", "bvalues", "factors"];

// The inline batch map (typed, as the Reader builds it) of a referencing or based batch map.
// ``lastOf(seq)``: Map of JSON([name, labels]) -> last raw value (BigInt) of the base batch, or null.
function resolve(m, catalogue, lastOf) {
  if (m.has("metrics")) schema("a batch has either metrics or a catalogue, not both");
  if (str(m.get("catalogue"), "catalogue") !== catalogue.id) refuse("unknown_catalogue", "unknown catalogue");
  const n = arr(m.get("t"), "t").length;
  const listed = new Map(); // catalogue series index -> runs
  for (const itemX of m.has("sparse") ? arr(m.get("sparse"), "sparse") : []) {
    const item = arr(itemX, "sparse series");
    if (item.length !== 2) schema("a sparse series is [index, runs]");
    const index = Number(int(item[0], "sparse index"));
    if (index < 0 || index >= catalogue.series.length) schema("sparse index out of range");
    if (listed.has(index)) schema("a sparse series is listed twice");
    listed.set(index, arr(item[1], "runs"));
  }
  const dense = catalogue.series.map((_, i) => i).filter((i) => !listed.has(i));
  let values;
  if (m.has("base") || m.has("bvalues")) values = unbase(m, catalogue, dense, n, lastOf);
  else values = arr(m.get("values"), "values").map((x) => int(x, "value"));
  if (values.length !== dense.length * n) schema("values: wrong count");
  const entries = catalogue.metrics.map(() => []);
  let at = 0;
  catalogue.series.forEach((s, i) => {
    if (listed.has(i)) {
      for (const runX of listed.get(i)) {
        const run = arr(runX, "run");
        if (run.length !== 2) schema("a run is [offset, values]");
        entries[s.metric].push(A([s.labels, run[0], run[1]]));
      }
    } else {
      entries[s.metric].push(A([s.labels, I(0n), A(values.slice(at, at + n).map(I))]));
      at += n;
    }
  });
  const inline = new Map([...m].filter(([k]) => !REFERENCING.includes(k)));
  inline.set("metrics", A(catalogue.metrics.map((f, j) => [f, j]).filter(([, j]) => entries[j].length)
    .map(([f, j]) => A([...f.slice(0, 5), A(entries[j])]))));
  return { t: "map", v: inline };
}

function unbase(m, catalogue, dense, n, lastOf) {
  if (m.has("values")) schema("a batch has either values or bvalues, not both");
  if (!m.has("base") || !m.has("bvalues")) schema("base and bvalues go together");
  const base = arr(m.get("base"), "base");
  if (base.length !== 2) schema("base is [seq, check]");
  const baseSeq = int(base[0], "base seq"), check = int(base[1], "check");
  if (baseSeq < 0n || baseSeq >= int(m.get("seq"), "seq")) schema("base seq is not below seq");
  if (check < 0n || check >= 2n ** 60n) schema("check is not a 60-bit number");
  const bvalues = arr(m.get("bvalues"), "bvalues").map((x) => int(x, "bvalue"));
  if (bvalues.length !== dense.length * n) schema("bvalues: wrong count");
  const denseSet = new Set(dense), factor = new Map();
  for (const itemX of m.has("factors") ? arr(m.get("factors"), "factors") : []) {
    const item = arr(itemX, "factor");
    if (item.length !== 2) schema("a factor is [index, factor]");
    const index = Number(int(item[0], "factor index")), f = int(item[1], "factor");
    if (!denseSet.has(index) || factor.has(index) || f < 2n) schema("bad factor");
    factor.set(index, f);
  }
  const last = lastOf(baseSeq);
  if (last === null) refuse("unknown_base", "the base batch is not known");
  const bases = dense.map((i) => {
    const s = catalogue.series[i];
    return last.get(JSON.stringify([s.name, s.labels.v.map((x) => x.v)])) ?? 0n;
  });
  if (BigInt("0x" + sha256hex(A(bases.map(I))).slice(0, 15)) !== check) {
    refuse("unknown_base", "the base values held are not the ones the check covers");
  }
  const out = [];
  dense.forEach((i, k) => {
    const x = bvalues.slice(k * n, (k + 1) * n).map((v) => add64(v * (factor.get(i) ?? 1n), 0n, "bvalues"));
    let acc = 0n;
    const d = catalogue.series[i].kind === "counter" ? x.map((v) => (acc = add64(acc, v, "bvalues"))) : x;
    if (n) d[0] = add64(d[0], bases[k], "bvalues");
    out.push(...d);
  });
  return out;
}

function readMap(payload, dictDir) {
  const packed = decompress(payload, dictDir);
  const reader = new Reader(packed);
  const top = reader.value(0);
  if (reader.pos !== packed.length) refuse("not_msgpack", "bytes after the msgpack map");
  return top;
}

function decode(payload, dictDir, catalogue = null, lastOf = () => null) {
  const top = readMap(payload, dictDir);
  if (catalogue !== null && top.t === "map" && top.v.has("catalogue")) {
    return checkBatch(resolve(top.v, catalogue, lastOf));
  }
  return checkBatch(top);
}

// The last raw value of each series of a decoded batch (what a later batch goes on from).
function lastValues(samples) {
  const newest = new Map();
  for (const s of samples) {
    const key = JSON.stringify([s.name, Object.values(s.labels)]);
    const held = newest.get(key);
    if (!held || BigInt(s.ts) > held.ts) newest.set(key, { ts: BigInt(s.ts), raw: BigInt(s.raw) });
  }
  return new Map([...newest].map(([k, v]) => [k, v.raw]));
}

const hexOf = (file) => Buffer.from(readFileSync(file, "utf8").trim(), "hex");

// Arguments: FILE.hex, or FILE.hex:CATALOGUE.hex[:BASE.hex] for a batch naming a catalogue (the
// base: the batch it may go on from, read with the same catalogue).
const [dictDir, ...files] = process.argv.slice(2);
for (const file of files) {
  try {
    const [path, cataloguePath, basePath] = file.split(":");
    let catalogue = null, lastOf = () => null;
    if (cataloguePath) catalogue = checkCatalogue(readMap(hexOf(cataloguePath), dictDir));
    if (basePath) {
      const base = decode(hexOf(basePath), dictDir, catalogue);
      const last = lastValues(base.samples);
      lastOf = (seq) => (seq.toString() === base.batch.seq ? last : null);
    }
    const { batch, samples } = decode(hexOf(path), dictDir, catalogue, lastOf);
    console.log(JSON.stringify({ file, ok: true, batch, samples }));
  } catch (err) {
    if (!(err instanceof Refused)) throw err;
    console.log(JSON.stringify({ file, ok: false, reason: err.reason, message: err.message }));
  }
}
