"""Run an ASGI app under uvicorn, optionally with TLS, blocking or in a background thread.

Shared by the Salesforce and Front emulators. We bind the listening socket ourselves (instead
of letting uvicorn do it) so that ``port=0`` yields a known free port *before* serving starts,
and callers can print/announce the real address.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn

from emulators.tls import TlsFiles

__all__ = ["ServerThread", "bind_socket", "serve"]

ASGIApp = Any  # uvicorn accepts any ASGI callable; keep the helper framework-agnostic.


def bind_socket(host: str, port: int) -> socket.socket:
    """Create a listening TCP socket for ``host``/``port`` (IPv4 or IPv6; port 0 = any free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    # Without it every keep-alive response waits ~40 ms (Nagle + delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


# Idle keep-alive TLS connections only go away once the client answers close_notify, which
# pooled HTTP clients never do while idle, so a plain graceful shutdown waits for asyncio's
# 30 s SSL shutdown timeout. We give in-flight responses _LINGER seconds, then abort what is
# left; uvicorn then still runs the app's lifespan shutdown (where the Salesforce emulator
# persists its state). GRACEFUL_SHUTDOWN_SECONDS bounds everything else.
GRACEFUL_SHUTDOWN_SECONDS = 3
_LINGER = 0.3


def _config(app: ASGIApp, host: str, port: int, ssl: TlsFiles | None, log_level: str) -> Any:
    kwargs: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "lifespan": "on",
        # The emulators are loopback services for tests; access logs only add noise.
        "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
    }
    if ssl is not None:
        kwargs["ssl_certfile"] = str(ssl.server_cert)
        kwargs["ssl_keyfile"] = str(ssl.server_key)
    return uvicorn.Config(app, **kwargs)


def _scheme(ssl: TlsFiles | None) -> str:
    return "https" if ssl is not None else "http"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _serve(server: uvicorn.Server, sock: socket.socket, base_url: str,
                 on_ready: Callable[[str], None] | None) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started and on_ready is not None:
        on_ready(base_url)
    while not task.done() and not server.should_exit:
        await asyncio.sleep(0.05)
    if not task.done():
        await asyncio.sleep(_LINGER)
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
    await task


def _few_full_collections() -> None:
    """An emulator keeps every record and change event it was sent, and Python's full
    garbage collection walks all of them: with 70,000 Tasks and their change events one took
    about 0.6 s, and under load one came every few seconds, each a stall of every call in
    flight, which Salesforce's own API latency does not have (BENCHMARKS.md, latency). So an
    emulator process freezes what it holds at start and runs a full collection only after
    10,000 young ones (Python's default: 10). The org's records are plain dicts, freed by
    reference counting; cyclic garbage that outlives two young collections waits longer."""
    gc.freeze()
    gc.set_threshold(700, 10, 10_000)


def serve(
    app: ASGIApp,
    host: str,
    port: int,
    ssl: TlsFiles | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM. ``on_ready(base_url)`` runs once it is listening.

    uvicorn installs its own signal handlers while serving and re-raises the signal after a
    graceful shutdown, so work that must happen on shutdown belongs in the app's lifespan.
    """
    _few_full_collections()
    sock = bind_socket(host, port)
    real_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, host, real_port, ssl, log_level))
    base_url = f"{_scheme(ssl)}://{_url_host(host)}:{real_port}"
    try:
        asyncio.run(_serve(server, sock, base_url, on_ready))
    finally:
        sock.close()


class ServerThread:
    """Run an ASGI app in a daemon thread; use as a context manager or via start()/stop()."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: TlsFiles | None = None,
        *,
        log_level: str = "warning",
        startup_timeout: float = 15.0,
    ) -> None:
        self.app = app
        self.host = host
        self.ssl = ssl
        self._requested_port = port
        self._log_level = log_level
        self._startup_timeout = startup_timeout
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int = port

    @property
    def base_url(self) -> str:
        return f"{_scheme(self.ssl)}://{_url_host(self.host)}:{self.port}"

    def start(self) -> ServerThread:
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._sock = bind_socket(self.host, self._requested_port)
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(
            _config(self.app, self.host, self.port, self.ssl, self._log_level)
        )
        server, sock, url = self._server, self._sock, self.base_url
        self._thread = threading.Thread(
            target=lambda: asyncio.run(_serve(server, sock, url, None)),
            name=f"asgi-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError("server thread exited during startup")
            if self._server.started and self._port_answers():
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"server on port {self.port} did not start in time")

    def _port_answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = GRACEFUL_SHUTDOWN_SECONDS + 5.0) -> None:
        """Ask the server to exit and wait for it. Close client sessions first for a fast stop."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
