"""Metric families: recorded psutil values through fakes, then every family against real psutil."""

from __future__ import annotations

import errno
import math
import re
import subprocess
import warnings
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from edgemon.agent.families import (
    DEFAULT_FAMILIES,
    FAMILIES,
    Unavailable,
    cpu,
    cpu_seconds,
    disk,
    diskio,
    filefd,
    kernel,
    load,
    memory,
    network,
    pressure,
    processes,
    sensors,
    sockets,
    start,
    system,
    top_processes,
)
from edgemon.agent.families._meminfo import MemInfo
from edgemon.agent.families._proc import ProcFile
from edgemon.agent.families._procstat import ProcStat
from edgemon.agent.families._types import Reading
from edgemon.protocol.batch import (
    COUNTER,
    GAUGE,
    BatchBuilder,
    MetricDef,
    expand_samples,
    to_scaled,
)
from edgemon.protocol.names import is_name
from tests.support.waiting import wait_until

# Same fields as psutil's Linux namedtuples (psutil._ntuples is private, moves between versions).
scputimes = namedtuple("scputimes", "user nice system idle iowait irq softirq steal guest "
                                    "guest_nice")
svmem = namedtuple("svmem", "total available percent used free active inactive buffers cached "
                            "shared slab")
sswap = namedtuple("sswap", "total used free percent sin sout")
sdiskpart = namedtuple("sdiskpart", "device mountpoint fstype opts")
sdiskusage = namedtuple("sdiskusage", "total used free percent")
sdiskio = namedtuple("sdiskio", "read_count write_count read_bytes write_bytes read_time "
                                "write_time read_merged_count write_merged_count busy_time")
snetio = namedtuple("snetio", "bytes_sent bytes_recv packets_sent packets_recv errin errout "
                              "dropin dropout")
statvfs_result = namedtuple("statvfs_result", "f_files f_ffree")

NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def cputimes(**fields: float) -> scputimes:
    return scputimes(**{f: float(fields.get(f, 0)) for f in scputimes._fields})


def by_name(readings: list[Reading]) -> dict[tuple[str, tuple[str, ...]], float | int]:
    out = {(m.name, labels): value for m, labels, value in readings}
    assert len(out) == len(readings), "duplicate series"
    return out


# --- cpu ---------------------------------------------------------------------------------------

class FakeCpu:
    """Hands out recorded (total, per-CPU) cpu_times, one pair per cycle."""

    def __init__(self, cycles: list[tuple[Any, list[Any]]], count: int | None = 2) -> None:
        self.cycles: Iterator[tuple[Any, list[Any]]] = iter(cycles)
        self.count = count
        self.pending: list[Any] | None = None

    def cpu_times(self, percpu: bool = False) -> Any:
        if not percpu:
            total, self.pending = next(self.cycles)
            return total
        assert self.pending is not None
        return self.pending

    def cpu_count(self, logical: bool = True) -> int | None:
        return self.count


T0 = cputimes(user=100, system=50, idle=800, iowait=10, steal=5, guest=0)
# +30 user (of which 10 guest), +10 system, +50 idle, +5 iowait, +5 steal: 100 s not counting guest
T1 = cputimes(user=130, system=60, idle=850, iowait=15, steal=10, guest=10)
C0 = [cputimes(user=10, idle=10), cputimes(user=10, idle=10)]
C1 = [cputimes(user=11, idle=13), cputimes(user=11, idle=12)]  # 25 % and 33.33 % busy


def test_cpu_first_call_is_baseline_then_percent_from_deltas() -> None:
    collect = cpu.make(FakeCpu([(T0, C0), (T1, C1)]))
    assert collect() == [(cpu.COUNT, (), 2)]
    assert collect() == [
        (cpu.COUNT, (), 2),
        (cpu.USAGE, ("total",), 45.0),  # busy = 100 - 50 idle - 5 iowait
        (cpu.MODE, ("total", "user"), 30.0),
        (cpu.MODE, ("total", "system"), 10.0),
        (cpu.MODE, ("total", "iowait"), 5.0),
        (cpu.MODE, ("total", "steal"), 5.0),
        (cpu.USAGE, ("0",), 25.0),
        (cpu.USAGE, ("1",), 33.33),
    ]


