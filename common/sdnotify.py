"""Tiny sd_notify client (stdlib only): tell systemd (``Type=notify``) how the service is doing."""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "watchdog_interval"]


def notify(message: str) -> bool:
    """Send ``message`` ("READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=...", lines joined by
    newlines) to ``$NOTIFY_SOCKET``; "RELOADING=1" gets its MONOTONIC_USEC added. False, never
    an exception, when not started by systemd or when the datagram cannot be sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):  # unset, or a kind we do not speak (vsock:...)
        return False
    if address[0] == "@":  # abstract namespace
        address = "\0" + address[1:]
    lines = message.split("\n")
    if "RELOADING=1" in lines and not any(x.startswith("MONOTONIC_USEC=") for x in lines):
        message += f"\nMONOTONIC_USEC={time.monotonic_ns() // 1000}"  # CLOCK_MONOTONIC
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """``WatchdogSec=`` in seconds if systemd expects WATCHDOG=1 from this process, else None.
    Send it at least twice per interval, and only while the main loop makes progress."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
