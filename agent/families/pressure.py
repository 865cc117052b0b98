"""Pressure stall information family (Linux >= 4.20 with PSI on): ``/proc/pressure/*``.

Each of ``cpu``, ``memory``, ``io`` (and ``irq`` where the kernel has it) has a ``some`` line —
time in which at least one task was stalled on the resource — and, except for cpu on older
kernels, a ``full`` line — time in which all non-idle tasks were. We send the cumulative
``total=`` (microseconds) as counters in seconds, exact at scale 6, as node_exporter does
(``node_pressure_<resource>_waiting_seconds_total`` for some, ``_stalled_`` for full). The
10/60/300 s averages are left out: ``rate()`` of the counters gives any window.

On a kernel without PSI (``/proc/pressure`` missing, or ``psi=0``: reading fails with
EOPNOTSUPP) ``make`` raises ``Unavailable`` and the agent says so once at start.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgemon.agent.families._proc import ProcFile, read_text
from edgemon.agent.families._types import Collect, Reading, Unavailable
from edgemon.protocol.batch import COUNTER, MetricDef

WAITING = MetricDef("pressure_waiting_seconds_total", COUNTER, "seconds", 6, ("resource",))
STALLED = MetricDef("pressure_stalled_seconds_total", COUNTER, "seconds", 6, ("resource",))

ROOT = Path("/proc/pressure")
RESOURCES = ("cpu", "memory", "io", "irq")
_KINDS = {"some": WAITING, "full": STALLED}


def parse(resource: str, text: str) -> list[Reading]:
    """Readings of one ``/proc/pressure/<resource>`` file's text; malformed lines are skipped."""
    out: list[Reading] = []
    for line in text.splitlines():
        kind, _, fields = line.partition(" ")
        metric = _KINDS.get(kind)
        total = dict(f.partition("=")[::2] for f in fields.split()).get("total")
        if metric is not None and total is not None and total.isdigit():
            out.append((metric, (resource,), int(total) / 1_000_000))
    return out


def collect(root: Path = ROOT, resources: tuple[str, ...] = RESOURCES) -> list[Reading]:
    """Every resource file that reads; one that fails this cycle is skipped."""
    return _collect({r: lambda r=r: read_text(root / r) for r in resources})


def _collect(readers: dict[str, Callable[[], str]]) -> list[Reading]:
    out: list[Reading] = []
    for resource, read in readers.items():
        try:
            out += parse(resource, read())
        except OSError:
            continue
    return out


def make(root: Path = ROOT) -> Collect:
    """A collector of ``root``; ``Unavailable`` when the kernel offers no pressure file."""
    try:
        read_text(root / "cpu")
    except OSError as exc:
        raise Unavailable(f"no pressure stall information: {root / 'cpu'}: "
                          f"{exc.strerror or exc} (kernel < 4.20, or booted with psi=0)") from None
    present = tuple(r for r in RESOURCES if (root / r).exists())  # irq: Linux >= 6.1 only
    files = {r: ProcFile(root / r).text for r in present}  # kept open: read again each cycle
    return lambda: _collect(files)