def test_cpu_modes_are_the_platforms_and_for_the_total_only() -> None:
    mac = namedtuple("scputimes", "user nice system idle")  # macOS: no iowait, no steal
    before, after = mac(1.0, 0.0, 1.0, 8.0), mac(3.0, 0.0, 2.0, 15.0)
    collect = cpu.make(FakeCpu([(before, [before]), (after, [after])], count=1))
    collect()
    assert by_name(collect()) == {
        ("cpu_count", ()): 1,
        ("cpu_usage_percent", ("total",)): 30.0, ("cpu_usage_percent", ("0",)): 30.0,
        ("cpu_mode_percent", ("total", "user")): 20.0,
        ("cpu_mode_percent", ("total", "system")): 10.0,
    }


def test_cpu_skips_when_no_time_passed_or_cpus_changed() -> None:
    collect = cpu.make(FakeCpu([(T0, C0), (T0, C0), (T1, C1[:1])], count=None))
    assert collect() == []  # cpu_count() is None: no count
    assert collect() == []  # no tick elapsed: no percentages
    assert collect() == [  # one CPU went away: total only
        (cpu.USAGE, ("total",), 45.0),
        (cpu.MODE, ("total", "user"), 30.0),
        (cpu.MODE, ("total", "system"), 10.0),
        (cpu.MODE, ("total", "iowait"), 5.0),
        (cpu.MODE, ("total", "steal"), 5.0),
    ]


# --- load, memory, system ----------------------------------------------------------------------

def test_load() -> None:
    source = SimpleNamespace(getloadavg=lambda: (0.5, 0.25, 1.75))
    assert load.make(source)() == [(load.LOAD1, (), 0.5), (load.LOAD5, (), 0.25),
                                   (load.LOAD15, (), 1.75)]


def test_memory_linux() -> None:
    source = SimpleNamespace(
        virtual_memory=lambda: svmem(1000, 250, 75.0, 600, 150, 0, 0, 50, 200, 0, 0),
        swap_memory=lambda: sswap(400, 100, 300, 25.0, 4096, 8192),
    )
    assert by_name(memory.collect(source)) == {
        ("memory_total_bytes", ()): 1000, ("memory_available_bytes", ()): 250,
        ("memory_used_bytes", ()): 600, ("memory_free_bytes", ()): 150,
        ("memory_cached_bytes", ()): 200, ("memory_buffers_bytes", ()): 50,
        ("memory_usage_percent", ()): 75.0,
        ("swap_total_bytes", ()): 400, ("swap_used_bytes", ()): 100,
        ("swap_free_bytes", ()): 300, ("swap_in_bytes_total", ()): 4096,
        ("swap_out_bytes_total", ()): 8192,
    }
    assert memory.SWAP_IN.kind == COUNTER and memory.TOTAL.kind == GAUGE


def test_memory_without_cached_and_buffers() -> None:
    win = namedtuple("svmem", "total available percent used free")
    source = SimpleNamespace(virtual_memory=lambda: win(3000, 1000, 66.7, 2000, 1000),
                             swap_memory=lambda: sswap(0, 0, 0, 0.0, 0, 0))
    names = by_name(memory.make(source)())
    assert ("memory_cached_bytes", ()) not in names
    assert ("memory_buffers_bytes", ()) not in names
    assert names[("memory_usage_percent", ())] == 66.67


def test_system() -> None:
    source = SimpleNamespace(boot_time=lambda: 1_700_000_000.4)
    readings = system.make(source, clock=lambda: 1_700_000_100.6)()
    assert readings == [(system.BOOT_TIME, (), 1_700_000_000), (system.UPTIME, (), 100)]
    assert all(type(v) is int for _, _, v in readings)
    assert system.collect(source, clock=lambda: 0.0)[1] == (system.UPTIME, (), 0)  # clock behind


# --- disk --------------------------------------------------------------------------------------

class FakeDisks:
    def __init__(self, real: list[Any], every: list[Any] | None = None,
                 errors: dict[str, OSError] | None = None) -> None:
        self.real, self.every, self.errors = real, every, errors or {}
        self.listed = 0

    def disk_partitions(self, all: bool = False) -> list[Any]:
        self.listed += 1
        if all:
            assert self.every is not None, "all=True read although / was already there"
            return self.every
        return self.real

    def disk_usage(self, path: str) -> Any:
        if path in self.errors:
            raise self.errors[path]
        return sdiskusage(1000, 300, 600, 33.3)  # 100 reserved for root


def fake_statvfs(path: str) -> statvfs_result:
    return statvfs_result(0, 0) if path == "/home" else statvfs_result(500, 200)


