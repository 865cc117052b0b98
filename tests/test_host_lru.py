"""The host-bounded LRU behind the catalogue and base caches: the same entries, in the same
order, as a plain reference model of its two rules, over random puts and hits."""

from __future__ import annotations

import random

from edgemon.collector.ingest.host_lru import HostBoundedLRU


class Reference:
    """The rules spelled out: put makes an entry the newest; a host over its share loses its
    own oldest entries (never the new one); then everyone's oldest go while all are over."""

    def __init__(self, max_size: int, max_host_size: int) -> None:
        self.max_size, self.max_host_size = max_size, max_host_size
        self.entries: dict[tuple[str, str], tuple[int, int]] = {}

    def host_size(self, host: str) -> int:
        return sum(size for key, (_, size) in self.entries.items() if key[0] == host)

    def put(self, key: tuple[str, str], value: int, size: int) -> None:
        self.entries.pop(key, None)
        self.entries[key] = (value, size)
        for other in [k for k in self.entries if k[0] == key[0] and k != key]:
            if self.host_size(key[0]) <= self.max_host_size:
                break
            del self.entries[other]
        while sum(s for _, s in self.entries.values()) > self.max_size and len(self.entries) > 1:
            del self.entries[next(iter(self.entries))]

    def hit(self, key: tuple[str, str]) -> int | None:
        if key not in self.entries:
            return None
        self.entries[key] = self.entries.pop(key)
        return self.entries[key][0]


def test_the_lru_keeps_what_the_reference_keeps() -> None:
    rnd = random.Random(20261130)
    for _trial in range(200):
        lru: HostBoundedLRU[int] = HostBoundedLRU(rnd.randint(5, 60), rnd.randint(3, 30))
        ref = Reference(lru.max_size, lru.max_host_size)
        for step in range(200):
            key = (f"h{rnd.randint(0, 3)}", f"i{rnd.randint(0, 6)}")
            if rnd.random() < 0.3:
                assert lru.hit(key) == ref.hit(key)
            else:
                size = rnd.randint(1, 12)
                lru.put(key, step, size)
                ref.put(key, step, size)
            assert list(lru) == list(ref.entries)
            assert lru.size == sum(s for _, s in ref.entries.values())
    lru.clear()
    assert len(lru) == 0 and lru.size == 0


def test_a_host_over_its_share_pushes_out_only_its_own() -> None:
    lru: HostBoundedLRU[str] = HostBoundedLRU(max_size=100, max_host_size=10)
    lru.put(("quiet", "a"), "kept", 5)
    for n in range(50):
        lru.put(("noisy", str(n)), "x", 4)
    assert ("quiet", "a") in lru
    assert sum(1 for k in lru if k[0] == "noisy") == 2  # 8 of its 10
