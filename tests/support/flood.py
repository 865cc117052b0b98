"""A flood at the broker's maximum rate from one authenticated host: a raw MQTT 3.1.1 client that
logs in with the host's own credentials and writes pre-built PUBLISH packets back to back on its
own topic (QoS 0 garbage, QoS 1 copies of a valid batch, ~1 MB payloads), so that neither paho
nor Python paces it: the broker reads as fast as it can. Used by the hostile-flood test and
benchmarks/hostile.py."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

__all__ = ["RawFlooder", "connect_packet", "publish_packet"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str16(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, no keep-alive."""
    return _packet(0x10, _str16("MQTT") + bytes([4, 0xC2]) + (0).to_bytes(2, "big")
                   + _str16(client_id) + _str16(username) + _str16(password))


def publish_packet(topic: str, payload: bytes, qos: int, mid: int = 1) -> bytes:
    return _packet(0x30 | (qos << 1), _str16(topic) + (mid.to_bytes(2, "big") if qos else b"")
                   + payload)


class RawFlooder:
    """``run(seconds)`` floods ``edgemon/v1/<host>/metrics`` as ``host`` (its user name), as fast
    as the broker reads; ``sent`` counts the messages written. ``valid_batch``: a real batch of
    this host, replayed as every tenth message."""

    def __init__(self, port: int, host: str, password: str, valid_batch: bytes) -> None:
        topic = f"edgemon/v1/{host}/metrics"
        cycle = bytearray()
        for i in range(1000):
            if i == 0:
                cycle += publish_packet(topic, os.urandom(1_000_000), 1, 1)
            elif i % 10 == 0:
                cycle += publish_packet(topic, valid_batch, 1, 2 + i)
            else:
                cycle += publish_packet(topic, b"\x00garbage" * 25, 0)
        self.cycle = bytes(cycle)
        self.connect = connect_packet(host, host, password)
        self.port = port
        self.sent = 0

    def run(self, seconds: float) -> int:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(self.connect)

        def drain() -> None:  # CONNACK and PUBACKs: read and forget
            with contextlib.suppress(OSError):
                while sock.recv(1 << 16):
                    pass

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                sock.sendall(self.cycle)
                self.sent += 1000
            sock.sendall(_packet(0xE0, b""))  # DISCONNECT
        sock.close()
        return self.sent
