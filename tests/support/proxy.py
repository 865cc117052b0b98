"""A TCP relay on loopback that can silently lose a direction of traffic: network fault
injection between a real client and a real broker (what a lossy middlebox, or a broker that
drops its own packets, does to an MQTT session whose TCP connection stays up)."""

from __future__ import annotations

import select
import socket
import threading

from .broker import free_port


class LossyRelay:
    """Relays 127.0.0.1:``port`` to ``target_port``. ``lose_downstream()`` discards, from then on,
    what the target sends on the connections open now (the sockets stay open and quiet); new
    connections are relayed faithfully, unless ``refusing`` (then they are closed at once)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._lossy: set[int] = set()  # ids of connection pairs losing downstream bytes
        self._partitioned: set[int] = set()  # ids of connection pairs passing nothing
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self.refusing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_downstream(self) -> None:
        with self._lock:
            self._lossy = {id(pair) for pair in self._pairs}

    def partition(self) -> None:
        """A network partition for the connections open now: nothing passes either way, and
        neither side's close reaches the other (their sockets to the relay stay open) until
        ``close()``."""
        with self._lock:
            self._partitioned |= {id(pair) for pair in self._pairs}

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for pair in self._pairs:
                for sock in pair:
                    sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                self._pairs.append(pair)
                self.connections += 1
            threading.Thread(target=self._relay, args=(pair,), daemon=True).start()

    def _relay(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, upstream = pair
        try:
            while True:
                with self._lock:
                    cut = id(pair) in self._partitioned
                if cut:
                    while not self._closed:
                        select.select([], [], [], 0.1)
                    return
                readable, _, _ = select.select([client, upstream], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        upstream.sendall(data)
                    else:
                        with self._lock:
                            lossy = id(pair) in self._lossy
                        if not lossy:
                            client.sendall(data)
        except (OSError, ValueError):  # ValueError: select() on a socket close() closed
            return
        finally:
            for sock in pair:
                sock.close()
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
