"""Rebuild a zstd dictionary for batches from a deterministic synthetic corpus.

    python protocol/dictionaries/train.py ID OUTPUT

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


def main() -> None:
    dict_id, output = int(sys.argv[1]), Path(sys.argv[2])
    rng = random.Random(dict_id)
    defs = _defs()
    corpus = [synthetic_batch(rng, defs) for _ in range(2000)]
    trained = zstandard.train_dictionary(SIZE, corpus, level=19, dict_id=dict_id, threads=1)
    output.write_bytes(trained.as_bytes())
    print(f"wrote {output}: id {trained.dict_id()}, {len(trained.as_bytes())} bytes")


if __name__ == "__main__":
    main()
