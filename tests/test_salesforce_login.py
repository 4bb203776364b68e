"""How frontforce logs in to Salesforce (issue 8): the JWT bearer flow as a connected app
does it (the emulator verifies the assertion against the certificate it was given), and the
client-credentials flow; a key the app does not hold is refused with Salesforce's error."""

from __future__ import annotations

import dataclasses
import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from frontforce.config import SalesforceConfig, parse_settings
from frontforce.errors import ConfigError, FatalError
from frontforce.localstack import LocalStack, free_port
from frontforce.salesforce import connect

USERNAME = "integration@acme.example"


def key_and_cert(tmp: Path, name: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    key_path, cert_path = tmp / f"{name}.key", tmp / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@dataclasses.dataclass
class Org:
    stack: LocalStack
    key: Path
    user_id: str


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    tmp = tmp_path_factory.mktemp("sf-login")
    key, cert = key_and_cert(tmp, "connected-app")
    stack = LocalStack(state_dir=tmp, persist=False, sf_client_id="3MVG9.frontforce",
                       sf_extra_args=("--jwt-public-key", str(cert)))
    stack.ports.salesforce = free_port()
    try:
        stack.start_salesforce()
        assert stack.ca_file is not None
        admin = httpx.Client(base_url=stack.salesforce_url,
                             verify=ssl.create_default_context(cafile=str(stack.ca_file)))
        r = admin.post("/__admin/seed", json={"records": {"User": [
            {"Username": USERNAME, "Email": USERNAME, "LastName": "Integration"}]}})
        r.raise_for_status()
        yield Org(stack, key, r.json()["ids"]["User"][0])
    finally:
        stack.stop_all(infra=False)


def cfg(org: Org, **over: object) -> SalesforceConfig:
    base = {"login_url": org.stack.salesforce_url, "client_id": org.stack.sf_client_id,
            "ca_bundle": str(org.stack.ca_file), "auth": "jwt_bearer", "username": USERNAME,
            "private_key_file": str(org.key)}
    return SalesforceConfig.model_validate({**base, **over})


def test_jwt_bearer_flow_logs_in_as_the_pre_authorized_user(org: Org) -> None:
    conn = connect(cfg(org))
    assert conn.user_id == org.user_id and conn.org_id.startswith("00D")
    assert conn.client.query("SELECT Id FROM User WHERE Username = 'integration@acme.example'")["totalSize"] == 1


def test_a_key_the_connected_app_does_not_hold_is_refused(org: Org, tmp_path: Path) -> None:
    other, _ = key_and_cert(tmp_path, "stranger")
    with pytest.raises(FatalError, match="invalid_grant"):
        connect(cfg(org, private_key_file=str(other)))
    with pytest.raises(FatalError, match="invalid_grant"):
        connect(cfg(org, username="nobody@acme.example"))


def test_client_credentials_flow_still_works(org: Org) -> None:
    conn = connect(cfg(org, auth="client_credentials", client_secret=org.stack.sf_client_secret))
    assert conn.user_id.startswith("005")


def test_each_flow_asks_for_its_own_credentials_by_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings("""
front: {app_secret: x}
salesforce:
  login_url: https://x
  client_id: y
  auth: jwt_bearer
""", "cfg.yaml")
    assert "cfg.yaml:3 salesforce" in str(err.value) and "private_key_file" in str(err.value)
