"""The collector keeps the fleet's data to its own user: every file it creates is private."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.support.broker import Broker
from tests.support.processes import Collector


def test_the_collector_creates_its_database_and_state_private(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    collector = Collector(tmp_path / "collector", broker)
    try:
        collector.start()
        assert collector.get("/edgemon/api/v1/hosts") == {"hosts": []}
        created = [p for p in (tmp_path / "collector").iterdir()
                   if p.is_file() and p.suffix not in (".toml", ".log")]
        names = {p.name for p in created}
        assert {"edgemon.db", "alerts.db", "tokens.json"} <= names, names
        for path in created:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, f"{path.name} mode {mode:04o}"
    finally:
        collector.kill()
        broker.kill()
