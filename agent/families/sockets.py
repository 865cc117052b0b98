"""Socket family (Linux), cheaply from ``/proc/net``: three short kernel-made summaries a cycle.

* ``/proc/net/sockstat`` and ``sockstat6``: sockets in use per protocol, TCP sockets in
  TIME_WAIT and orphaned (no longer attached to a process);
* ``/proc/net/snmp``: TCP connections now established (``CurrEstab``: ESTABLISHED and
  CLOSE_WAIT), and the TCP and UDP event counters operators alert on (connection attempts that
  failed, resets sent, retransmitted segments, UDP datagrams dropped for want of a receiver or
  of buffer space).

Counting every TCP state from ``/proc/net/tcp`` was measured and left out: the kernel walks every
socket to print it (11 ms a cycle with 220 sockets on the development machine, more CPU than all
other families together); node_exporter leaves its equivalent (tcpstat) off by default too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from edgemon.agent.families._proc import ProcFile, read_text
from edgemon.agent.families._types import Collect, Reading, Unavailable
from edgemon.protocol.batch import COUNTER, GAUGE, MetricDef

SOCKETS_USED = MetricDef("sockets_used", GAUGE, "")
IN_USE = MetricDef("sockets_in_use", GAUGE, "", 0, ("protocol",))
TIME_WAIT = MetricDef("tcp_time_wait_sockets", GAUGE, "")
ORPHANS = MetricDef("tcp_orphan_sockets", GAUGE, "")
ESTABLISHED = MetricDef("tcp_established_connections", GAUGE, "")
ACTIVE_OPENS = MetricDef("tcp_active_opens_total", COUNTER, "")
PASSIVE_OPENS = MetricDef("tcp_passive_opens_total", COUNTER, "")
ATTEMPT_FAILS = MetricDef("tcp_attempt_fails_total", COUNTER, "")
RESETS_SENT = MetricDef("tcp_resets_sent_total", COUNTER, "")
RETRANSMITS = MetricDef("tcp_retransmitted_segments_total", COUNTER, "")
TCP_IN_ERRORS = MetricDef("tcp_receive_errors_total", COUNTER, "errors")
UDP_NO_PORTS = MetricDef("udp_no_ports_total", COUNTER, "")
UDP_IN_ERRORS = MetricDef("udp_receive_errors_total", COUNTER, "errors")
UDP_BUFFER_ERRORS = MetricDef("udp_receive_buffer_errors_total", COUNTER, "errors")

NET = Path("/proc/net")
SNMP = {("Tcp", "CurrEstab"): ESTABLISHED, ("Tcp", "ActiveOpens"): ACTIVE_OPENS,
        ("Tcp", "PassiveOpens"): PASSIVE_OPENS, ("Tcp", "AttemptFails"): ATTEMPT_FAILS,
        ("Tcp", "OutRsts"): RESETS_SENT, ("Tcp", "RetransSegs"): RETRANSMITS,
        ("Tcp", "InErrs"): TCP_IN_ERRORS, ("Udp", "NoPorts"): UDP_NO_PORTS,
        ("Udp", "InErrors"): UDP_IN_ERRORS, ("Udp", "RcvbufErrors"): UDP_BUFFER_ERRORS}


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
            if proto == "TCP":
                for key, metric in (("tw", TIME_WAIT), ("orphan", ORPHANS)):
                    if pairs.get(key, "").isdigit():
                        out.append((metric, (), int(pairs[key])))
    return out


def parse_snmp(text: str) -> list[Reading]:
    """The ``SNMP`` fields of ``/proc/net/snmp``: pairs of header and value lines per protocol."""
    out: list[Reading] = []
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, names = header.partition(":")
        if values.partition(":")[0] != proto:
            continue
        for name, value in zip(names.split(), values.partition(":")[2].split(), strict=False):
            metric = SNMP.get((proto, name))
            if metric is not None and value.isdigit():  # MaxConn is -1: never one of ours
                out.append((metric, (), int(value)))
    return out


def collect(net: Path = NET) -> list[Reading]:
    """Sockets in use (IPv4 and, where present, IPv6) and the TCP/UDP figures of snmp."""
    return _collect(lambda name: read_text(net / name))


def _collect(read: Callable[[str], str]) -> list[Reading]:
    out = parse_sockstat(read("sockstat"))
    with contextlib.suppress(OSError):  # no IPv6
        out += parse_sockstat(read("sockstat6"), "6")
    with contextlib.suppress(OSError):
        out += parse_snmp(read("snmp"))
    return out


def make(net: Path = NET) -> Collect:
    """A collector of ``net``; ``Unavailable`` without ``/proc/net/sockstat`` (not Linux)."""
    if not (net / "sockstat").exists():
        raise Unavailable(f"no {net / 'sockstat'} (not Linux)")
    files = {name: ProcFile(net / name) for name in ("sockstat", "sockstat6", "snmp")}
    return lambda: _collect(lambda name: files[name].text())  # kept open, read again each cycle
