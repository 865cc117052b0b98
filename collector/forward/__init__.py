"""Forwarding stored samples to Prometheus remote-write receivers (see README.md)."""