def test_disk_skips_pseudo_duplicates_and_erroring_mounts() -> None:
    source = FakeDisks(
        [sdiskpart("/dev/sda1", "/", "ext4", "rw"),
         sdiskpart("/dev/sda2", "/mnt/bind", "btrfs", "rw"),  # same device, longer path
         sdiskpart("/dev/sda2", "/home", "btrfs", "rw"),
         sdiskpart("/dev/loop0", "/snap/core/1", "squashfs", "ro"),
         sdiskpart("tmpfs", "/run", "tmpfs", "rw"),
         sdiskpart("nas:/export", "/mnt/nas", "nfs4", "rw"),
         sdiskpart("/dev/sdb1", "/secret", "ext4", "rw")],
        errors={"/mnt/nas": OSError(errno.ESTALE, "Stale file handle"),
                "/secret": PermissionError(errno.EACCES, "Permission denied")},
    )
    root, home = ("/", "/dev/sda1", "ext4"), ("/home", "/dev/sda2", "btrfs")
    assert disk.make(source, statvfs=fake_statvfs)() == [
        (disk.TOTAL, root, 1000), (disk.USED, root, 300), (disk.FREE, root, 600),
        (disk.USAGE, root, 33.33), (disk.INODES, root, 500), (disk.INODES_USED, root, 300),
        (disk.TOTAL, home, 1000), (disk.USED, home, 300), (disk.FREE, home, 600),
        (disk.USAGE, home, 33.33),  # f_files == 0: no inode metrics
    ]


def test_disk_keeps_overlay_root_and_works_without_statvfs() -> None:
    data = sdiskpart("/dev/vdb", "/data", "ext4", "rw")
    source = FakeDisks([data], every=[
        sdiskpart("overlay", "/", "overlay", "rw"), sdiskpart("tmpfs", "/dev", "tmpfs", "rw"),
        data, sdiskpart("overlay", "/var/lib/x", "overlay", "rw")])
    assert [(p.mountpoint, p.fstype) for p in disk.mounts(source)] == [("/", "overlay"),
                                                                       ("/data", "ext4")]
    assert {m.name for m, _, _ in disk.collect(source, statvfs=None)} == {
        "disk_total_bytes", "disk_used_bytes", "disk_free_bytes", "disk_usage_percent"}


def test_disk_lists_mounts_again_only_when_the_mount_table_changed() -> None:
    source = FakeDisks([sdiskpart("/dev/sda1", "/", "ext4", "rw")])
    changes = iter([False, False, True, False])
    collect = disk.make(source, statvfs=None, changed=lambda: next(changes))
    seen = [{labels[0] for _m, labels, _v in collect()}]
    source.real = [*source.real, sdiskpart("/dev/sdb1", "/data", "ext4", "rw")]  # mounted
    seen += [{labels[0] for _m, labels, _v in collect()} for _ in range(3)]
    assert seen == [{"/"}, {"/"}, {"/", "/data"}, {"/", "/data"}]  # listed once it is flagged
    assert source.listed == 2  # at the first cycle and after the change only
    assert disk.make(source, statvfs=None)() and source.listed == 3  # a fake: every cycle


def test_mount_watch_sees_a_real_mount_and_unmount(tmp_path: Path) -> None:
    watch = disk.MountWatch()
    assert not watch()  # nothing changed since it was opened (in this test, at least)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "edgemon-test", str(tmp_path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        assert watch() and not watch()  # flagged once, cleared by the look
    finally:
        subprocess.run(["umount", str(tmp_path)], check=True)
    assert watch()
    assert disk.MountWatch(str(tmp_path / "missing"))()  # cannot watch: always "changed"


# --- diskio ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "partition"), [
    ("sda1", True), ("sda12", True), ("nvme0n1p1", True), ("mmcblk0p2", True),
    ("sda", False), ("nvme0n1", False), ("nvme0n10", False), ("dm-1", False), ("md127", False),
    ("xvdb1", False),  # its whole disk is not listed: kept
])
def test_is_partition(name: str, partition: bool) -> None:
    devices = {"sda", "sda1", "sda12", "nvme0n1", "nvme0n1p1", "nvme0n10", "mmcblk0",
               "mmcblk0p2", "dm-0", "dm-1", "md127", "xvdb1"}
    assert diskio.is_partition(name, devices) is partition


