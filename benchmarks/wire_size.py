"""Bytes per sample on the wire: edgemon v1 beside JSON, msgpack, Influx line protocol and
Prometheus text (each raw and gzip'd), on real samples of this host batched as the agent does.

    python benchmarks/wire_size.py [--cycles 6] [--interval 10] [--busy] [--quick] [--result NAME]

``--busy`` runs a CPU, disk and network load beside the sampler so counters move as on a busy
host. The first row is what an agent sends in the steady state: a batch naming its series
catalogue by hash and going on from the batch before it (protocol SPEC.md §9.1; one cycle sampled
just before the batch is that earlier batch). Then, from the same samples: the batch naming its
catalogue without a base (§9: what is sent after the collector lost the base, and the previous
release's steady state), the inline v1 batch (before a catalogue is acknowledged, and what old
agents send) and the catalogue message itself (sent once per series set). Writes
benchmarks/results/<NAME>.json (default ``wire_size``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import socket
import tempfile
import time

import msgpack
import zstandard

from edgemon.agent.families import start as start_families
from edgemon.protocol import BatchBuilder, encode, expand_samples, to_scaled
from edgemon.protocol.base import last_values, rebase
from edgemon.protocol.catalogue import compact, encode_catalogue
from edgemon.protocol.codec import BASED_DICTIONARY_ID, DICTIONARY_ID

try:
    from benchmarks._common import table, write_result
except ImportError:  # run as a script from benchmarks/
    from _common import table, write_result  # type: ignore[no-redef]

NETDATA_B_PER_SAMPLE = 10.5  # published figure for its zstd streaming (../shared/peers.md)


def _busy(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    """Burn CPU, write and fsync a file, push UDP packets: make every family's counters move."""
    fd, path = tempfile.mkstemp()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    block = os.urandom(1 << 16)
    try:
        while not stop.is_set():
            sum(i * i for i in range(20000))
            os.write(fd, block)
            os.fsync(fd)
            if os.lseek(fd, 0, os.SEEK_CUR) > 64 << 20:
                os.lseek(fd, 0, os.SEEK_SET)
            sock.sendto(block[:1200], ("127.0.0.1", 9))
    finally:
        os.close(fd)
        os.unlink(path)


def sample_cycles(cycles: int, interval: float
                  ) -> tuple[BatchBuilder, list[tuple], BatchBuilder]:
    """(the batch of ``cycles`` cycles, its samples, the one-cycle batch sampled before it)."""
    collectors = list(start_families()[0].values())  # the default families this host has
    for collect in collectors:  # prime stateful families (cpu percent needs a previous reading)
        collect()
    time.sleep(min(interval, 1.0))
    before = BatchBuilder()  # the batch the measured one goes on from (SPEC.md §9.1)
    builder = BatchBuilder()
    rows: list[tuple] = []
    for i in range(cycles + 1):
        ts = int(time.time() * 1000)
        for collect in collectors:
            for metric, labels, value in collect():
                scaled = to_scaled(value, metric.scale)
                (builder if i else before).add(ts, metric, labels, scaled)
        if i < cycles:
            time.sleep(interval)
    wire = builder.build(host="bench-host", instance="0123456789ab", seq=2, sent_ms=ts)
    rows = [(s.name, s.labels, s.timestamp_ms, s.value, s.kind) for s in expand_samples(wire)]
    return builder, rows, before


def based_form(wire: dict, before: BatchBuilder) -> dict:
    """``wire``'s referencing batch going on from the batch ``before`` (seq 1), as the agent
    seals it once the collector acknowledged that one."""
    base = before.build(host=wire["host"], instance=wire["instance"], seq=1, sent_ms=wire["sent"])
    metrics, _ident, referencing = compact(wire, compact(base)[0])
    return rebase(referencing, metrics, last_values(base["metrics"]), 1) or referencing


