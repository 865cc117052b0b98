"""CPU per sample of an ingest worker's ``Examiner``, whole and stage by stage, for one or more
checkouts of the code in the same run.

    python benchmarks/examine_cpu.py [--hosts N] [--rounds R] [--runs K] [--tree NAME=ROOT ...]

Batches as a fleet sends them (``fleet.SimHost``: one-minute batches of 6 cycles, 81 series),
pre-encoded before any timed window in two forms: **inline** (what ``benchmarks/ingest.py``'s
publishers send) and **based** (the agent's steady state: the batch names its series catalogue
and goes on from the batch before, ``catalogue.compact`` + ``base.rebase``, encoded as the agent
seals it). Each form is examined as an ingest worker does (``Examiner.examine`` without
``admit``: the series hashes are computed), after one warm-up round that fills the caches
(catalogues, bases, known metric heads). Stages, timed on their own over the same batches:
``decompress`` (zstd), ``read`` (msgspec's typed reader; for based batches the referencing
reader, ``unbase`` and ``resolve`` without the schema), ``schema`` (``check_decoded``),
``bases`` (``last_values``), ``screen``, ``hashes`` (``series_keys`` + ``series_hashes``) and
``head`` (``BatchHead.of``). CPU seconds (``time.process_time``): the machine may be shared.

``--tree NAME=ROOT`` (repeatable) runs each checkout in a subprocess of its own (runs
interleaved, so that a change in the machine's load touches every tree alike) and prints the
ratio of each to the first; without it, the checkout this script belongs to. Every tree must
give the same outcomes (stored bytes, kinds) for the same batches: the script compares a digest
of them. Writes ``benchmarks/results/examine_cpu.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STAGES = ("decompress", "read", "schema", "bases", "screen", "hashes", "head")
SALT = b"examine-cpu-salt"


def _payloads(hosts: int, rounds: int, now_ms: int) -> dict[str, Any]:
    """Per form: (topic, payload) in examine order, the catalogue payloads, samples in all."""
    from fleet import SimHost

    from edgemon.protocol import encode
    from edgemon.protocol.base import last_values, rebase
    from edgemon.protocol.catalogue import compact, encode_catalogue
    from edgemon.protocol.codec import BASED_DICTIONARY_ID, DICTIONARY_ID

    start = now_ms - (rounds + 3) * 60_000
    sims = [SimHost(f"bench-{i:05d}", i, start) for i in range(hosts)]
    inline: list[tuple[str, bytes]] = []
    based: list[tuple[str, bytes]] = []
    catalogues: dict[tuple[str, str], bytes] = {}
    before: dict[str, tuple[dict[str, Any], list[list[Any]]]] = {}
    samples = 0
    for r in range(rounds + 1):  # round 0: warm-up (not timed)
        for sim in sims:
            batch = sim.next_batch()
            batch["sent"] = start + (r + 1) * 60_000  # the same in every tree's process
            topic = f"edgemon/v1/{sim.host}/metrics"
            inline.append((topic, encode(batch)))
            prior = before.get(sim.host)
            metrics, ident, referencing = compact(batch, prior[1] if prior else None)
            catalogues[(sim.host, ident)] = encode_catalogue(
                host=sim.host, instance=batch["instance"], metrics=metrics, ident=ident)
            wire = referencing
            if prior is not None:
                wire = rebase(referencing, metrics, last_values(prior[0]["metrics"]),
                              prior[0]["seq"]) or referencing
            based.append((topic, encode(wire, dict_id=BASED_DICTIONARY_ID if "bvalues" in wire
                                        else DICTIONARY_ID)))
            before[sim.host] = (batch, metrics)
            if r:
                samples += sum(len(e[2]) for m in batch["metrics"] for e in m[5])
    return {"inline": inline, "based": based, "catalogues": catalogues,
            "samples": samples, "warm": hosts}


class _Unchecked:
    """What ``resolve`` gets instead of a checked batch while "read" is timed."""

    sample_count = 0

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw


def _measure(hosts: int, rounds: int, repeat: int, now: int) -> dict[str, Any]:
    """(in the tree's own process) CPU seconds of each form and stage, best of ``repeat``."""
    from edgemon.collector.gc_policy import tune_gc

    data = _payloads(hosts, rounds, now)
    tune_gc()  # as the collector does (the payloads out of the collector's sight)
    out: dict[str, Any] = {"samples": data["samples"]}
    for form in ("inline", "based"):
        best: dict[str, float] = {}
        digest = ""
        for attempt in range(repeat):
            times, outcomes = _attempt(form, data[form], data["catalogues"], data["warm"], now)
            digest = digest or outcomes
            for stage, cpu in times.items():
                best[stage] = min(best.get(stage, float("inf")), cpu)
            del attempt
        out[form] = {"cpu_s": best, "outcomes": digest}
    return out


def _attempt(form: str, msgs: list[tuple[str, bytes]],
             catalogues: dict[tuple[str, str], bytes], warm: int, now: int
             ) -> tuple[dict[str, float], str]:
    """CPU seconds of the whole examiner and of each stage over ``msgs[warm:]``, and a digest
    of the outcomes."""
    import edgemon.protocol.schema as schema_module
    from edgemon.collector.ingest.examine import BatchHead, Examiner, series_hashes
    from edgemon.collector.ingest.screen import screen, series_keys
    from edgemon.protocol.base import last_values
    from edgemon.protocol.catalogue import decode_received
    from edgemon.protocol.codec import decompress
    from edgemon.protocol.fast_reader import read_fast
    from edgemon.protocol.schema import check_decoded

    def examiner() -> Examiner:
        ex = Examiner(future_tolerance_seconds=300, past_tolerance_days=7,
                      load=lambda host, ident: catalogues.get((host, ident)),
                      load_base=lambda *_: None, salt=SALT)
        for topic, payload in msgs[:warm]:
            ex.examine(topic, payload, now)
        return ex

    times: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.process_time()
        result = fn()
        times[stage] = time.process_time() - t0
        return result

    timed_msgs = msgs[warm:]
    ex = examiner()
    facts = timed("examine", lambda: [ex.examine(t, p, now) for t, p in timed_msgs])
    digest = hashlib.sha256()
    for f in facts:
        assert f.kind == "metrics", (f.kind, f.reason, f.detail)
        # the hashes as a set: their order follows a set's (per process)
        series = sorted(f.series[i:i + 8] for i in range(0, len(f.series), 8))
        digest.update(repr((f.kind, f.reason, f.payload, series, f.dropped,
                            f.head.seq, f.head.sample_count)).encode())
    # the stages, one by one over the same batches
    packed = timed("decompress", lambda: [decompress(p) for _t, p in timed_msgs])
    if form == "inline":
        raws = timed("read", lambda: list(map(read_fast, packed)))
    else:
        seen = examiner()

        def read_based() -> list[dict[str, Any]]:
            out = []
            for topic, payload in timed_msgs:
                host = topic.split("/")[2]
                raw = decode_received(
                    payload, lambda ident, h=host: seen.catalogues.get(h, ident),
                    lambda inst, seq, cat, h=host: seen.bases.lookup(h, inst, seq, cat))[0].raw
                out.append(raw)
                seen.bases.put(host, raw["instance"], raw["seq"], raw["metrics"])
            return out

        # resolve() ends with check_decoded: leave it out of "read"
        schema_module.check_decoded = _Unchecked  # type: ignore[assignment]
        try:
            raws = timed("read", read_based)
        finally:
            schema_module.check_decoded = check_decoded
    batches = timed("schema", lambda: list(map(check_decoded, raws)))
    timed("bases", lambda: [last_values(b.metrics) for b in batches])
    timed("screen", lambda: [screen(b) for b in batches])
    timed("hashes", lambda: [series_hashes(list(series_keys(b.metrics)), SALT)
                             for b in batches])
    timed("head", lambda: [BatchHead.of(b) for b in batches])
    return times, digest.hexdigest()


def _shim(root: Path, into: Path) -> Path:
    """A directory holding an ``edgemon`` package made of ``root``'s subpackages."""
    pkg = into / "edgemon"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for sub in ("agent", "collector", "protocol", "common"):
        (pkg / sub).symlink_to(root / sub)
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="best of, within a run")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=ROOT")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)  # now, ms
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.hosts, args.rounds, args.repeat, args.child)))
        return 0
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(HERE.parent)}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    now = int(time.time() * 1000)
    with tempfile.TemporaryDirectory(prefix="examine-cpu-") as tmp:
        paths = {name: _shim(Path(root).resolve(), Path(tmp) / name)
                 for name, root in trees.items()}
        for _ in range(args.runs):
            for name, path in paths.items():
                env = {**os.environ, "PYTHONPATH": str(path)}
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--child", str(now),
                     "--hosts", str(args.hosts), "--rounds", str(args.rounds),
                     "--repeat", str(args.repeat)],
                    env=env, capture_output=True, text=True, check=True)
                results[name].append(json.loads(done.stdout))
    first = next(iter(trees))
    samples = results[first][0]["samples"]
    summary: dict[str, Any] = {}
    for form in ("inline", "based"):
        digests = {name: {r[form]["outcomes"] for r in runs} for name, runs in results.items()}
        same = len(set().union(*digests.values())) == 1
        print(f"\n{form}: {args.hosts * args.rounds} batches, {samples} samples per run; "
              f"µs per sample (CPU), median of {args.runs} runs; outcomes identical in every "
              f"tree: {same}")
        columns = ["stage", *trees, *(f"{n} / {first}" for n in list(trees)[1:])]
        rows = []
        for stage in ("examine", *STAGES):
            row: dict[str, Any] = {"stage": stage}
            med = {}
            for name, runs in results.items():
                med[name] = statistics.median(r[form]["cpu_s"][stage] for r in runs) / samples
                row[name] = f"{med[name] * 1e6:.3f}"
                summary.setdefault(form, {}).setdefault(name, {})[stage] = med[name] * 1e6
            for name in list(trees)[1:]:
                row[f"{name} / {first}"] = f"{med[name] / med[first]:.2f}" if med[first] else "-"
            rows.append(row)
        from _common import table
        print(table(rows, columns))
        summary.setdefault("identical_outcomes", {})[form] = same
    from _common import write_result
    path = write_result("examine_cpu", {"hosts": args.hosts, "rounds": args.rounds,
                                        "runs": args.runs, "samples_per_run": samples,
                                        "trees": trees, "us_per_sample": summary,
                                        "load_average": os.getloadavg()})
    print(f"\nload average {os.getloadavg()}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
