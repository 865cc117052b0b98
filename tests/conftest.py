from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.postgres import Postgres
from tests.support.postgres import available as postgres_available
from tests.support.stand_in_agent import StandInAgent
from tests.support.storages import BACKENDS, Stores


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private, running mosquitto on a free loopback port; stopped after the test."""
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
def agents(broker: Broker) -> Iterator[Callable[[str], StandInAgent]]:
    """``agents(host)``: a stand-in agent of ``host`` on ``broker`` (closed after the test)."""
    made: list[StandInAgent] = []

    def make(host: str) -> StandInAgent:
        made.append(StandInAgent(broker, host))
        return made[-1]

    yield make
    for a in made:
        a.close()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One real PostgreSQL per test session (own cluster on a free port, or
    EDGEMON_TEST_POSTGRES_URL); each test takes a database of its own with ``postgres_url``."""
    server = Postgres(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server: Postgres) -> str:
    return postgres_server.new_database()


@pytest.fixture(params=BACKENDS)
def alert_state(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where an alerting test keeps the engine's state (``alerting/store.py``): once a SQLite
    file, once a PostgreSQL database of its own (schema ``alerting``)."""
    if request.param == "postgres":
        if (why := postgres_available()) is not None:
            pytest.skip(why)
        return str(request.getfixturevalue("postgres_server").new_database("edgemon_alerts"))
    return tmp_path / "alerts.db"


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    """The store of one test, once on SQLite and once on PostgreSQL (``support/storages.py``)."""
    if request.param == "postgres":
        if (why := postgres_available()) is not None:
            pytest.skip(why)
        return Stores("postgres", tmp_path, request.getfixturevalue("postgres_server"))
    return Stores("sqlite", tmp_path)
