"""Import paho-mqtt without the modules an agent process never uses: 7-8 MB of its RSS.

paho's ``client`` module imports, at module level:

* PySocks (``socks``: HTTP/SOCKS proxies) and dnspython (``dns.resolver``: ``connect_srv``),
  both optional (paho works without them); the agent connects straight to ``broker.host``;
* ``urllib.request``, to read a ``mqtt_proxy`` environment variable, consulted only when PySocks
  is there; it loads ``http.client`` and the ``email`` package (2.5 MB);
* ``ssl`` (5 MB with OpenSSL's libraries), which a connection without TLS never uses: paho
  names only ``ssl.SSLWantReadError`` and ``ssl.SSLWantWriteError`` outside its TLS code, in the
  ``except`` clauses of its socket reads and writes — and Python evaluates those on every
  exception there, a reset connection included (hiding ``ssl`` as ``None`` once made a dropped
  connection kill paho's network thread).

So while paho is imported, ``socks`` and ``dns`` are made to fail the way paho expects when they
are absent (``sys.modules[name] = None`` makes ``import name`` raise ``ImportError``): proxy and
SRV support are off, as on a host without those packages. ``urllib.request`` is a placeholder
module (paho reaches it only through the proxy code, which is off), and when the agent runs
without TLS, so is ``ssl``: ``NoTls`` has the two exception classes (a plain socket never
raises them, so the ``except`` clauses behave exactly as with the real ones) and refuses any
other name. Afterwards every name is put back, so a later ``import urllib.request`` or
``import ssl`` anywhere in the process gets the real module; only paho's own reference stays
the placeholder. ``edgemon-agent run`` calls ``import_paho(tls=config.broker.tls)`` before
anything else imports paho; everything else (tests, tools) gets paho with real ``ssl``
(``mqtt`` below). Turning TLS on needs a restart anyway (SIGHUP applies only the log level).
``tests/test_agent_footprint.py`` checks what an agent process loads, with and without TLS.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["NoTls", "has_tls", "import_paho"]

ABSENT = ("socks", "dns", "dns.resolver")
"""Optional imports of paho made to fail (features: proxies, SRV lookups), as if not installed."""
PLACEHOLDER = "urllib.request"
"""Imported by paho at module level, used only by its proxy code (off without ``socks``)."""


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
    stand_ins[PLACEHOLDER] = types.ModuleType(PLACEHOLDER)
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
