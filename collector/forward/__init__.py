"""Forwarding stored samples to Prometheus remote-write receivers, durably (see README.md)."""

from edgemon.collector.forward.client import Outcome, RemoteWriteClient
from edgemon.collector.forward.remote_write import decode, encode, series_labels

__all__ = ["Outcome", "RemoteWriteClient", "decode", "encode", "series_labels"]
