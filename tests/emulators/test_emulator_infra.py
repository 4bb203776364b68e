"""The shared emulator plumbing: local CA / server certificate and the uvicorn runner."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path

import requests
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from emulators._server import ServerThread
from emulators.tls import TlsFiles, ensure_ca


def _hello_app() -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/", hello)])


def test_ensure_ca_creates_and_reuses(tmp_path: Path) -> None:
    files = ensure_ca(tmp_path)
    assert isinstance(files, TlsFiles)
    contents = {p: p.read_bytes() for p in (files.ca_cert, files.ca_key, files.server_cert,
                                            files.server_key)}
    assert (files.ca_key.stat().st_mode & 0o077) == 0  # private keys are owner-only
    again = ensure_ca(tmp_path)
    assert again == files
    assert all(p.read_bytes() == data for p, data in contents.items())

    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}

    # A missing server cert is re-issued by the same CA; a broken CA replaces everything.
    files.server_cert.unlink()
    ensure_ca(tmp_path)
    assert files.ca_cert.read_bytes() == contents[files.ca_cert]
    x509.load_pem_x509_certificate(files.server_cert.read_bytes()).verify_directly_issued_by(ca)
    files.ca_key.write_text("garbage")
    ensure_ca(tmp_path)
    assert files.ca_cert.read_bytes() != contents[files.ca_cert]


def test_server_thread_tls_on_free_port(tls_files: TlsFiles) -> None:
    with ServerThread(_hello_app(), "127.0.0.1", 0, tls_files) as server:
        assert server.port > 0
        assert server.base_url == f"https://127.0.0.1:{server.port}"
        session = requests.Session()
        session.trust_env = False
        session.verify = str(tls_files.ca_cert)
        assert session.get(server.base_url + "/").text == "hello"
        # The certificate also verifies for the host name 'localhost'.
        ctx = ssl.create_default_context(cafile=str(tls_files.ca_cert))
        with socket.create_connection(("127.0.0.1", server.port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() is not None
        session.close()
    # Stopped: the port no longer answers.
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
        answered = True
    except OSError:
        answered = False
    assert not answered


def test_server_thread_plain_http_and_ipv6() -> None:
    server = ServerThread(_hello_app(), "127.0.0.1", 0).start()
    try:
        assert server.base_url.startswith("http://127.0.0.1:")
        session = requests.Session()
        session.trust_env = False
        assert session.get(server.base_url + "/").text == "hello"
        session.close()
    finally:
        server.stop()
    if socket.has_ipv6:
        try:
            v6 = ServerThread(_hello_app(), "::1", 0).start()
        except OSError:  # no IPv6 loopback in this sandbox
            return
        try:
            assert v6.base_url == f"http://[::1]:{v6.port}"
            session = requests.Session()
            session.trust_env = False
            assert session.get(v6.base_url + "/").text == "hello"
            session.close()
        finally:
            v6.stop()
