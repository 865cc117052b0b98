"""A real Mosquitto on a free loopback port with a generated config, owned by one test."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import NamedTuple

from .waiting import wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A free loopback port, left in TIME_WAIT: a server that binds it with SO_REUSEADDR (as
    mosquitto, PostgreSQL, Go's and Python's servers do) gets it, while the kernel gives it to
    no other ``bind(0)`` or ``connect()`` for a minute, so a parallel test process (a
    pytest-xdist worker) or an outgoing connection cannot take it before the server starts."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listener.accept()
            accepted.close()  # this side closes first, so TIME_WAIT holds the port
    return port


class TlsFiles(NamedTuple):
    """The broker side of a TLS listener: the CA clients are checked against, its own pair."""

    cafile: Path
    certfile: Path
    keyfile: Path


class Broker:
    """Start, stop, restart and kill a private mosquitto. Its persistence file lives in ``workdir``.

    ``max_queued_messages`` bounds what the broker keeps for a disconnected persistent subscriber,
    so tests can show that the end-to-end acknowledgement (not the broker) guarantees delivery.
    ``auth_dir``: a broker_auth directory: no anonymous clients, its password file and ACL.
    ``tls``: a second listener on ``tls_port`` with these files; ``require_certificate``: clients
    there must show a certificate from ``tls.cafile`` whose CN becomes their user name.
    ``generated``: run exactly the configuration ``broker-auth mosquitto-conf`` prints for this
    auth directory (client ids bound to users, persistence, queue bounds), plus only what a test
    machine needs (run as this user, persistence and log in ``workdir``); the other options are
    ignored then, except ``extra_config``.
    """

    def __init__(self, workdir: Path, *, port: int | None = None, max_queued_messages: int = 1000,
                 persistence: bool = True, extra_config: str = "", auth_dir: Path | None = None,
                 tls: TlsFiles | None = None, require_certificate: bool = False,
                 generated: Path | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls_port = free_port() if tls is not None else None
        self.host = "127.0.0.1"
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        security = ""
        if tls is not None:
            security += (f"listener {self.tls_port} 127.0.0.1\ncafile {tls.cafile}\n"
                         f"certfile {tls.certfile}\nkeyfile {tls.keyfile}\n")
            if require_certificate:
                security += "require_certificate true\nuse_identity_as_username true\n"
        if auth_dir is not None:
            security += (f"allow_anonymous false\npassword_file {auth_dir / 'passwd'}\n"
                         f"acl_file {auth_dir / 'acl'}\n")
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + ("" if auth_dir is not None else "allow_anonymous true\n")
            + security +
            # as root, mosquitto would switch to the "mosquitto" user and lose our workdir
            f"user {getpass.getuser()}\n"
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            f"max_queued_messages {max_queued_messages}\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + extra_config
        )
        if generated is not None:
            from edgemon.collector.broker.auth import AuthDir, mosquitto_conf

            self.conf.write_text(
                mosquitto_conf(AuthDir(generated), port=self.port, bind="127.0.0.1",
                               persistence_location=workdir)
                + f"user {getpass.getuser()}\nlog_dest stderr\n"
                "log_type error\nlog_type warning\nlog_type notice\n" + extra_config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Broker:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        logf = open(self.log, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        wait_until(self.accepting, timeout, f"mosquitto on port {self.port} ({self.log})")
        return self

    def accepting(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
        for port in (self.port, self.tls_port):
            if port is None:
                continue
            try:
                with socket.create_connection((self.host, port), timeout=0.2):
                    pass
            except OSError:
                return False
        return True

    def reload(self) -> None:
        """SIGHUP: mosquitto reads its password file and ACL again."""
        self._signal(signal.SIGHUP, wait=False)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): mosquitto saves its persistence file."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """kill -9: whatever the broker held only in memory is gone."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _signal(self, sig: int, *, wait: bool = True) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        if not wait:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