def test_diskio_whole_disks_only() -> None:
    def io(n: int) -> sdiskio:
        return sdiskio(n, 2 * n, 512 * n, 1024 * n, 1500 * n, 250 * n, 0, 0, 7 * n)

    disks = {"sda": io(1), "sda1": io(2), "loop0": io(3), "ram0": io(4), "zram0": io(5),
             "dm-0": io(6)}
    source = SimpleNamespace(disk_io_counters=lambda perdisk: disks if perdisk else None)
    readings = diskio.make(source)()
    assert sorted({labels[0] for _, labels, _ in readings}) == ["dm-0", "sda"]
    assert [(m, v) for m, labels, v in readings if labels == ("sda",)] == [
        (diskio.READ_BYTES, 512), (diskio.WRITTEN_BYTES, 1024), (diskio.READS, 1),
        (diskio.WRITES, 2), (diskio.READ_TIME, 1.5), (diskio.WRITE_TIME, 0.25),
        (diskio.BUSY_TIME, 0.007)]
    assert to_scaled(0.007, diskio.BUSY_TIME.scale) == 7  # whole ms on the wire


def test_diskio_without_busy_time_or_disks() -> None:
    mac = namedtuple("sdiskio", "read_count write_count read_bytes write_bytes read_time "
                                "write_time")
    source = SimpleNamespace(disk_io_counters=lambda perdisk: {"disk0": mac(1, 2, 3, 4, 5, 6)})
    assert "diskio_busy_time_seconds_total" not in {m.name for m, _, _ in diskio.collect(source)}
    assert diskio.collect(SimpleNamespace(disk_io_counters=lambda perdisk: {})) == []


# --- network -----------------------------------------------------------------------------------

def test_network_skips_loopback() -> None:
    nics = {"lo": snetio(9, 9, 9, 9, 9, 9, 9, 9), "eth0": snetio(1, 2, 3, 4, 5, 6, 7, 8)}
    source = SimpleNamespace(net_io_counters=lambda pernic: nics if pernic else None)
    assert network.make(source)() == [
        (network.RECV_BYTES, ("eth0",), 2), (network.SENT_BYTES, ("eth0",), 1),
        (network.RECV_PACKETS, ("eth0",), 4), (network.SENT_PACKETS, ("eth0",), 3),
        (network.RECV_ERRORS, ("eth0",), 5), (network.SENT_ERRORS, ("eth0",), 6),
        (network.RECV_DROPS, ("eth0",), 7), (network.SENT_DROPS, ("eth0",), 8)]


# --- cpu_seconds -------------------------------------------------------------------------------

def test_cpu_seconds_are_raw_counters_per_cpu_and_mode() -> None:
    each = [cputimes(user=100.123, nice=1, system=50, idle=800, iowait=10, irq=2, softirq=3,
                     steal=4, guest=7), cputimes(user=5, idle=6)]
    source = SimpleNamespace(cpu_times=lambda percpu=False: each if percpu else None)
    got = by_name(cpu_seconds.collect(source))
    assert len(got) == 16  # 2 CPUs x 8 modes; guest is inside user already: not sent
    assert got[("cpu_seconds_total", ("0", "user"))] == 100.12
    assert got[("cpu_seconds_total", ("0", "steal"))] == 4
    assert got[("cpu_seconds_total", ("1", "idle"))] == 6
    assert ("cpu_seconds_total", ("0", "guest")) not in got
    mac = namedtuple("scputimes", "user nice system idle")  # a platform with fewer modes
    source = SimpleNamespace(cpu_times=lambda percpu=False: [mac(1.0, 2.0, 3.0, 4.0)])
    assert {labels[1] for _, labels, _ in cpu_seconds.collect(source)} == {
        "user", "nice", "system", "idle"}


# --- kernel ------------------------------------------------------------------------------------

def test_kernel_counters(tmp_path: Path) -> None:
    scpustats = namedtuple("scpustats", "ctx_switches interrupts soft_interrupts syscalls")
    source = SimpleNamespace(cpu_stats=lambda: scpustats(1000, 200, 30, 0))
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3 4\nctxt 1000\nbtime 1795000000\nprocesses 4321\n"
                    "procs_running 2\n")
    assert kernel.collect(source, stat) == [
        (kernel.CONTEXT_SWITCHES, (), 1000), (kernel.INTERRUPTS, (), 200),
        (kernel.SOFT_INTERRUPTS, (), 30), (kernel.FORKS, (), 4321)]
    assert kernel.forks(tmp_path / "missing") is None  # not Linux: no forks counter
    stat.write_text("processes lots\n")
    assert kernel.collect(source, stat)[-1][0] is kernel.SOFT_INTERRUPTS


