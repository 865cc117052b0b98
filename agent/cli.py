"""``edgemon-agent``: run the agent, check its configuration, show the state of its buffer."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgemon.agent import __version__
from edgemon.agent.config import AgentConfig, ConfigError, as_dict, load_config
from edgemon.common import clock
from edgemon.common.private_files import InsecureFileMode, check_not_world_accessible

if TYPE_CHECKING:
    from edgemon.agent.buffer_file import BufferStats

__all__ = ["main"]

EXIT_CONFIG = 2
EXIT_MISMATCH = 3
EXIT_BROKEN_PIPE = 128 + 13  # as a command killed by SIGPIPE (the reader went away)


def _load(config_path: str | None) -> AgentConfig:
    """The configuration, refusing a file that other users may read (it may hold the broker
    password or a key path) or write."""
    if config_path is not None:
        try:
            check_not_world_accessible(config_path, "configuration file", owner="the agent")
        except InsecureFileMode as exc:
            raise ConfigError([str(exc)]) from None
    return load_config(config_path)


def _format_age(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    seconds = max(0, (now_ms - ms) // 1000)
    return f"{seconds} s ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(ms / 1000))})"


def _status_doc(path: Path, budget: int, stats: BufferStats, now_ms: int) -> dict[str, Any]:
    """``status --json``: every counter of BUFFER.md's accounting and the identity's check."""
    return {
        "buffer": str(path), "exists": True,
        "disk_bytes": stats.disk_bytes, "budget_bytes": budget,
        "appended_samples": stats.appended_samples_total,
        "acknowledged_samples": stats.acknowledged_samples_total,
        "dropped_samples": stats.dropped_samples_total,
        "dropped_then_delivered_samples": stats.delivered_after_drop_total,
        "dropped_in_doubt_samples": stats.in_doubt_samples,
        "lost_samples": stats.lost_samples,
        "buffered_batches": stats.batches,
        "buffered_samples": stats.buffered_samples,
        "pending_cycles": stats.pending_cycles,
        "oldest_buffered_ms": stats.oldest_ms,
        "oldest_buffered_age_seconds": (None if stats.oldest_ms is None
                                        else max(0, (now_ms - stats.oldest_ms) // 1000)),
        "last_ack_ms": stats.last_ack_ms,
        "identity": {"holds": stats.identity_holds,
                     "rule": "appended = acknowledged + dropped + buffered"},
    }


def _status_lines(doc: dict[str, Any], stats: BufferStats, now_ms: int) -> list[tuple[str, str]]:
    identity = (f"{stats.appended_samples_total} = {stats.acknowledged_samples_total} + "
                f"{stats.dropped_samples_total} + {stats.buffered_samples}")
    return [
        ("buffer", doc["buffer"]),
        ("disk bytes", f"{stats.disk_bytes} (budget {doc['budget_bytes']})"),
        ("appended samples", str(stats.appended_samples_total)),
        ("acknowledged samples", str(stats.acknowledged_samples_total)),
        ("dropped samples", f"{stats.dropped_samples_total} (lost {stats.lost_samples}, "
                            f"in doubt {stats.in_doubt_samples})"),
        ("dropped then delivered", str(stats.delivered_after_drop_total)),
        ("buffered", f"{stats.batches} batches, {stats.buffered_samples} samples "
                     f"({stats.pending_cycles} cycles not yet sealed)"),
        ("oldest buffered age", _format_age(stats.oldest_ms, now_ms)),
        ("last ack", _format_age(stats.last_ack_ms, now_ms)),
        ("identity", ("OK" if stats.identity_holds else "MISMATCH")
         + f": appended = acknowledged + dropped + buffered ({identity})"),
    ]


def _status(config_path: str | None, as_json: bool) -> int:
    """Exit 0 (also when there is no buffer yet), 1 if the buffer cannot be read, 3 if its
    accounting identity does not hold."""
    import sqlite3

    from edgemon.agent.buffer_file import read_stats

    config = _load(config_path)
    path = config.buffer.path
    if not path.exists():
        if as_json:
            print(json.dumps({"buffer": str(path), "exists": False}))
        else:
            print(f"no buffer yet at {path} (the agent creates it when it starts)")
        return 0
    try:
        stats = read_stats(path)
    except (OSError, sqlite3.Error) as exc:
        print(f"error: cannot read the buffer {path}: {exc}", file=sys.stderr)
        return 1
    now_ms = clock.now_ms()
    doc = _status_doc(path, config.buffer.max_bytes, stats, now_ms)
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        rows = _status_lines(doc, stats, now_ms)
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
    return 0 if stats.identity_holds else EXIT_MISMATCH


def _run(config_path: str | None) -> int:
    os.umask(0o077)  # the buffer, its -wal/-shm and lock file are for the agent's user only
    config = _load(config_path)
    # paho before anything else imports it: without the modules the agent never uses, and
    # without ssl when TLS is off (lean_paho.py explains why that is safe; 7-8 MB of RSS)
    from edgemon.agent.lean_paho import import_paho

    import_paho(tls=config.broker.tls)

    from edgemon.agent.runner import Runner
    from edgemon.common.logs import setup_logging
    from edgemon.common.single_instance import run_exclusively

    setup_logging(config.log.level)
    # The runner opens the buffer: only once the lock is held.
    return run_exclusively(config.buffer.path, "edgemon-agent",
                           lambda: Runner(config, reload_config=lambda: _load(config_path)).run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgemon-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgemon-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "sample this host and ship the batches (foreground)"),
                       ("check-config", "check the configuration and print the effective one"),
                       ("status", "show the local buffer: what was appended, acknowledged, "
                                  "dropped and is still buffered, and whether it adds up")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("-c", "--config", metavar="FILE",
                             help="TOML configuration (default: built-in defaults and "
                                  "EDGEMON_AGENT_* variables only)")
        if name == "status":
            command.add_argument("--json", action="store_true",
                                 help="one JSON document instead of text")
    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            config = _load(args.config)
            print("OK")
            print(json.dumps(as_dict(config), indent=2))
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return 0
        if args.command == "status":
            code = _status(args.config, args.json)
            sys.stdout.flush()
            return code
        return _run(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:  # `edgemon-agent check-config | head`: the reader has enough
        # Python would report the failed flush of stdout again at exit: point it at /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
