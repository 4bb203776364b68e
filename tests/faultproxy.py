"""A TCP proxy on loopback whose behaviour a test switches at run time, to play a remote
service (the schema registry) that goes away and comes back while the pipeline runs.

Modes:
    ``pass``     forward bytes both ways;
    ``refuse``   accept, then close at once (the client sees a reset: a transport error);
    ``http503``  answer every request ``503 Service Unavailable`` and close.
Switching the mode also cuts the connections open at that moment, so pooled keep-alive
connections cannot carry on past a switch.
"""

from __future__ import annotations

import socket
import threading
from typing import Literal

Mode = Literal["pass", "refuse", "http503"]
_503 = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Content-Length: 48\r\nConnection: close\r\n\r\n"
        b'{"error_code":50301,"message":"fault injected"}\n')


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._mode: Mode = "pass"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.accepted = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True).start()

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        with self._lock:
            self._mode = value
            doomed, self._open = self._open, set()
        for s in doomed:
            _close(s)

    def close(self) -> None:
        self._closed.set()
        self.mode = "refuse"
        _close(self._server)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        mode = self._mode
        if mode == "refuse":
            # linger 0: close with a reset, as a registry process that just died would
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
            return
        if mode == "http503":
            try:
                client.settimeout(5)
                client.recv(65536)
                client.sendall(_503)
            except OSError:
                pass
            _close(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close(src)
        _close(dst)


def _close(s: socket.socket) -> None:
    # shutdown() first: it wakes a recv() blocked in another thread, close() alone does not.
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