# --- pressure ----------------------------------------------------------------------------------

def test_pressure_totals_in_seconds(tmp_path: Path) -> None:
    (tmp_path / "cpu").write_text("some avg10=1.00 avg60=0.50 avg300=0.10 total=247723007\n"
                                  "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    (tmp_path / "memory").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=15\n"
                                     "full avg10=0.00 avg60=0.00 avg300=0.00 total=12\n")
    (tmp_path / "io").write_text("some total=x\nbogus\n")  # malformed lines are skipped
    got = by_name(pressure.make(tmp_path)())
    assert got == {("pressure_waiting_seconds_total", ("cpu",)): 247.723007,
                   ("pressure_stalled_seconds_total", ("cpu",)): 0.0,
                   ("pressure_waiting_seconds_total", ("memory",)): 0.000015,
                   ("pressure_stalled_seconds_total", ("memory",)): 0.000012}
    assert to_scaled(got[("pressure_waiting_seconds_total", ("cpu",))], 6) == 247723007  # exact
    with pytest.raises(Unavailable, match="no pressure stall information"):
        pressure.make(tmp_path / "absent")


# --- filefd ------------------------------------------------------------------------------------

def test_filefd(tmp_path: Path) -> None:
    path = tmp_path / "file-nr"
    path.write_text("2432\t0\t9223372036854775807\n")
    assert filefd.make(path)() == [(filefd.ALLOCATED, (), 2432),
                                   (filefd.MAXIMUM, (), 9223372036854775807)]
    assert filefd.parse("1 2\n") == [] and filefd.parse("a 0 3") == []
    with pytest.raises(Unavailable):
        filefd.make(tmp_path / "absent")


# --- processes and top_processes ---------------------------------------------------------------

def _stat(pid: int, comm: str, state: str, threads: int = 1, ticks: tuple[int, int] = (0, 0),
          pages: int = 10) -> str:
    # fields after the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice num_threads itrealvalue starttime vsize rss
    return (f"{pid} ({comm}) {state} 1 1 1 0 -1 0 0 0 0 0 {ticks[0]} {ticks[1]} 0 0 20 0 "
            f"{threads} 0 100 1000 {pages} 0 0\n")


def fake_proc(root: Path, stats: dict[int, str]) -> Path:
    (root / "self").mkdir(parents=True, exist_ok=True)
    (root / "self" / "stat").write_text(_stat(1, "me", "R"))
    for pid, text in stats.items():
        (root / str(pid)).mkdir(exist_ok=True)
        (root / str(pid) / "stat").write_text(text)
    return root


def test_processes_by_state(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {
        1: _stat(1, "init", "S", 1), 2: _stat(2, "a (weird) name", "R", 4),
        3: _stat(3, "zz", "Z"), 4: _stat(4, "k", "I"), 5: _stat(5, "d", "D", 2),
        6: "6 (truncated) S 1\n", 7: _stat(7, "x", "?")})
    (proc / "8").mkdir()  # a process that exited between listing and reading: no stat
    got = by_name(processes.make(proc)())
    assert got == {("processes", ("running",)): 1, ("processes", ("sleeping",)): 1,
                   ("processes", ("disk_sleep",)): 1, ("processes", ("zombie",)): 1,
                   ("processes", ("stopped",)): 0, ("processes", ("idle",)): 1,
                   ("processes", ("other",)): 1, ("processes_threads", ()): 10}
    with pytest.raises(Unavailable):
        processes.make(tmp_path / "nothing")


def test_top_processes_by_cpu_and_memory(tmp_path: Path) -> None:
    now = [100.0]
    stats = {pid: _stat(pid, f"p{pid}", "S", ticks=(pid * 10, 0), pages=pid) for pid in range(1, 9)}
    proc = fake_proc(tmp_path / "proc", stats)
    collect = top_processes.make(proc, clock=lambda: now[0], cpus=2)
    first = collect()  # memory only: CPU needs a previous cycle
    page = top_processes.PAGE
    assert first == [(top_processes.RESIDENT, (str(p), f"p{p}"), p * page)
                     for p in (8, 7, 6, 5, 4)]
    now[0] += 10  # 10 s later: pid 2 used 5 s of CPU (25 % of 2 CPUs), pid 3 1 s, others none
    ticks = top_processes.TICKS
    fake_proc(proc, {2: _stat(2, "p2", "R", ticks=(20 + 5 * ticks, 0), pages=2),
                     3: _stat(3, "p3", "S", ticks=(30, ticks), pages=3)})
    cpu_readings = [r for r in collect() if r[0] is top_processes.CPU]
    assert cpu_readings[:2] == [(top_processes.CPU, ("2", "p2"), 25.0),
                                (top_processes.CPU, ("3", "p3"), 5.0)]
    assert len(cpu_readings) == top_processes.TOP


