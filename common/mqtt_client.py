"""One way to build the paho-mqtt 2.x client both programs use: credentials, verified TLS,
TCP_NODELAY, reconnect delays with full jitter, and a one-line hint when a connection fails.

* **TLS** always verifies the broker's chain and host name (``CERT_REQUIRED``, no insecure
  mode): against ``ca_file``, or the system's CAs when it is None. ``cert_file`` + ``key_file``
  add a client certificate (brokers with ``require_certificate``).
* **TCP_NODELAY** on every socket paho opens (``on_socket_open``, before the CONNECT packet):
  without it Nagle's algorithm and the peer's delayed ACKs hold small packets (PUBACKs, acks,
  small batches) back by up to 40 ms each, which caps one connection near 1,000 messages/s.
* **Reconnect delays** follow "full jitter": uniform in [0, min(cap, base * 2**attempt)], at
  least ``MIN_DELAY``. paho's own back-off doubles without jitter, so a fleet that lost its
  broker would come back in lock-step; callers set paho's delay to ``reconnect_delay(...)``
  after every failed attempt (``client.reconnect_delay_set(d, d)``).

Standard library and paho only: the agent imports this (``tests/test_common_imports.py``).
"""

from __future__ import annotations

import contextlib
import random
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

__all__ = [
    "MIN_DELAY",
    "connect_failure",
    "make_client",
    "reconnect_delay",
    "set_tcp_nodelay",
    "tls_failure_hint",
    "use_tls",
]

MIN_DELAY = 0.05  # seconds: a flapping broker never makes a busy loop


def make_client(client_id: str, *, clean_session: bool = False, username: str | None = None,
                password: str | None = None, tls: bool = False, ca_file: Path | None = None,
                cert_file: Path | None = None, key_file: Path | None = None,
                manual_ack: bool = False, protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    """A paho client (callback API 2; MQTT 3.1.1 unless ``protocol`` is ``mqtt.MQTTv5``) with
    credentials, TLS and TCP_NODELAY set.

    The caller sets its callbacks, Last Will and limits, then connects. MQTT 5 has no
    ``clean_session``: the caller passes ``clean_start`` and a session expiry to ``connect``.
    """
    if protocol == mqtt.MQTTv5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=clean_session, protocol=protocol,
                             manual_ack=manual_ack)
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        use_tls(client, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    client.on_socket_open = set_tcp_nodelay
    return client


def use_tls(client: mqtt.Client, *, ca_file: Path | None, cert_file: Path | None = None,
            key_file: Path | None = None) -> None:
    """Turn on TLS for ``client``: the broker's certificate and host name are verified against
    ``ca_file`` (the system CAs if None); a client certificate if ``cert_file``."""
    import ssl  # here: an agent without TLS never loads it (edgemon/agent/lean_paho.py)

    client.tls_set(ca_certs=str(ca_file) if ca_file else None,
                   certfile=str(cert_file) if cert_file else None,
                   keyfile=str(key_file) if key_file else None,
                   cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.tls_insecure_set(False)


def set_tcp_nodelay(_client: Any, _userdata: Any, sock: Any) -> None:
    """paho's ``on_socket_open``: send small packets at once (see the module docstring)."""
    # not a TCP socket (a unix socket, a websocket wrapper): nothing to do
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tls_failure_hint(exc: BaseException | None, *, ca_key: str, host_key: str,
                     port_key: str) -> str | None:
    """A one-line explanation of a TLS failure while connecting, or None if it was not TLS.

    ``*_key`` name the settings to check in the caller's configuration (``broker.ca_file``).
    """
    ssl = sys.modules.get("ssl")  # not imported: the exception cannot be an ssl one
    if ssl is None:
        return None
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: the broker's certificate failed verification ({exc.verify_message}); "
                f"check that {ca_key} is the CA that signed it and that {host_key} is a name in "
                "it (subjectAltName)")
    if isinstance(exc, ssl.SSLError):
        return (f"TLS handshake failed ({exc.reason or exc}); is {port_key} the broker's TLS "
                "listener?")
    return None


def connect_failure(exc: BaseException | None, *, ca_key: str, host_key: str,
                    port_key: str) -> tuple[str, bool]:
    """Why connecting failed, for the log, and whether it was TLS (a configuration error, not a
    passing outage). paho calls ``on_connect_fail`` inside its ``except OSError``, so callers
    pass ``sys.exc_info()[1]``."""
    hint = tls_failure_hint(exc, ca_key=ca_key, host_key=host_key, port_key=port_key)
    if hint is not None:
        return hint, True
    return (str(exc) if exc is not None else "unknown error"), False


def reconnect_delay(attempt: int, rand: Callable[[], float] = random.random, *,
                    base: float, cap: float) -> float:
    """Seconds before reconnect ``attempt`` (0 = first): uniform in [0, min(cap, base·2ⁿ)],
    at least ``MIN_DELAY``."""
    return max(MIN_DELAY, rand() * min(cap, base * 2 ** min(attempt, 32)))
