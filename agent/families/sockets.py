"""Socket family (Linux), cheaply from ``/proc/net``: sockets in use per protocol from
``/proc/net/sockstat`` and ``sockstat6`` (one short read each), and TCP connections by state
from ``/proc/net/tcp`` and ``tcp6`` (one line per socket, only the state column looked at;
``tcp_connections`` counts IPv4 and IPv6 together, as node_exporter's tcpstat collector does).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from edgemon.agent.families._types import Collect, Reading, Unavailable
from edgemon.protocol.batch import GAUGE, MetricDef

SOCKETS_USED = MetricDef("sockets_used", GAUGE, "")
IN_USE = MetricDef("sockets_in_use", GAUGE, "", 0, ("protocol",))
TIME_WAIT = MetricDef("tcp_time_wait_sockets", GAUGE, "")
CONNECTIONS = MetricDef("tcp_connections", GAUGE, "", 0, ("state",))

NET = Path("/proc/net")
TCP_STATES = {"01": "established", "02": "syn_sent", "03": "syn_recv", "04": "fin_wait1",
              "05": "fin_wait2", "06": "time_wait", "07": "close", "08": "close_wait",
              "09": "last_ack", "0A": "listen", "0B": "closing", "0C": "new_syn_recv"}
"""The kernel's ``TCP_*`` numbers (include/net/tcp_states.h), as in /proc/net/tcp's ``st``."""


def parse_sockstat(text: str, suffix: str = "") -> list[Reading]:
    """``sockets: used N`` and ``<PROTO>: inuse N ...`` lines (``suffix``: "6" for sockstat6)."""
    out: list[Reading] = []
    for line in text.splitlines():
        proto, _, rest = line.partition(":")
        fields = rest.split()
        pairs = dict(zip(fields[::2], fields[1::2], strict=False))
        if proto == "sockets" and pairs.get("used", "").isdigit():
            out.append((SOCKETS_USED, (), int(pairs["used"])))
        elif proto and pairs.get("inuse", "").isdigit():
            name = proto.lower().removesuffix("6") + suffix
            out.append((IN_USE, (name,), int(pairs["inuse"])))
            if proto == "TCP" and pairs.get("tw", "").isdigit():
                out.append((TIME_WAIT, (), int(pairs["tw"])))
    return out


def count_states(lines: bytes, counts: dict[str, int]) -> None:
    """Add the ``st`` column of one /proc/net/tcp content (header line skipped) to ``counts``."""
    for line in lines.splitlines()[1:]:
        fields = line.split(None, 4)
        if len(fields) >= 4:
            state = TCP_STATES.get(fields[3].decode("ascii", "replace").upper())
            if state is not None:
                counts[state] += 1


def collect(net: Path = NET) -> list[Reading]:
    """Sockets in use (IPv4 and, where present, IPv6) and TCP connections by state (all sent)."""
    out = parse_sockstat((net / "sockstat").read_text())
    with contextlib.suppress(OSError):  # no IPv6
        out += parse_sockstat((net / "sockstat6").read_text(), "6")
    counts = dict.fromkeys(TCP_STATES.values(), 0)
    for name in ("tcp", "tcp6"):
        try:
            count_states((net / name).read_bytes(), counts)
        except OSError:
            continue
    return out + [(CONNECTIONS, (state,), n) for state, n in counts.items()]


def make(net: Path = NET) -> Collect:
    """A collector of ``net``; ``Unavailable`` without ``/proc/net/sockstat`` (not Linux)."""
    if not (net / "sockstat").exists():
        raise Unavailable(f"no {net / 'sockstat'} (not Linux)")
    return lambda: collect(net)