# --- sockets -----------------------------------------------------------------------------------

SOCKSTAT = """sockets: used 187
TCP: inuse 5 orphan 0 tw 3 alloc 7 mem 1
UDP: inuse 2 mem 2
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
"""
SNMP = """Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 3038 2497 459 18 12 164251 150454 165 2 605 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors
Udp: 173 60016 3 60190 4 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors
UdpLite: 0 0 0 0 0 0 0
"""  # noqa: E501 (the kernel's line)


def test_sockets(tmp_path: Path) -> None:
    (tmp_path / "sockstat").write_text(SOCKSTAT)
    (tmp_path / "sockstat6").write_text("TCP6: inuse 1\nUDP6: inuse 4\nRAW6: inuse 0\n")
    (tmp_path / "snmp").write_text(SNMP)
    got = by_name(sockets.make(tmp_path)())
    assert got[("sockets_used", ())] == 187
    assert got[("sockets_in_use", ("tcp",))] == 5 and got[("sockets_in_use", ("udp6",))] == 4
    assert got[("sockets_in_use", ("frag",))] == 0 and got[("tcp_time_wait_sockets", ())] == 3
    assert got[("tcp_orphan_sockets", ())] == 0
    assert {k: v for k, v in got.items() if k[0].startswith(("tcp_", "udp_"))} == {
        ("tcp_time_wait_sockets", ()): 3, ("tcp_orphan_sockets", ()): 0,
        ("tcp_established_connections", ()): 12, ("tcp_active_opens_total", ()): 3038,
        ("tcp_passive_opens_total", ()): 2497, ("tcp_attempt_fails_total", ()): 459,
        ("tcp_resets_sent_total", ()): 605, ("tcp_retransmitted_segments_total", ()): 165,
        ("tcp_receive_errors_total", ()): 2, ("udp_no_ports_total", ()): 60016,
        ("udp_receive_errors_total", ()): 3, ("udp_receive_buffer_errors_total", ()): 4}
    (tmp_path / "sockstat6").unlink()
    (tmp_path / "snmp").unlink()  # no IPv6, no snmp: the rest still reads
    assert set(by_name(sockets.collect(tmp_path))) == {
        ("sockets_used", ()), ("tcp_time_wait_sockets", ()), ("tcp_orphan_sockets", ())} | {
        ("sockets_in_use", (p,)) for p in ("tcp", "udp", "udplite", "raw", "frag")}
    with pytest.raises(Unavailable):
        sockets.make(tmp_path / "absent")


# --- sensors -----------------------------------------------------------------------------------

shwtemp = namedtuple("shwtemp", "label current high critical")
sfan = namedtuple("sfan", "label current")
sbattery = namedtuple("sbattery", "percent secsleft power_plugged")


def test_sensors_where_present() -> None:
    source = SimpleNamespace(
        sensors_temperatures=lambda: {"coretemp": [shwtemp("Core 0", 45.25, 80, 100),
                                                   shwtemp("", 47.0, None, None),
                                                   shwtemp("", float("nan"), None, None)],
                                      "acpitz": [shwtemp("", -3.04, None, None)]},
        sensors_fans=lambda: {"thinkpad": [sfan("", 2500)]},
        sensors_battery=lambda: sbattery(87.5, 3600, False))
    assert by_name(sensors.collect(source)) == {
        ("sensor_temperature_celsius", ("acpitz", "0")): -3.0,
        ("sensor_temperature_celsius", ("coretemp", "Core 0")): 45.2,
        ("sensor_temperature_celsius", ("coretemp", "1")): 47.0,
        ("sensor_fan_rpm", ("thinkpad", "0")): 2500,
        ("battery_charge_percent", ()): 87.5, ("battery_power_plugged", ()): 0,
        ("battery_time_left_seconds", ()): 3600}
    plugged = SimpleNamespace(sensors_temperatures=lambda: {}, sensors_fans=lambda: {},
                              sensors_battery=lambda: sbattery(100, -2, True))  # unlimited
    assert sensors.collect(plugged) == [(sensors.BATTERY_CHARGE, (), 100),
                                        (sensors.BATTERY_PLUGGED, (), 1)]
    assert sensors.collect(SimpleNamespace()) == []  # a platform without any sensor function
    with pytest.raises(Unavailable, match="no temperature, fan or battery sensor"):
        sensors.make(SimpleNamespace(sensors_temperatures=lambda: {}, sensors_battery=lambda: None))
    assert sensors.make(plugged)() == sensors.collect(plugged)


