"""An authenticated simple-salesforce client from configuration.

simple-salesforce builds its own token URL on ``*.salesforce.com`` (see
reference/salesforce-api.md §1.2), so we do the OAuth POST against the configured login URL
ourselves (client credentials, or the JWT bearer flow as server-to-server integrations do)
and hand the token to ``Salesforce(session_id=...)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from simple_salesforce import Salesforce

from frontforce.config import SalesforceConfig
from frontforce.errors import FatalError, RetriableError


@dataclass(frozen=True)
class SalesforceConnection:
    client: Salesforce
    user_id: str  # the integration user: every change it makes is an echo of ours
    org_id: str


class _TimeoutSession(requests.Session):
    """A session whose requests never wait forever: simple-salesforce's own helpers
    (``describe()``, ``query()``...) pass no ``timeout=``, and requests' default is none, so
    one stalled call would hold a consumer past ``max.poll.interval.ms``."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        return super().request(method, url, *args, **kwargs)


def make_session(cfg: SalesforceConfig) -> requests.Session:
    """A session that trusts the configured CA and gives every call ``cfg.timeout_s``."""
    session = _TimeoutSession(cfg.timeout_s)
    # REQUESTS_CA_BUNDLE would override session.verify for every call simple-salesforce
    # makes (it never passes verify=); ignore the environment and pin our trust explicitly.
    session.trust_env = False
    session.verify = str(cfg.ca_bundle) if cfg.ca_bundle else True
    return session


JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Salesforce refuses assertions that expire more than a few minutes ahead (fact sheet §1.1).
JWT_LIFETIME_S = 180


def jwt_assertion(cfg: SalesforceConfig, now: float | None = None) -> str:
    """The signed assertion of the JWT bearer flow: iss = consumer key, sub = username,
    aud = login host, exp = now + 3 minutes, RS256 with the key whose certificate the
    connected app holds."""
    assert cfg.private_key_file is not None and cfg.username is not None
    try:
        key = cfg.private_key_file.read_bytes()
    except OSError as exc:
        raise FatalError(f"salesforce.private_key_file: cannot read: {exc.strerror}") from exc
    issued = time.time() if now is None else now
    claims = {"iss": cfg.client_id, "sub": cfg.username, "aud": cfg.jwt_audience,
              "exp": int(issued) + JWT_LIFETIME_S}
    try:
        return jwt.encode(claims, key, algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise FatalError(f"salesforce.private_key_file is not a usable RSA key: {exc}") from exc


# The client id frontforce's Salesforce calls carry (Sforce-Call-Options).
CALL_CLIENT = "frontforce"


def is_our_change(change_origin: str | None, commit_user: str | None = None,
                  integration_user_id: str | None = None) -> bool:
    """A change event made by a frontforce call: its changeOrigin names our client id, or
    (when ``salesforce.integration_user_id`` is set: a user only frontforce logs in as) its
    commitUser is that user. The second holds even where Salesforce would not carry the
    ``client=`` of a composite subrequest into changeOrigin (the fact sheet: unconfirmed)."""
    if change_origin and f"client={CALL_CLIENT}" in str(change_origin).replace(" ", ""):
        return True
    return bool(integration_user_id) and commit_user is not None and (
        commit_user[:15] == str(integration_user_id)[:15])


def connect(cfg: SalesforceConfig) -> SalesforceConnection:
    """Log in with the configured OAuth flow (a new token each call: on INVALID_SESSION_ID the
    caller connects again) and hand simple-salesforce the session."""
    session = make_session(cfg)
    url = cfg.login_url.rstrip("/") + "/services/oauth2/token"
    try:
        if cfg.auth == "jwt_bearer":
            resp = session.post(url, data={"grant_type": JWT_GRANT, "assertion": jwt_assertion(cfg)},
                                timeout=cfg.timeout_s)
        else:
            assert cfg.client_secret is not None  # the config validator insists
            resp = session.post(
                url,
                data={"grant_type": "client_credentials"},
                auth=(cfg.client_id, cfg.client_secret.get_secret_value()),
                timeout=cfg.timeout_s,
            )
    except requests.RequestException as exc:
        raise RetriableError(f"salesforce login: {type(exc).__name__}: {exc}") from exc
    if resp.status_code >= 500:
        raise RetriableError(f"salesforce login: HTTP {resp.status_code}")
    if resp.status_code != 200:
        try:
            body = resp.json()
            why = f"{body.get('error')}: {body.get('error_description')}"
        except ValueError:
            why = resp.text[:200]
        raise FatalError(f"salesforce login refused (HTTP {resp.status_code}) {why}")
    token = resp.json()
    # id URL: .../id/<org id>/<user id>
    parts = str(token.get("id", "")).rstrip("/").split("/")
    org_id, user_id = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
    client = Salesforce(
        session_id=token["access_token"],
        instance_url=token["instance_url"],
        session=session,
        version=cfg.api_version,
    )
    # Every write of ours shows in Change Data Capture as changeOrigin "...;client=<id>":
    # the worker's loop guard tells our own echoes from a person's change by it.
    client.headers["Sforce-Call-Options"] = f"client={CALL_CLIENT}"
    return SalesforceConnection(client=client, user_id=user_id, org_id=org_id)
