"""node_exporter-compatible names for edgemon's series, so the common node_exporter dashboards'
main panels work unmodified (collector/PROMETHEUS.md lists what works and what cannot).

An alias is a second name for a stored series, with node_exporter's label names and the
target labels those dashboards filter on: ``instance`` (= the host id) and ``job="node"``.
Values are the stored ones (same unit), except ``node_uname_info``, which is 1 per host.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALIASES", "NODE_JOB", "Alias", "aliases_of"]

NODE_JOB = "node"


@dataclass(frozen=True, slots=True)
class Alias:
    name: str  # the node_exporter name
    source: str  # the edgemon metric it reads
    renames: tuple[tuple[str, str], ...] = ()  # (edgemon label, node_exporter label)
    constant: float | None = None  # a fixed value instead of the stored one (info metrics)
    host_label: str | None = None  # also expose the host id under this label


_NET = (("iface", "device"),)
_FS = (("mount", "mountpoint"),)

ALIASES: tuple[Alias, ...] = (
    Alias("node_load1", "load1"),
    Alias("node_load5", "load5"),
    Alias("node_load15", "load15"),
    Alias("node_memory_MemTotal_bytes", "memory_total_bytes"),
    Alias("node_memory_MemAvailable_bytes", "memory_available_bytes"),
    Alias("node_memory_MemFree_bytes", "memory_free_bytes"),
    Alias("node_memory_Cached_bytes", "memory_cached_bytes"),
    Alias("node_memory_Buffers_bytes", "memory_buffers_bytes"),
    Alias("node_memory_SwapTotal_bytes", "swap_total_bytes"),
    Alias("node_memory_SwapFree_bytes", "swap_free_bytes"),
    Alias("node_filesystem_size_bytes", "disk_total_bytes", _FS),
    Alias("node_filesystem_avail_bytes", "disk_free_bytes", _FS),
    Alias("node_filesystem_files", "disk_inodes", _FS),
    Alias("node_network_receive_bytes_total", "network_received_bytes_total", _NET),
    Alias("node_network_transmit_bytes_total", "network_sent_bytes_total", _NET),
    Alias("node_network_receive_packets_total", "network_received_packets_total", _NET),
    Alias("node_network_transmit_packets_total", "network_sent_packets_total", _NET),
    Alias("node_network_receive_errs_total", "network_receive_errors_total", _NET),
    Alias("node_network_transmit_errs_total", "network_transmit_errors_total", _NET),
    Alias("node_network_receive_drop_total", "network_receive_drops_total", _NET),
    Alias("node_network_transmit_drop_total", "network_transmit_drops_total", _NET),
    Alias("node_disk_read_bytes_total", "diskio_read_bytes_total"),
    Alias("node_disk_written_bytes_total", "diskio_written_bytes_total"),
    Alias("node_disk_reads_completed_total", "diskio_reads_total"),
    Alias("node_disk_writes_completed_total", "diskio_writes_total"),
    Alias("node_disk_read_time_seconds_total", "diskio_read_time_seconds_total"),
    Alias("node_disk_write_time_seconds_total", "diskio_write_time_seconds_total"),
    Alias("node_disk_io_time_seconds_total", "diskio_busy_time_seconds_total"),
    Alias("node_boot_time_seconds", "system_boot_time_seconds"),
    Alias("node_cpu_seconds_total", "cpu_seconds_total"),  # same labels: cpu, mode
    Alias("node_context_switches_total", "kernel_context_switches_total"),
    Alias("node_intr_total", "kernel_interrupts_total"),
    Alias("node_forks_total", "kernel_forks_total"),
    Alias("node_filefd_allocated", "file_descriptors_allocated"),
    Alias("node_filefd_maximum", "file_descriptors_maximum"),
    Alias("node_sockstat_sockets_used", "sockets_used"),
    Alias("node_sockstat_TCP_tw", "tcp_time_wait_sockets"),
    # node_exporter dashboards list their hosts with label_values(node_uname_info, instance)
    Alias("node_uname_info", "system_boot_time_seconds", constant=1.0, host_label="nodename"),
)

_BY_SOURCE: dict[str, list[Alias]] = {}
for _alias in ALIASES:
    _BY_SOURCE.setdefault(_alias.source, []).append(_alias)


def aliases_of(name: str) -> list[Alias]:
    return _BY_SOURCE.get(name, [])


def alias_labels(alias: Alias, host: str, agent_labels: dict[str, str]) -> dict[str, str]:
    """The alias's label set (before name and ``host`` are added)."""
    renames = dict(alias.renames)
    out = {renames.get(k, k): v for k, v in agent_labels.items()}
    out["instance"] = host
    out["job"] = NODE_JOB
    if alias.host_label:
        out[alias.host_label] = host
    return out