# --- /proc/stat, shared ------------------------------------------------------------------------

PROC_STAT = """cpu  219411 342 19139 45123 731 0 1076 348 0 0
cpu0 109700 213 9490 22561 367 0 356 172 0 0
cpu1 109711 129 9649 22562 364 0 720 176 0 0
intr 2780633 9 0 0 0 0 0 0 0 0 0 0 0 0 15 0 0 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 7046101
btime 1796040518
processes 37290
procs_running 3
procs_blocked 0
softirq 4562034 0 1408395 2 165443 0 0 1066 1604466 0 1382662
"""


def test_proc_stat_answers_as_psutil_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "stat").write_text(PROC_STAT)
    stat = ProcStat(tmp_path / "stat")
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path))  # psutil reads the same file
    if len(psutil.cpu_times()) != 10:
        pytest.skip("psutil's cpu_times fields differ on this kernel")
    for mine, theirs in ((stat.cpu_times(), psutil.cpu_times()),
                         *zip(stat.cpu_times(percpu=True), psutil.cpu_times(percpu=True),
                              strict=True),
                         (stat.cpu_stats(), psutil.cpu_stats())):
        assert (mine._fields, tuple(mine)) == (theirs._fields, tuple(theirs))
    assert stat.boot_time() == psutil.boot_time() == 1796040518.0
    assert stat.forks() == 37290
    assert kernel.collect(stat, tmp_path / "missing")[-1] == (kernel.FORKS, (), 37290)
    assert len(cpu_seconds.collect(stat)) == 16 and system.collect(stat)[0][2] == 1796040518


