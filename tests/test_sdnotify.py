"""The sd_notify clients of the agent and the collector, against real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from edgemon.common import sdnotify

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs AF_UNIX sockets")

@pytest.fixture
def sd(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    return sdnotify


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    if len(os.fsencode(path)) >= 100:  # sun_path is 108 bytes
        pytest.skip(f"tmp_path too long for an AF_UNIX socket: {path}")
    with _receiver(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def _drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock`` (non-blocking after the first)."""
    out = [sock.recv(4096)]
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        pass
    return out


def test_unset_socket_is_a_no_op(sd: ModuleType) -> None:
    assert sd.notify("READY=1") is False


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_unusable_socket_value_is_a_no_op(sd: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                          value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sd.notify("READY=1") is False


def test_nobody_listening_returns_false(sd: ModuleType, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    assert sd.notify("READY=1") is False


def test_path_socket_receives_exactly_the_messages(sd: ModuleType,
                                                   path_socket: socket.socket) -> None:
    sent = ["READY=1", "STATUS=connected to broker, 3 batches pending (ü)", "WATCHDOG=1",
            "STOPPING=1"]
    for message in sent:
        assert sd.notify(message) is True
    assert _drain(path_socket) == [m.encode() for m in sent]


def test_abstract_socket(sd: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edgemon-test-{os.getpid()}-{uuid.uuid4().hex}"
    with _receiver(b"\0" + name.encode()) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd.notify("READY=1\nSTATUS=up") is True
        assert sd.notify("WATCHDOG=1") is True
        assert _drain(sock) == [b"READY=1\nSTATUS=up", b"WATCHDOG=1"]


def test_reloading_carries_monotonic_usec(sd: ModuleType, path_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sd.notify("RELOADING=1") is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = path_socket.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert len(lines) == 2 and lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].removeprefix("MONOTONIC_USEC=")) <= after


def test_reloading_keeps_a_given_monotonic_usec(sd: ModuleType,
                                                path_socket: socket.socket) -> None:
    assert sd.notify("RELOADING=1\nMONOTONIC_USEC=42") is True
    assert path_socket.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=42"


def test_watchdog_interval(sd: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert sd.watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sd.watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("", "0", "-5", "sixty"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sd.watchdog_interval() is None, bad

