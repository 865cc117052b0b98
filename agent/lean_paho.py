"""Import paho-mqtt without the modules an agent process never uses: 8-11 MB of its RSS.

paho's ``client`` module imports, at module level:

* PySocks (``socks``: HTTP/SOCKS proxies) and dnspython (``dns.resolver``: ``connect_srv``),
  both optional (paho works without them); the agent connects straight to ``broker.host``;
* ``urllib.request``, to read a ``mqtt_proxy`` environment variable, consulted only when PySocks
  is there; it loads ``http.client`` and the ``email`` package (2.5 MB);
* ``hashlib``, for its websocket handshake only; it maps OpenSSL's libcrypto (3.4 MB);
* ``ssl`` (5 MB with OpenSSL's libraries), which a connection without TLS never uses: paho
  names only ``ssl.SSLWantReadError`` and ``ssl.SSLWantWriteError`` outside its TLS code, in the
  ``except`` clauses of its socket reads and writes — and Python evaluates those on every
  exception there, a reset connection included (hiding ``ssl`` as ``None`` once made a dropped
  connection kill paho's network thread).

So while paho is imported, ``socks`` and ``dns`` are made to fail the way paho expects when they
are absent (``sys.modules[name] = None`` makes ``import name`` raise ``ImportError``): proxy and
SRV support are off, as on a host without those packages. ``urllib.request`` and ``hashlib`` are
``Deferred``: the real module is imported on first use (never, in an agent). When the agent runs
without TLS, ``ssl`` is a stand-in too: ``NoTls`` has the two exception classes (a plain socket
never raises them, so the ``except`` clauses behave exactly as with the real ones) and refuses
any other name. Afterwards every name is put back, so a later ``import urllib.request``,
``import hashlib`` or ``import ssl`` anywhere in the process gets the real module; only paho's
own references stay the stand-ins. ``edgemon-agent run`` calls
``import_paho(tls=config.broker.tls)`` before anything else imports paho; everything else
(tests, tools) gets paho with the real ``ssl``. Turning TLS on needs a restart
anyway (SIGHUP applies only the log level). ``tests/test_agent_footprint.py`` checks what an
agent process loads, with and without TLS.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["Deferred", "NoTls", "has_tls", "import_paho"]

ABSENT = ("socks", "dns", "dns.resolver")
"""Optional imports of paho made to fail (features: proxies, SRV lookups), as if not installed."""
DEFERRED = ("urllib.request", "hashlib")
"""Imported by paho at module level, used only by its proxy code (off without ``socks``) and its
websocket handshake (the agent speaks plain MQTT over TCP): a ``Deferred`` stand-in imports the
real module on first use (hashlib alone maps OpenSSL's libcrypto: 3.4 MB)."""


class Deferred(types.ModuleType):
    """A module imported on first attribute access (``importlib.util.LazyLoader`` cannot be used:
    in Python 3.11 the import system's own look at ``__spec__`` triggers the load at once)."""

    def __getattr__(self, name: str) -> Any:
        import importlib

        if sys.modules.get(self.__name__) is self:  # used while paho is being imported
            raise AttributeError(f"{self.__name__}.{name}: not imported yet")
        return getattr(importlib.import_module(self.__name__), name)


class NoTls(types.ModuleType):
    """paho's ``ssl`` in an agent without TLS: the exception classes its socket code names."""

    class SSLWantReadError(OSError):
        """Never raised: only an SSL socket raises ``ssl.SSLWantReadError``."""

    class SSLWantWriteError(OSError):
        """Never raised: only an SSL socket raises ``ssl.SSLWantWriteError``."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"ssl.{name}: this agent process was started without TLS "
                             "(broker.tls = false), so paho has no ssl module; restart it")


def import_paho(*, tls: bool = True) -> Any:
    """``paho.mqtt.client``, imported without proxy and SRV support (and without ``ssl`` if
    ``tls`` is false) unless something imported it already (then: as it is)."""
    if "paho.mqtt.client" in sys.modules:
        return sys.modules["paho.mqtt.client"]
    stand_ins: dict[str, Any] = dict.fromkeys(ABSENT)
    stand_ins.update((name, Deferred(name)) for name in DEFERRED)
    if not tls:
        stand_ins["ssl"] = NoTls("ssl")
    saved = {name: sys.modules[name] for name in stand_ins if name in sys.modules}
    for name, module in stand_ins.items():
        if name not in saved or name in ABSENT:
            sys.modules[name] = module
    try:
        import paho.mqtt.client as client
    finally:
        for name in stand_ins:
            if name in saved:
                sys.modules[name] = saved[name]
            else:
                sys.modules.pop(name, None)
    return client


def has_tls() -> bool:
    """Whether the imported paho can do TLS (it was not imported with ``tls=False``)."""
    client = import_paho()
    return not isinstance(getattr(client, "ssl", None), NoTls)
