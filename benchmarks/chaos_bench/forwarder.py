"""A TCP forwarder that stands in for the metrics endpoint: stop it and the endpoint is gone, start it again.

The rollout controller scrapes ``http://127.0.0.1:<listen>/metrics``; the forwarder passes each connection
to Ray's metrics export port. ``stop()`` closes the listener and every open connection, so a scrape is
refused outright, as it is when the endpoint's process is down; ``start()`` listens on the same port again.
"""

from __future__ import annotations

import socket
import threading

HOST = "127.0.0.1"
ACCEPT_POLL_S = 0.2


class TcpForwarder:
    """127.0.0.1:``listen_port`` forwarded to 127.0.0.1:``upstream_port``, one thread pair per connection."""

    def __init__(self, listen_port: int, upstream_port: int):
        self.listen_port, self.upstream_port = listen_port, upstream_port
        self._server: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0  # connections forwarded since construction

    @property
    def running(self) -> bool:
        """Whether it listens now."""
        return self._server is not None

    def start(self) -> None:
        """Listen (again) on the listen port and forward every connection."""
        if self._server is not None:
            return
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, self.listen_port))
        server.listen(32)
        server.settimeout(ACCEPT_POLL_S)
        self._stopping.clear()
        self._server = server
        self._acceptor = threading.Thread(target=self._accept, args=(server,), name="forwarder", daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Stop listening and cut every open connection: the endpoint is gone until ``start()``."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        server.close()
        with self._lock:
            sockets, self._open = set(self._open), set()
        for sock in sockets:
            _close(sock)

    def _accept(self, server: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.upstream_port), timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
                self.connections += 1
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                _close(sock)
                with self._lock:
                    self._open.discard(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
