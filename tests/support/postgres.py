"""A real PostgreSQL for the tests: its own cluster (``initdb`` + ``pg_ctl``) on a free loopback
port in a temp directory, or the server ``EDGEMON_TEST_POSTGRES_URL`` names.

The machine may run a PostgreSQL of its own on 5432; the tests never use it unless told to by
that variable. As root, ``initdb`` refuses to run, so the cluster is made and run as the
``postgres`` user (``runuser``), in a directory that user owns.

Each test gets a database of its own (``Postgres.new_database``), so tests can share one server
per session without seeing each other's tables. A session makes hundreds of them (about 7 MB and
300 files each); on a disk mounted with ``discard`` deleting them at the end took a minute, so a
crash-unsafe cluster lives in RAM (``/dev/shm``) when there is room for it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from .broker import free_port
from .waiting import wait_until

URL_VARIABLE = "EDGEMON_TEST_POSTGRES_URL"
RAM_DIR = Path("/dev/shm")
RAM_NEEDED = 8 << 30  # free bytes in RAM_DIR to put a cluster there (a session fills ~3 GB)


def _ram_dir() -> Path | None:
    """A tmpfs directory with room for a cluster, or None (then the cluster stays on disk)."""
    try:
        usage = shutil.disk_usage(RAM_DIR)
    except OSError:
        return None
    return RAM_DIR if os.access(RAM_DIR, os.W_OK) and usage.free >= RAM_NEEDED else None


def _server_binary(name: str) -> str | None:
    """``initdb``/``pg_ctl``: from PATH, else Debian's versioned directory (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
                        reverse=True)
    return candidates[0] if candidates else None


def available() -> str | None:
    """None if PostgreSQL can be used here, else why not (for ``pytest.skip``)."""
    if os.environ.get(URL_VARIABLE):
        return None
    missing = [n for n in ("initdb", "pg_ctl") if _server_binary(n) is None]
    if missing:
        return f"{', '.join(missing)} not found (install postgresql) and {URL_VARIABLE} not set"
    return None


class Postgres:
    """One server for the tests. ``start`` makes and starts a private cluster unless
    ``EDGEMON_TEST_POSTGRES_URL`` is set (then that server is used and never stopped)."""

    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        """``durable``: every commit flushed (``fsync``, ``synchronous_commit``), for tests
        that crash the server; otherwise fast and crash-unsafe."""
        self.workdir = workdir
        self.durable = durable
        self.external = os.environ.get(URL_VARIABLE) or None
        self.port = free_port()
        self.host = "127.0.0.1"
        self.user = "edgemon"
        self.datadir = workdir / "pgdata"
        self.log = workdir / "postgres.log"
        self._as: list[str] = []
        self._own_workdir = False

    @property
    def admin_url(self) -> str:
        if self.external:
            return self.external
        return f"postgresql://{self.user}@{self.host}:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> Postgres:
        if self.external:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        ram = None if self.durable else _ram_dir()
        if os.geteuid() == 0 or ram is not None:
            # a directory of its own: in RAM (see the module's doc), or for root, who may not
            # run initdb, one the postgres user owns (pytest's temp tree is private to root)
            self.workdir = Path(tempfile.mkdtemp(prefix="edgemon-test-pg-", dir=ram))
            self._own_workdir = True
            if os.geteuid() == 0:
                self._as = ["runuser", "-u", "postgres", "--"]
                shutil.chown(self.workdir, user="postgres")
            self.datadir = self.workdir / "pgdata"
            self.log = self.workdir / "postgres.log"
        initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
        assert initdb and pg_ctl, available()
        subprocess.run([*self._as, initdb, "-D", str(self.datadir), "-U", self.user,
                        "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                       check=True, capture_output=True)
        return self.restart(timeout)

    def restart(self, timeout: float = 60.0) -> Postgres:
        """Start the (stopped) cluster again, on the same port."""
        if self.external:
            return self
        pg_ctl = _server_binary("pg_ctl")
        safety = "on" if self.durable else "off"
        options = (f"-c listen_addresses={self.host} -c port={self.port} "
                   f"-c unix_socket_directories={self.workdir} -c fsync={safety} "
                   f"-c synchronous_commit={safety} -c full_page_writes={safety} "
                   "-c max_connections=200")
        subprocess.run([*self._as, str(pg_ctl), "-D", str(self.datadir), "-l", str(self.log),
                        "-o", options, "-w", "-t", str(int(timeout)), "start"],
                       check=True, capture_output=True)
        wait_until(self.accepting, timeout, f"postgres on port {self.port} ({self.log})")
        return self

    def accepting(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, mode: str = "fast") -> None:
        """``mode``: smart, fast (default) or immediate (like a crash: no checkpoint)."""
        if self.external or not self.datadir.exists():
            return
        pg_ctl = _server_binary("pg_ctl")
        subprocess.run([*self._as, str(pg_ctl), "-D", str(self.datadir), "-m", mode, "-w",
                        "stop"], capture_output=True)

    def remove(self) -> None:
        """Stop and delete the cluster's files (a directory made outside the test's own)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def new_database(self, prefix: str = "edgemon_test") -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self._url_for(name)

    def _url_for(self, database: str) -> str:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))

