"""Forwarding stored samples to Prometheus remote-write receivers (see README.md: the encoder
and the client exist; the durable forwarder does not yet)."""

from edgemon.collector.forward.client import Outcome, RemoteWriteClient
from edgemon.collector.forward.remote_write import decode, encode, series_labels

__all__ = ["Outcome", "RemoteWriteClient", "decode", "encode", "series_labels"]
