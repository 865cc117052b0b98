"""``edgemon-agent``: run the agent, check its configuration, show the state of its buffer."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from edgemon.agent import __version__
from edgemon.agent.config import AgentConfig, ConfigError, as_dict, load_config
from edgemon.common import clock
from edgemon.common.private_files import InsecureFileMode, check_not_world_accessible

__all__ = ["main"]

EXIT_CONFIG = 2


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


def _status(config_path: str | None) -> int:
    import sqlite3

    from edgemon.agent.buffer import read_stats

    config = _load(config_path)
    path = config.buffer.path
    try:
        stats = read_stats(path)
    except (OSError, sqlite3.Error) as exc:
        print(f"error: cannot read the buffer {path}: {exc}", file=sys.stderr)
        return 1
    now_ms = clock.now_ms()
    rows = [
        ("buffer", str(path)),
        ("disk bytes", f"{stats.disk_bytes} (budget {config.buffer.max_bytes})"),
        ("sealed batches", str(stats.batches)),
        ("samples in batches", str(stats.samples)),
        ("pending cycles", f"{stats.pending_cycles} ({stats.pending_samples} samples)"),
        ("oldest sample age", _format_age(stats.oldest_ms, now_ms)),
        ("dropped samples", str(stats.dropped_samples_total)),
        ("last ack", _format_age(stats.last_ack_ms, now_ms)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _run(config_path: str | None) -> int:
    # Do not hide the ssl module to save memory: paho's read loop names ssl.SSLWantReadError in
    # an except clause, so a dropped connection would kill its network thread (seen in
    # tests/test_faults.py when the broker is killed).
    from edgemon.agent.runner import Runner
    from edgemon.common.logs import setup_logging
    from edgemon.common.single_instance import run_exclusively

    os.umask(0o077)  # the buffer, its -wal/-shm and lock file are for the agent's user only
    config = _load(config_path)
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
                       ("status", "show the local buffer: depth, oldest sample, drops")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("-c", "--config", metavar="FILE",
                             help="TOML configuration (default: built-in defaults and "
                                  "EDGEMON_AGENT_* variables only)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            config = _load(args.config)
            print("OK")
            print(json.dumps(as_dict(config), indent=2))
            return 0
        if args.command == "status":
            return _status(args.config)
        return _run(args.config)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
