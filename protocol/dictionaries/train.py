"""Rebuild a zstd dictionary for batches from a deterministic synthetic corpus.

    python protocol/dictionaries/train.py ID OUTPUT

ID 1: inline batches (and catalogues and referencing batches, SPEC.md §2, §9). ID 2: based
batches (SPEC.md §9.1), which carry only numbers: the corpus is random headers, timestamps and
values of the sizes such batches hold (zeros, small and large differences, common factors),
calibrated on the size distribution (not the values) of a busy host's based batches.

Dictionaries are part of the protocol: once published, an ID's bytes never change (frames name
the dictionary they need by ID). A new dictionary gets a new ID and is added beside the old ones.
The corpus covers the metric families of edgemon.agent with varied hosts (core counts, mounts,
devices, interfaces) and random values, so the dictionary learns names and structure, not data.
"""

from __future__ import annotations

import importlib
import random
import sys
from pathlib import Path

import msgpack
import zstandard

from edgemon.protocol import BatchBuilder, MetricDef

FAMILY_MODULES = ["cpu", "load", "memory", "disk", "diskio", "network", "system"]
SIZE = 16384


def _defs() -> list[MetricDef]:
    defs: list[MetricDef] = []
    for name in FAMILY_MODULES:
        mod = importlib.import_module(f"edgemon.agent.families.{name}")
        defs += [v for v in vars(mod).values() if isinstance(v, MetricDef)]
    return sorted(defs)


def _label_sets(rng: random.Random, keys: tuple[str, ...], ncpu: int, mounts: list[str],
                devs: list[str], ifaces: list[str]) -> list[tuple[str, ...]]:
    if "mode" in keys:
        return [("total", m) for m in ("user", "system", "iowait", "steal")]
    if "cpu" in keys:
        return [("total",)] + [(str(i),) for i in range(ncpu)]
    if "mount" in keys:
        fields = [{"mount": m, "device": f"/dev/{rng.choice(devs)}1",
                   "fstype": rng.choice(["ext4", "xfs", "btrfs", "vfat"])} for m in mounts]
        return [tuple(f[k] for k in keys) for f in fields]
    if "device" in keys:
        return [(d,) for d in devs]
    if "iface" in keys:
        return [(i,) for i in ifaces]
    return [()]


def synthetic_batch(rng: random.Random, defs: list[MetricDef]) -> bytes:
    ncpu = rng.choice([1, 2, 4, 8, 16, 32])
    mounts = rng.sample(["/", "/boot", "/home", "/var", "/data", "/srv", "/boot/efi"],
                        rng.randint(1, 4))
    devs = rng.sample(["sda", "sdb", "vda", "vdb", "nvme0n1", "nvme1n1", "mmcblk0", "dm-0", "md0",
                       "xvda"], rng.randint(1, 3))
    ifaces = rng.sample(["eth0", "eth1", "ens3", "ens160", "enp0s3", "wlan0", "eno1", "docker0",
                         "br0", "wg0", "bond0"], rng.randint(1, 4))
    t0 = rng.randrange(1_700_000_000_000, 1_900_000_000_000)
    builder = BatchBuilder()
    for cycle in range(6):
        for d in defs:
            for labels in _label_sets(rng, d.label_keys, ncpu, mounts, devs, ifaces):
                builder.add(t0 + cycle * 10_000, d, labels, rng.randrange(10 ** rng.randint(1, 12)))
    return msgpack.packb(builder.build(host=f"host-{rng.randrange(1000)}",
                                       instance=f"{rng.randrange(2**48):012x}",
                                       seq=rng.randrange(10**6), sent_ms=t0 + 60_000))


def synthetic_based_batch(rng: random.Random) -> bytes:
    """A based batch (SPEC.md §9.1) of random shape and numbers, no host's data: half the series
    all zeros, the others of 1 to 18 bits (a few larger), some sharing a factor."""
    n_series = rng.randint(40, 400)
    n_times = rng.choice([6, 6, 6, 6, 3, 12, 60])
    interval = rng.choice([10_000, 10_000, 10_000, 60_000, 15_000, 5_000, 1_000])
    t = [rng.randrange(1_700_000_000_000, 1_900_000_000_000)] + [
        interval + rng.randint(0, 80) for _ in range(n_times - 1)]
    values: list[int] = []
    factors: list[list[int]] = []
    for i in range(n_series):
        if rng.random() < 0.5:
            values += [0] * n_times
            continue
        bits = rng.randint(1, 18) if rng.random() < 0.97 else rng.randint(19, 40)
        series: list[int] = []
        for _ in range(n_times):
            if rng.random() < 0.1:
                series.append(0)
                continue
            b = max(1, bits - rng.randint(0, 3))
            v = rng.randrange(1 << (b - 1), 1 << b) if b > 1 else 1
            series.append(v if rng.random() < 0.5 else -v)
        values += series
        if rng.random() < 0.08:
            factors.append([i, rng.choice([4096, 512, 1024, 1000, 100, 10, 8, 16, 2])])
    seq = rng.randint(1, 100_000)
    batch = {"v": 1, "host": f"host-{rng.randrange(1000)}",
             "instance": f"{rng.randrange(2**48):012x}", "seq": seq,
             "sent": sum(t) + rng.randint(0, 900), "t": t,
             "catalogue": f"{rng.randrange(2**64):016x}",
             "base": [seq - 1, rng.randrange(16**15)], "bvalues": values}
    if rng.random() < 0.3:
        batch["sparse"] = [[rng.randrange(n_series),
                            [[rng.randrange(n_times), [rng.randint(-1000, 100_000)]]]]]
    if factors:
        batch["factors"] = factors
    return msgpack.packb(batch)


def main() -> None:
    dict_id, output = int(sys.argv[1]), Path(sys.argv[2])
    rng = random.Random(dict_id)
    if dict_id == 2:
        corpus = [synthetic_based_batch(rng) for _ in range(3000)]
    else:
        defs = _defs()
        corpus = [synthetic_batch(rng, defs) for _ in range(2000)]
    # ID 2 without the k/d search threads=1 runs (minutes on a busy machine, not better here)
    trained = (zstandard.train_dictionary(SIZE, corpus, level=19, dict_id=dict_id)
               if dict_id == 2 else
               zstandard.train_dictionary(SIZE, corpus, level=19, dict_id=dict_id, threads=1))
    output.write_bytes(trained.as_bytes())
    print(f"wrote {output}: id {trained.dict_id()}, {len(trained.as_bytes())} bytes")


if __name__ == "__main__":
    main()
