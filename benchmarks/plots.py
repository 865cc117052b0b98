"""Optional PNG plots for RESULTS.md, drawn from the result JSON files. Needs matplotlib
(``pip install matplotlib``); without it the runner skips the plots with a note."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"edgemon": "tab:blue", "node_exporter": "tab:orange", "collectd": "tab:green"}


def make_plots(out: Path, results: dict[str, Any]) -> tuple[list[str], str]:
    """Write PNGs under ``out``; return (paths written, a note about what was skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install matplotlib)"
    written: list[str] = []
    footprint = results.get("footprint")
    if footprint and footprint.get("runs"):
        for key, name, ylabel, title in (
                ("rss_mb", "rss_over_time.png", "RSS (MB)", "Resident memory of the process tree"),
                ("cpu_s", "cpu_over_time.png", "CPU seconds (cumulative)",
                 "CPU time of the process tree (user + system)")):
            runs = footprint["runs"]
            fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), squeeze=False)
            for ax, run in zip(axes[0], runs, strict=True):
                for agent, series in run.get("series", {}).items():
                    if series.get("t_s"):
                        ax.plot(series["t_s"], series[key], label=agent,
                                color=COLORS.get(agent))
                ax.axvline(footprint.get("warmup_s", 0), color="grey", linestyle=":",
                           linewidth=1)
                ax.set_title(f"interval {run['interval_s']:g} s")
                ax.set_xlabel("seconds since start (dotted: window starts)")
                ax.set_ylabel(ylabel)
                ax.set_ylim(bottom=0)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            fig.suptitle(title)
            fig.tight_layout()
            path = out / name
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(str(path))
    wire = results.get("wire_size")
    if wire and wire.get("formats"):
        formats = [f for f in wire["formats"]
                   if isinstance(f.get("B/sample"), int | float) and f["B/sample"] > 0]
        formats.sort(key=lambda f: f["B/sample"])
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(formats) + 1.2))
        names = [f["format"] for f in formats]
        values = [f["B/sample"] for f in formats]
        ax.barh(names, values, color=["tab:blue" if n.startswith("edgemon") else "tab:grey"
                                      for n in names])
        ax.set_xscale("log")
        ax.set_xlabel("bytes per sample (log scale)")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:g}", va="center", fontsize=8)
        ax.set_title(f"Wire size: {wire.get('samples')} samples, {wire.get('cycles')} cycles at "
                     f"{wire.get('interval_s')} s{', busy' if wire.get('busy') else ''}")
        fig.tight_layout()
        path = out / "wire_bytes_per_sample.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    return written, ""
