"""OAuth token endpoint: client credentials and JWT bearer (fact sheet §1.1)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulators.salesforce import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, canonical_id
from tests.emulators.conftest import Emulator

INTEGRATION_USERNAME = "integration@frontforce.emulator"


def post_token(emulator: Emulator, **kwargs: Any) -> Any:
    return emulator.session.post(f"{emulator.base_url}/services/oauth2/token", **kwargs)


def test_client_credentials_response_shape(emulator: Emulator) -> None:
    before_ms = int(time.time() * 1000)
    resp = post_token(emulator, data={"grant_type": "client_credentials"},
                      auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"access_token", "signature", "scope", "instance_url", "id",
                         "token_type", "issued_at"}  # notably no expires_in
    assert body["token_type"] == "Bearer"
    assert body["instance_url"] == emulator.base_url
    org_id, user_id = body["id"].rsplit("/", 2)[1:]
    assert body["id"] == f"{emulator.base_url}/id/{org_id}/{user_id}"
    assert org_id.startswith("00D") and canonical_id(org_id) == org_id
    assert user_id.startswith("005") and canonical_id(user_id) == user_id
    assert body["access_token"].startswith(org_id[:15] + "!")
    assert before_ms <= int(body["issued_at"]) <= int(time.time() * 1000)
    expected = base64.b64encode(hmac.new(DEFAULT_CLIENT_SECRET.encode(),
                                         (body["id"] + body["issued_at"]).encode(),
                                         hashlib.sha256).digest()).decode()
    assert body["signature"] == expected
    # The token user is the org's integration user, visible through the API.
    sf = emulator.client(token=body)
    user = sf.User.get(user_id)
    assert user["Username"] == INTEGRATION_USERNAME and user["IsActive"] is True


def test_client_credentials_in_body_and_failures(emulator: Emulator) -> None:
    ok = post_token(emulator, data={"grant_type": "client_credentials",
                                    "client_id": DEFAULT_CLIENT_ID,
                                    "client_secret": DEFAULT_CLIENT_SECRET})
    assert ok.status_code == 200
    bad_basic = post_token(emulator, data={"grant_type": "client_credentials"},
                           auth=(DEFAULT_CLIENT_ID, "wrong"))
    assert bad_basic.status_code == 401
    assert bad_basic.json() == {"error": "invalid_client",
                                "error_description": "invalid client credentials"}
    bad_body = post_token(emulator, data={"grant_type": "client_credentials",
                                          "client_id": "someone", "client_secret": "else"})
    assert bad_body.status_code == 400 and bad_body.json()["error"] == "invalid_client"
    unsupported = post_token(emulator, data={"grant_type": "password"})
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"
    # Token requests are not API calls.
    assert emulator.stats()["api_calls"] == 0 and emulator.stats()["token_requests"] == 4


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public.decode()


def assertion(private_key: bytes, **overrides: Any) -> str:
    claims = {"iss": DEFAULT_CLIENT_ID, "sub": INTEGRATION_USERNAME,
              "aud": "https://login.salesforce.com", "exp": int(time.time()) + 180}
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, private_key,
                      algorithm="RS256")


def jwt_grant(emulator: Emulator, token: str) -> Any:
    return post_token(emulator, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": token})


def test_jwt_bearer_with_verified_signature(make_emulator: Callable[..., Emulator],
                                            rsa_pair: tuple[bytes, str]) -> None:
    private, public = rsa_pair
    emulator = make_emulator(jwt_public_key=public)
    resp = jwt_grant(emulator, assertion(private))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {"access_token", "instance_url", "id", "token_type", "scope"} <= set(body)
    assert "expires_in" not in body and "refresh_token" not in body
    sf = emulator.client(token=body)
    created = sf.Contact.create({"LastName": "ViaJwt"})
    assert sf.Contact.get(created["id"])["CreatedById"] == body["id"].rsplit("/", 1)[1]

    # The emulator's own URL is an acceptable audience too (token URL is configurable).
    assert jwt_grant(emulator, assertion(private, aud=emulator.base_url)).status_code == 200

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    failures = {
        "forged": (assertion(other_key), "invalid_grant", "invalid assertion"),
        "expired": (assertion(private, exp=int(time.time()) - 5), "invalid_grant",
                    "expired authorization code"),
        "wrong iss": (assertion(private, iss="other-app"), "invalid_client_id",
                      "client identifier invalid"),
        "wrong aud": (assertion(private, aud="https://evil.example"), "invalid_grant",
                      "audience is invalid"),
        "unknown user": (assertion(private, sub="nobody@example.com"), "invalid_grant",
                         "user hasn't approved this consumer"),
        "not a jwt": ("garbage", "invalid_grant", "invalid assertion"),
    }
    for name, (token, error, description) in failures.items():
        resp = jwt_grant(emulator, token)
        assert resp.status_code == 400, name
        assert resp.json() == {"error": error, "error_description": description}, name


def test_jwt_bearer_without_configured_key_checks_claims_only(
        emulator: Emulator, rsa_pair: tuple[bytes, str]) -> None:
    private, _ = rsa_pair
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    # Documented test mode: any well-formed RS256 assertion with the right iss is accepted.
    assert jwt_grant(emulator, assertion(other_key)).status_code == 200
    assert jwt_grant(emulator, assertion(private, iss="other")).json()["error"] == \
        "invalid_client_id"
    hs256 = jwt.encode({"iss": DEFAULT_CLIENT_ID, "sub": INTEGRATION_USERNAME,
                        "aud": "https://login.salesforce.com", "exp": int(time.time()) + 60},
                       "a-shared-secret-of-sufficient-length", algorithm="HS256")
    assert jwt_grant(emulator, hs256).json()["error"] == "invalid_grant"


def test_jwt_for_a_seeded_user_acts_as_that_user(emulator: Emulator,
                                                 rsa_pair: tuple[bytes, str]) -> None:
    private, _ = rsa_pair
    user_id = emulator.seed({"User": [{"Email": "rep@acme.com", "LastName": "Rep"}]})["User"][0]
    body = jwt_grant(emulator, assertion(private, sub="rep@acme.com")).json()
    assert body["id"].endswith(f"/{user_id}")
    sf = emulator.client(token=body)
    task = sf.Task.get(sf.Task.create({"Subject": "x"})["id"])
    assert task["OwnerId"] == task["CreatedById"] == user_id