def encodings(wire: dict, rows: list[tuple], before: BatchBuilder) -> dict[str, bytes]:
    host = wire["host"]
    as_json = json.dumps([{"name": n, "labels": {"host": host, **lab}, "ts": t, "value": v}
                          for n, lab, t, v, _ in rows]).encode()
    as_msgpack = msgpack.packb([[n, {"host": host, **lab}, t, v] for n, lab, t, v, _ in rows])

    def influx_line(n: str, lab: dict, t: int, v: float | int) -> str:
        tags = "".join(f",{k}={str(x).replace(' ', '_')}" for k, x in lab.items())
        val = f"{v}i" if isinstance(v, int) else repr(float(v))
        return f"{n},host={host}{tags} value={val} {t * 1_000_000}"

    influx = "\n".join(influx_line(n, lab, t, v) for n, lab, t, v, _ in rows).encode()
    prom_lines: list[str] = []
    for n in sorted({r[0] for r in rows}):
        kind = next(r[4] for r in rows if r[0] == n)
        prom_lines.append(f"# TYPE {n} {kind}")
        for _, lab, t, v, _ in (r for r in rows if r[0] == n):
            labels = ",".join([f'host="{host}"'] + [f'{k}="{x}"' for k, x in lab.items()])
            prom_lines.append(f"{n}{{{labels}}} {v} {t}")
    prom = "\n".join(prom_lines).encode()
    # A naive columnar batch: one entry per series with its own name, labels, absolute floats.
    naive_series: dict[tuple, list] = {}
    for n, lab, _t, v, _ in rows:
        naive_series.setdefault((n, tuple(lab.items())), []).append(v)
    naive = zstandard.ZstdCompressor(level=3).compress(msgpack.packb({
        "host": host, "t": sorted({r[2] for r in rows}),
        "series": [[n, dict(lab), vals] for (n, lab), vals in naive_series.items()]}))
    metrics, ident, referencing = compact(wire)
    based = based_form(wire, before)
    out = {"edgemon v1 going on from the batch before (steady state)":
           encode(based, dict_id=BASED_DICTIONARY_ID if "bvalues" in based else DICTIONARY_ID),
           "edgemon v1 going on from the batch before, dictionary 1": encode(based),
           "edgemon v1 naming its series catalogue, no base": encode(referencing),
           "edgemon v1 inline (msgpack+zstd, columnar, delta)": encode(wire),
           "edgemon series catalogue (once per series set)": encode_catalogue(
               host=host, instance=wire["instance"], metrics=metrics, ident=ident),
           "naive columnar msgpack+zstd": naive}
    for name, raw in [("JSON", as_json), ("msgpack rows", as_msgpack),
                      ("Influx line protocol", influx), ("Prometheus text", prom)]:
        out[name] = raw
        out[f"{name} + gzip"] = gzip.compress(raw, 6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=6, help="cycles per batch (agent: 6)")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--busy", action="store_true", help="run a CPU/disk/network load")
    parser.add_argument("--quick", action="store_true", help="interval 1 s")
    parser.add_argument("--result", default="wire_size", help="result file name")
    args = parser.parse_args()
    interval = 1.0 if args.quick else args.interval
    stop = multiprocessing.Event()
    loader = multiprocessing.Process(target=_busy, args=(stop,), daemon=True) if args.busy else None
    if loader:
        loader.start()
    try:
        builder, rows, before = sample_cycles(args.cycles, interval)
    finally:
        stop.set()
        if loader:
            loader.join(5)
    wire = builder.build(host="bench-host", instance="0123456789ab", seq=2,
                         sent_ms=int(time.time() * 1000))
    n = len(rows)
    blobs = encodings(wire, rows, before)
    ours = len(next(iter(blobs.values())))
    results = []
    for name, blob in blobs.items():
        results.append({"format": name, "bytes": len(blob),
                        "B/sample": round(len(blob) / n, 3),
                        "x edgemon": round(len(blob) / ours, 1)})
    results.append({"format": "Netdata streaming (published)", "bytes": "",
                    "B/sample": NETDATA_B_PER_SAMPLE,
                    "x edgemon": round(NETDATA_B_PER_SAMPLE * n / ours, 1)})
    series = len({(r[0], tuple(r[1].items())) for r in rows})
    print(f"{n} samples = {series} series x {args.cycles} cycles at {interval:g} s"
          f"{' (busy)' if args.busy else ''}\n")
    print(table(results, ["format", "bytes", "B/sample", "x edgemon"]))
    path = write_result(args.result, {"samples": n, "series": series, "cycles": args.cycles,
                                      "interval_s": interval, "busy": args.busy,
                                      "formats": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