def test_proc_stat_is_read_once_per_cycle(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    path.write_text(PROC_STAT)
    stat = ProcStat(path)
    with stat.cycle():
        before = stat.cpu_times()
        path.write_text(PROC_STAT.replace("cpu  219411", "cpu  219511"))
        assert stat.cpu_times() == before and stat.cpu_stats().ctx_switches == 7046101
    assert stat.cpu_times().user == before.user + 1  # outside a cycle: read every time
    with stat.cycle():
        assert stat.cpu_times().user == before.user + 1  # a new cycle reads it again


MEMINFO = """MemTotal:       24731708 kB
MemFree:        11640720 kB
MemAvailable:   18525956 kB
Buffers:          172940 kB
Cached:          7110648 kB
SwapCached:            0 kB
Active:          2419640 kB
Inactive:        9950020 kB
SwapTotal:       2097148 kB
SwapFree:        1048572 kB
Shmem:            534740 kB
KReclaimable:     474424 kB
Slab:             534664 kB
SReclaimable:     474424 kB
HugePages_Total:       0
"""


@pytest.mark.parametrize("meminfo", [
    MEMINFO,
    MEMINFO.replace("MemAvailable:   18525956", "MemAvailable:   99999999"),  # > total: free
    MEMINFO.replace("MemAvailable:   18525956 kB\n", ""),  # an old kernel: psutil's estimate
    MEMINFO.replace("SwapFree:        1048572 kB\n", ""),  # psutil asks sysinfo() instead
])
def test_meminfo_answers_as_psutil_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        meminfo: str) -> None:
    (tmp_path / "meminfo").write_text(meminfo)
    (tmp_path / "vmstat").write_text("nr_free_pages 1\npswpin 25\npswpout 7\nother 3\n")
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path))  # psutil reads the same files
    mem = MemInfo(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # psutil's, on the degraded files
        for mine, theirs in ((mem.virtual_memory(), psutil.virtual_memory()),
                             (mem.swap_memory(), psutil.swap_memory())):
            assert (mine._fields, tuple(mine)) == (theirs._fields, tuple(theirs))
    assert mem.swap_memory().sin == 25 * 4096
    assert by_name(memory.make(mem)())[("memory_available_bytes", ())] == \
        psutil.virtual_memory().available


def test_meminfo_is_read_once_per_cycle(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "vmstat").write_text("pswpin 25\npswpout 7\n")
    mem = MemInfo(tmp_path)
    with mem.cycle():
        free = mem.virtual_memory().free
        (tmp_path / "meminfo").write_text(MEMINFO.replace("11640720", "11640721"))
        assert mem.virtual_memory().free == free  # the same read, within a cycle
    assert mem.virtual_memory().free == free + 1024  # outside one: read again


# --- kept-open kernel files ---------------------------------------------------------------------

def test_a_kept_open_file_reads_afresh_every_time(tmp_path: Path) -> None:
    uptime = ProcFile("/proc/uptime")  # the kernel makes it again on every read at offset 0
    first = uptime.read()
    wait_until(lambda: uptime.read() != first, 5, "/proc/uptime to move on a kept-open file")
    assert uptime.text().count(" ") == 1

    path = tmp_path / "file"
    missing = ProcFile(path)
    with pytest.raises(FileNotFoundError):
        missing.read()
    path.write_bytes(b"x" * 70_000)  # more than one pread's worth
    assert missing.read() == b"x" * 70_000  # opened at the next read
    path.write_bytes(b"short\n")
    assert missing.text() == "short\n"  # read from the start again, no stale tail
    missing.close()


# --- registry and real psutil ------------------------------------------------------------------

def all_defs() -> list[MetricDef]:
    modules = (cpu, load, memory, disk, diskio, network, system, cpu_seconds, kernel, pressure,
               sensors, sockets, filefd, processes, top_processes)
    return [v for mod in modules for v in vars(mod).values() if isinstance(v, MetricDef)]


def test_registry_and_metric_names() -> None:
    assert list(FAMILIES) == ["cpu", "load", "memory", "disk", "diskio", "network", "system",
                              "cpu_seconds", "kernel", "pressure", "sensors", "sockets", "filefd",
                              "processes", "top_processes"]
    assert [n for n in FAMILIES if n not in DEFAULT_FAMILIES] == ["top_processes"]
    defs = all_defs()
    assert len({d.name for d in defs}) == len(defs) == 73
    for d in defs:
        assert NAME.match(d.name) and all(NAME.match(k) for k in d.label_keys), d
        assert is_name(d.name) and all(is_name(k) for k in d.label_keys), d  # protocol rules
        assert not d.name.startswith(("__", "edgemon_", "agent_")), d  # reserved (SPEC §8)
        assert len(d.label_keys) == len(set(d.label_keys)) <= 16, d
        assert d.kind in (GAUGE, COUNTER), d
        assert d.name.endswith("_total") == (d.kind == COUNTER), d
        assert d.unit != "percent" or (d.name.endswith("_percent") and d.scale == 2), d


def check_well_formed(readings: list[Reading]) -> None:
    by_name(readings)  # no duplicate series
    for metric, labels, value in readings:
        assert NAME.match(metric.name), metric
        assert len(labels) == len(metric.label_keys) and all(isinstance(v, str) for v in labels)
        assert isinstance(value, int | float) and not isinstance(value, bool), metric
        assert math.isfinite(value), metric
        if metric.scale == 0:
            assert type(value) is int, metric
        if metric.kind == COUNTER:
            assert value >= 0, metric
        if metric.unit == "percent":
            assert 0 <= value <= 100, metric


def test_every_family_against_real_psutil() -> None:
    collects: dict[str, Callable[[], list[Reading]]]
    collects, unavailable = start(tuple(FAMILIES))
    # the others exist on any Linux host
    assert set(unavailable) <= {"pressure", "sensors"}, unavailable
    first = {n: c() for n, c in collects.items()}
    second = {n: c() for n, c in collects.items()}
    for readings in (*first.values(), *second.values()):
        check_well_formed(readings)
    for name in ("load", "memory", "disk", "system", "cpu_seconds", "kernel", "sockets",
                 "filefd", "processes", "top_processes"):  # present on any Linux host
        assert second[name], name
    assert wait_until(lambda: [r for r in collects["cpu"]() if r[0] is cpu.USAGE],
                      5, "a CPU tick between two calls")
    batch = BatchBuilder()
    readings = [r for rs in second.values() for r in rs]
    for metric, labels, value in readings:
        batch.add(1, metric, labels, to_scaled(value, metric.scale))
    decoded = list(expand_samples(batch.build(host="h", instance="i", seq=0, sent_ms=1)))
    assert len(decoded) == len(readings)
