"""What an agent process loads (lean_paho.py): no http.client, email, PySocks or dnspython, and
no ssl unless TLS is configured — and paho still survives a lost connection without them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.broker import Broker
from tests.support.processes import Agent
from tests.support.waiting import wait_until

LOADED = """
import json, sys
from edgemon.agent.lean_paho import NoTls, has_tls, import_paho
client = import_paho(tls={tls})
out = {{"loaded": sorted(m for m in ("ssl", "_ssl", "http.client", "email", "socks", "dns",
                                     "urllib.request", "hashlib", "_hashlib")
                          if sys.modules.get(m) is not None),
       "has_tls": has_tls(), "paho_ssl_is_stub": isinstance(client.ssl, NoTls)}}
try:
    client.ssl.SSLContext
except AttributeError as exc:
    out["stub_refuses"] = str(exc)
out["deferred_works"] = client.hashlib.sha1(b"x").hexdigest()[:8]  # loads the real one now
import hashlib, ssl, urllib.request  # the real modules for anyone else in the process
out["real_after"] = [hasattr(ssl, "SSLContext"), hasattr(urllib.request, "urlopen"),
                     hasattr(hashlib, "sha256")]
print(json.dumps(out))
"""


def _loaded(tls: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", LOADED.format(tls=tls)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def test_paho_without_tls_loads_no_ssl_and_no_http_stack() -> None:
    out = _loaded(False)
    assert out["loaded"] == []
    assert out["has_tls"] is False and out["paho_ssl_is_stub"] is True
    assert "started without TLS" in out["stub_refuses"]
    assert out["real_after"] == [True, True, True]
    assert out["deferred_works"] == "11f6ad8e"  # sha1(b"x")


def test_paho_with_tls_has_the_real_ssl() -> None:
    out = _loaded(True)
    assert out["loaded"] == ["_ssl", "ssl"]  # and still no http.client, email, socks, dns
    assert out["has_tls"] is True and out["paho_ssl_is_stub"] is False
    assert "stub_refuses" not in out


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_an_agent_without_tls_never_maps_ssl_and_survives_a_killed_broker(
        tmp_path: Path, broker: Broker) -> None:
    agent = Agent(tmp_path / "agent", broker, interval=0.1)
    agent.start()
    try:
        wait_until(lambda: agent.output().count('"connected to the broker"') >= 1, 20,
                   f"agent connected ({agent.log})")
        assert agent.proc is not None
        maps = _maps(agent.proc.pid)
        assert "_ssl" not in maps and "libssl" not in maps and "libcrypto" not in maps
        # a reset connection runs paho's `except ssl.SSLWantReadError` clauses: the stand-in's
        # classes must make them behave as with the real module (the network thread lives on)
        broker.kill()
        wait_until(lambda: "connection lost" in agent.output(), 20, f"agent noticed ({agent.log})")
        broker.start()
        wait_until(lambda: agent.output().count('"connected to the broker"') >= 2, 30,
                   f"agent reconnected ({agent.log})")
        assert agent.running()
        assert "_ssl" not in _maps(agent.proc.pid)
        assert "Traceback" not in agent.output()
    finally:
        assert agent.terminate() == 0
