"""Import paho-mqtt without the optional modules the agent never uses (2.5 MB of its RSS).

paho's ``client`` module imports, at module level, PySocks (``socks``: HTTP/SOCKS proxies),
dnspython (``dns.resolver``: ``connect_srv``) and ``urllib.request`` (to read a ``mqtt_proxy``
environment variable, which it consults only when PySocks is installed); ``urllib.request``
in turn loads ``http.client`` and the ``email`` package. The agent connects directly to
``broker.host`` and never uses any of that, so while paho is imported we make those three
imports fail the way paho expects when they are absent (``sys.modules[name] = None`` is the
documented way to make ``import name`` raise ``ImportError``), which turns paho's proxy and SRV
support off exactly as on a host without PySocks or dnspython. ``urllib.request`` is handed a
placeholder module only for the duration of the import: paho reaches it only through its proxy
code, which is off, and once paho is imported every name is put back, so any later
``import urllib.request`` in the process gets the real module. ``ssl`` is left alone: TLS works
as before when ``broker.tls`` is set.

Importing this module does it (``mqtt`` is the client module): the publisher imports ``mqtt``
from here, before ``edgemon.common.mqtt_client`` imports paho the usual way (the module cache
then holds the lean one). ``tests/test_agent_footprint.py`` checks what an agent process loads.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["SKIPPED", "import_paho", "mqtt"]

SKIPPED = ("socks", "dns", "dns.resolver")
"""Optional imports of paho made to fail (features: proxies, SRV lookups), as if not installed."""
PLACEHOLDER = "urllib.request"
"""Imported by paho at module level, used only by its proxy code (off without ``socks``)."""


def import_paho() -> Any:
    """``paho.mqtt.client``, imported without proxy and SRV support if it is not yet imported."""
    if "paho.mqtt.client" in sys.modules:
        return sys.modules["paho.mqtt.client"]
    names = (*SKIPPED, PLACEHOLDER)
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    for name in SKIPPED:
        sys.modules[name] = None  # type: ignore[assignment]
    if PLACEHOLDER not in saved:
        sys.modules[PLACEHOLDER] = types.ModuleType(PLACEHOLDER)
    try:
        import paho.mqtt.client as client
    finally:
        for name in names:
            if name in saved:
                sys.modules[name] = saved[name]
            else:
                sys.modules.pop(name, None)
    return client


mqtt = import_paho()
