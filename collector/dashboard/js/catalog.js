// Which metrics go together on one chart, per family. A metric no chart here names gets a
// chart of its own in "Other", so whatever an agent sends is shown.

export const FAMILIES = [
  ["cpu", "CPU"], ["load", "Load"], ["memory", "Memory"], ["disk", "Disk space"],
  ["diskio", "Disk I/O"], ["network", "Network"], ["system", "System"], ["agent", "Agent"],
  ["other", "Other"],
];

// {family, title, metrics: [[name, short label]], by: the label key to select series by,
//  show(labelValue) => shown at first}
export const CHARTS = [
  { family: "cpu", title: "CPU usage", metrics: [["cpu_usage_percent", ""]], by: "cpu", show: (v) => v === "total" },
  { family: "cpu", title: "CPU time by mode", metrics: [["cpu_mode_percent", ""]], by: "mode" },
  { family: "cpu", title: "Logical CPUs", metrics: [["cpu_count", "CPUs"]] },
  { family: "load", title: "Load average", metrics: [["load1", "1 min"], ["load5", "5 min"], ["load15", "15 min"]] },
  { family: "memory", title: "Memory usage", metrics: [["memory_usage_percent", "used"]] },
  { family: "memory", title: "Memory", metrics: [["memory_used_bytes", "used"], ["memory_cached_bytes", "cached"], ["memory_buffers_bytes", "buffers"], ["memory_free_bytes", "free"], ["memory_available_bytes", "available"], ["memory_total_bytes", "total"]] },
  { family: "memory", title: "Swap", metrics: [["swap_used_bytes", "used"], ["swap_free_bytes", "free"], ["swap_total_bytes", "total"]] },
  { family: "memory", title: "Swap I/O", metrics: [["swap_in_bytes_total", "in"], ["swap_out_bytes_total", "out"]] },
  { family: "disk", title: "Disk usage", metrics: [["disk_usage_percent", ""]], by: "mount" },
  { family: "disk", title: "Disk used", metrics: [["disk_used_bytes", ""]], by: "mount" },
  { family: "disk", title: "Disk free", metrics: [["disk_free_bytes", ""]], by: "mount" },
  { family: "disk", title: "Disk size", metrics: [["disk_total_bytes", ""]], by: "mount" },
  { family: "disk", title: "Inodes used", metrics: [["disk_inodes_used", "used"], ["disk_inodes", "total"]], by: "mount" },
  { family: "diskio", title: "Disk throughput", metrics: [["diskio_read_bytes_total", "read"], ["diskio_written_bytes_total", "written"]], by: "device" },
  { family: "diskio", title: "Disk operations", metrics: [["diskio_reads_total", "reads"], ["diskio_writes_total", "writes"]], by: "device" },
  { family: "diskio", title: "Disk busy", metrics: [["diskio_busy_time_seconds_total", "busy"]], by: "device" },
  { family: "diskio", title: "Disk wait", metrics: [["diskio_read_time_seconds_total", "read"], ["diskio_write_time_seconds_total", "write"]], by: "device" },
  { family: "network", title: "Network traffic", metrics: [["network_received_bytes_total", "in"], ["network_sent_bytes_total", "out"]], by: "iface" },
  { family: "network", title: "Packets", metrics: [["network_received_packets_total", "in"], ["network_sent_packets_total", "out"]], by: "iface" },
  { family: "network", title: "Errors and drops", metrics: [["network_receive_errors_total", "in errors"], ["network_transmit_errors_total", "out errors"], ["network_receive_drops_total", "in drops"], ["network_transmit_drops_total", "out drops"]], by: "iface" },
  { family: "system", title: "Uptime", metrics: [["system_uptime_seconds", "uptime"]] },
  { family: "system", title: "Boot time", metrics: [["system_boot_time_seconds", "boot"]] },
  { family: "agent", title: "Agent back-log", metrics: [["agent_buffer_samples", "samples"]] },
  { family: "agent", title: "Agent buffer", metrics: [["agent_buffer_bytes", "on disk"]] },
  { family: "agent", title: "Oldest unsent", metrics: [["agent_buffer_oldest_age_seconds", "age"]] },
  { family: "agent", title: "Dropped samples", metrics: [["agent_dropped_samples_total", "dropped"], ["agent_dropped_then_delivered_samples_total", "delivered later"]] },
  { family: "agent", title: "Agent errors", metrics: [["agent_publish_errors_total", "publish"], ["agent_buffer_errors_total", "buffer"], ["agent_reconnects_total", "reconnects"], ["agent_buffer_recoveries_total", "recoveries"]] },
  { family: "agent", title: "Agent cycle", metrics: [["agent_cycle_duration_seconds", "duration"]] },
  { family: "agent", title: "Agent memory", metrics: [["agent_memory_rss_bytes", "RSS"]] },
  { family: "agent", title: "Cycles held in memory", metrics: [["agent_buffer_memory_cycles", "cycles"]] },
];

/** The family of a metric no chart names, from its name's first word. */
export function familyOf(name) {
  const word = name.split("_")[0];
  if (word === "swap") return "memory";
  return FAMILIES.some(([f]) => f === word) ? word : "other";
}
