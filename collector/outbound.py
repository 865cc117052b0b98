"""Outbound HTTP for the collector (Alertmanagers, remote-write receivers): the TLS context and
the authorization header an ``OutboundHttpConfig`` asks for, and capped exponential back-off."""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass

from edgemon.collector.config import OutboundHttpConfig

__all__ = ["Backoff", "authorization", "client_ssl_context"]


def client_ssl_context(cfg: OutboundHttpConfig) -> ssl.SSLContext | None:
    """None for http:// URLs; else a verifying context (``ca_file`` or the system CAs, a
    client certificate when given, no verification at all with ``insecure_skip_verify``)."""
    if not cfg.url.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert_file is not None and cfg.key_file is not None:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    if cfg.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def authorization(cfg: OutboundHttpConfig) -> str | None:
    """The ``Authorization`` header value (files are read now: call again to pick up a
    rotated secret), or None."""
    if cfg.username is not None:
        if cfg.password_file is not None:
            password = cfg.password_file.read_text().strip()
        else:
            password = cfg.password.get_secret_value() if cfg.password else ""
        pair = f"{cfg.username}:{password}".encode()
        return "Basic " + base64.b64encode(pair).decode()
    if cfg.bearer_token_file is not None:
        return "Bearer " + cfg.bearer_token_file.read_text().strip()
    if cfg.bearer_token is not None:
        return "Bearer " + cfg.bearer_token.get_secret_value()
    return None


@dataclass
class Backoff:
    """Delay before the next attempt after ``failures`` consecutive failures:
    ``initial`` doubling up to ``maximum`` (seconds)."""

    initial: float
    maximum: float
    failures: int = 0

    def failed(self) -> float:
        self.failures += 1
        return float(min(self.maximum, self.initial * 2 ** min(self.failures - 1, 40)))

    def succeeded(self) -> None:
        self.failures = 0
