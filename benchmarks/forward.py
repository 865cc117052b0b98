"""Forwarding benchmark: samples/s forwarded to a real VictoriaMetrics on loopback, bytes per
sample on the wire, and what forwarding costs ingest (store rate with and without it, same run).

    python benchmarks/forward.py [--quick] [--hosts N] [--cycles N]

Synthetic hosts as in ``storage_ingest.py`` (~90 series per host, 10 s interval, batches of 6
cycles). Three ingest runs over fresh files, same batches, each doing what the collector does
per message (decode + validate the payload, store 200 batches per transaction): no
forwarding (baseline), the forwarding log on (a cursor exists, nothing sends), a forwarder
sending to VictoriaMetrics meanwhile (encoding in its worker process, as the collector does),
and the same encoding in threads of the ingesting process (to show why the worker process).
Then the back-log of a store (three times the ingest runs' samples) is forwarded from scratch
at two request sizes: samples/s from the start (encoder process spawn included) and steady
(from the first confirmed request on), the encoder process's CPU per sample, and remote-write
bytes per sample (snappy protobuf, as sent). Writes
``benchmarks/results/forward.json``. Not a test: figures depend on the machine
(and on its load: compare the ratios, measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

from _common import table, write_result  # noqa: E402
from storage_ingest import T0, host_batches, interleave, to_items  # noqa: E402

from edgemon.collector.storage.base import IngestItem  # noqa: E402
from edgemon.collector.storage.sqlite import SQLiteStorage  # noqa: E402
from edgemon.protocol import decode  # noqa: E402
from edgemon.protocol.schema import validate_batch  # noqa: E402
from tests.support.forwarding import Running  # noqa: E402
from tests.support.forwarding import config as forward_config  # noqa: E402
from tests.support.tsdb import VictoriaMetrics  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

PER_TXN = 200  # batches per store transaction (the collector's max_batch_per_txn default)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of processes (``/proc/<pid>/stat``), 0 for one that is gone."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def encoder_pids(run: Running) -> list[int]:
    encoder = run.service.encoder
    return encoder.pids() if encoder is not None else []


def caught_up(st: SQLiteStorage) -> bool:
    return all(p.pending_batches == 0 for p in st.forward_positions())


def store_run(workdir: Path, items: list[IngestItem], mode: str, vm: VictoriaMetrics | None,
              ) -> dict[str, Any]:
    """Store ``items`` (PER_TXN at a time); mode: off | log | send."""
    path = workdir / f"{mode}-{time.monotonic_ns()}.db"
    st = SQLiteStorage(path)
    run = None
    if mode == "log":
        st.forward_open({"bench": "all"}, 0)
    elif mode.startswith("send"):
        assert vm is not None
        run = Running(st, forward_config(vm.write_url, name="bench",
                                         max_samples_per_request=10_000),
                      encode_in_process=mode == "send")
    samples = sum(i.batch.sample_count for i in items)
    pids = encoder_pids(run) if run is not None else []
    encoder_cpu = cpu_seconds(pids)
    cpu = time.process_time()
    t = time.perf_counter()
    for i in range(0, len(items), PER_TXN):
        # what ingest does per message: decode and validate the payload, then store
        st.store_batches([IngestItem(validate_batch(decode(it.payload)), it.payload,
                                     it.received_ms, it.historical)
                          for it in items[i:i + PER_TXN]])
    stored_s = time.perf_counter() - t
    out: dict[str, Any] = {"mode": mode, "samples": samples, "ingest_s": round(stored_s, 3),
                           "ingest_samples_per_s": round(samples / stored_s)}
    if run is not None:
        wait_until(lambda: caught_up(st), 600, "forwarded")
        out["forward_done_s"] = round(time.perf_counter() - t, 3)
        out["forward_samples_per_s_while_ingesting"] = round(samples / out["forward_done_s"])
        out["encoder_cpu_us_per_sample"] = round(
            (cpu_seconds(pids) - encoder_cpu) / samples * 1e6, 2)
        run.close()
    # CPU of this process (ingest, plus forwarding when it runs in threads), per sample
    out["process_cpu_us_per_sample"] = round((time.process_time() - cpu) / samples * 1e6, 2)
    st.close()
    return out


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median ingest rate, with every run's rate beside it."""
    ordered = sorted(runs, key=lambda r: r["ingest_samples_per_s"])
    return {**ordered[len(ordered) // 2],
            "runs": [r["ingest_samples_per_s"] for r in runs]}


def forward_backlog(workdir: Path, items: list[IngestItem], vm: VictoriaMetrics,
                    per_request: int) -> dict[str, Any]:
    """Everything stored first, then forwarded from scratch: the rate from the start (the
    encoder process's spawn included) and steady, from the first confirmed request on."""
    path = workdir / f"backlog-{per_request}.db"
    st = SQLiteStorage(path)
    st.forward_open({"bench": "all"}, 0)
    for i in range(0, len(items), PER_TXN):
        st.store_batches(items[i:i + PER_TXN])
    samples = sum(i.batch.sample_count for i in items)
    t = time.perf_counter()
    run = Running(st, forward_config(vm.write_url, name="bench",
                                     max_samples_per_request=per_request))
    fwd = run.service.forwarders[0].counters
    pids = encoder_pids(run)
    while fwd.samples_sent == 0:
        time.sleep(0.002)
    first_t, first_n, first_cpu = time.perf_counter(), fwd.samples_sent, cpu_seconds(pids)
    first_own = time.process_time()
    deadline = first_t + 600
    while fwd.samples_sent < samples and time.perf_counter() < deadline:
        time.sleep(0.002)
    end = time.perf_counter()
    steady = samples - first_n
    encoder_cpu = cpu_seconds(pids) - first_cpu
    own_cpu = time.process_time() - first_own
    run.close()
    [p] = st.forward_positions()
    st.close()
    assert p.sent == samples, (p.sent, samples)
    return {"max_samples_per_request": per_request, "samples": samples,
            "seconds": round(end - t, 3), "samples_per_s": round(samples / (end - t)),
            "steady_samples_per_s": round(steady / (end - first_t)),
            "encoder_cpu_us_per_sample": round(encoder_cpu / steady * 1e6, 2),
            "collector_cpu_us_per_sample": round(own_cpu / steady * 1e6, 2),
            "requests": fwd.requests, "bytes": fwd.bytes_sent,
            "bytes_per_sample": round(fwd.bytes_sent / samples, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small fleet (about a minute)")
    ap.add_argument("--hosts", type=int)
    ap.add_argument("--cycles", type=int)
    ap.add_argument("--repeat", type=int, default=3, help="ingest runs per mode (median)")
    args = ap.parse_args()
    hosts = args.hosts or (40 if args.quick else 200)
    cycles = args.cycles or (60 if args.quick else 360)
    per_host = [to_items(host_batches(f"host-{h:05d}", h, T0, cycles, 6), wire=False)
                for h in range(hosts)]
    # fresh timestamps: VictoriaMetrics and the store see recent data
    items = interleave(per_host)
    workdir = Path(tempfile.mkdtemp(prefix="edgemon-bench-forward-"))
    vm = VictoriaMetrics(workdir / "vm").start()
    try:
        modes = ("off", "log", "send", "send-threads")
        store_run(workdir, items[:len(items) // 4], "off", vm)  # warm-up, not counted
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for r in range(args.repeat):  # rotating order: a load spike hits every mode alike
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                runs[mode].append(store_run(workdir, items, mode, vm))
        stores = [_median(runs[m]) for m in modes]
        base = stores[0]["ingest_samples_per_s"]
        for s in stores:
            s["ratio_to_off"] = round(s["ingest_samples_per_s"] / base, 3)
        more = [to_items(host_batches(f"host-{h:05d}", h, T0, cycles * 3, 6), wire=False)
                for h in range(hosts)]
        backlog = [forward_backlog(workdir, interleave(more), vm, n) for n in (2000, 10_000)]
    finally:
        vm.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(stores, ["mode", "samples", "ingest_s", "ingest_samples_per_s", "ratio_to_off",
                         "forward_samples_per_s_while_ingesting", "process_cpu_us_per_sample",
                         "encoder_cpu_us_per_sample", "runs"]))
    print()
    print(table(backlog, ["max_samples_per_request", "samples", "seconds", "samples_per_s",
                          "steady_samples_per_s", "encoder_cpu_us_per_sample",
                          "collector_cpu_us_per_sample", "requests", "bytes_per_sample"]))
    best = backlog[0]  # Prometheus's default request size
    headline = [
        {"figure": "forwarded to VictoriaMetrics", "unit": "samples/s",
         "value": best["steady_samples_per_s"],
         "baselines": {"from the start, encoder spawn included": best["samples_per_s"]},
         "note": f"back-log of {best['samples']} samples, {best['max_samples_per_request']} "
                 "samples per request, loopback, from the first confirmed request on"},
        {"figure": "forwarding CPU per sample (encoder process + collector)", "unit": "us",
         "value": round(best["encoder_cpu_us_per_sample"]
                        + best["collector_cpu_us_per_sample"], 2),
         "baselines": {"encoder process": best["encoder_cpu_us_per_sample"],
                       "collector process": best["collector_cpu_us_per_sample"]},
         "note": "draining the back-log at 2000 samples per request"},
        {"figure": "remote-write bytes per sample", "unit": "B",
         "value": backlog[0]["bytes_per_sample"],
         "note": "snappy protobuf at 2000 samples per request (Prometheus's default)"},
        {"figure": "ingest rate, forwarding log on", "unit": "samples/s",
         "value": stores[1]["ingest_samples_per_s"], "baselines": {"no forwarding": base},
         "note": "decode + validate + store_batches, in 200-batch transactions"},
        {"figure": "collector-process CPU per ingested sample, forwarding on", "unit": "us",
         "value": stores[2]["process_cpu_us_per_sample"],
         "baselines": {"no forwarding": stores[0]["process_cpu_us_per_sample"],
                       "log only": stores[1]["process_cpu_us_per_sample"],
                       "encoding in threads": stores[3]["process_cpu_us_per_sample"]},
         "note": "ingest + the forwarder's reads and HTTP; encoding in its worker process"},
        {"figure": "ingest rate while forwarding", "unit": "samples/s",
         "value": stores[2]["ingest_samples_per_s"], "baselines": {"no forwarding": base},
         "note": "same, while a forwarder in the process sends to VictoriaMetrics"},
    ]
    path = write_result("forward", {"hosts": hosts, "cycles": cycles, "stores": stores,
                                    "backlog": backlog, "headline": headline})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
