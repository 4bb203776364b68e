"""OAuth token endpoint (client_credentials, JWT bearer) and bearer-session checks (§1.1).

Token responses carry no ``expires_in``: sessions die after ``session_timeout`` seconds of
inactivity and the client learns it from a 401 ``INVALID_SESSION_ID`` array.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from emulators.salesforce._settings import Settings
from emulators.salesforce._store import OrgState

__all__ = ["INVALID_SESSION", "OAuthError", "check_session", "issue_token", "session_for"]

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
INVALID_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.body = {"error": error, "error_description": description}


def _form(body: bytes, query: str) -> dict[str, str]:
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    params.update({k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()})
    return params


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _public_key(pem: str) -> Any:
    data = pem.encode()
    if b"CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


def _jwt_user(state: OrgState, settings: Settings, assertion: str, base_url: str) -> str:
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise OAuthError(400, "invalid_grant", "invalid assertion") from None
    if header.get("alg") != "RS256":
        raise OAuthError(400, "invalid_grant", "invalid assertion")
    audiences = [*settings.jwt_audiences, base_url.rstrip("/")]
    if settings.instance_url:
        audiences.append(settings.instance_url.rstrip("/"))
    # exp is checked below against the org clock (which tests may shift), not by pyjwt.
    options: Any = {"verify_aud": False, "verify_exp": False, "require": ["exp"]}
    try:
        if settings.jwt_public_key:
            claims = jwt.decode(assertion, _public_key(settings.jwt_public_key),
                                algorithms=["RS256"], options=options)
        else:
            # No key configured: accept the signature unverified (documented test mode).
            claims = jwt.decode(assertion, options={**options, "verify_signature": False})
        exp = float(claims["exp"])
    except (jwt.PyJWTError, TypeError, ValueError):
        raise OAuthError(400, "invalid_grant", "invalid assertion") from None
    if exp <= state.epoch():
        raise OAuthError(400, "invalid_grant", "expired authorization code")
    if claims.get("iss") != settings.consumer_key:
        raise OAuthError(400, "invalid_client_id", "client identifier invalid")
    if str(claims.get("aud", "")).rstrip("/") not in audiences:
        raise OAuthError(400, "invalid_grant", "audience is invalid")
    if exp - state.epoch() > settings.jwt_max_lifetime:
        raise OAuthError(400, "invalid_grant", "invalid assertion")
    username = str(claims.get("sub", "")).lower()
    for user in state.live("User"):
        if str(user["Username"]).lower() == username and user["IsActive"]:
            return str(user["Id"])
    raise OAuthError(400, "invalid_grant", "user hasn't approved this consumer")


def _client_credentials(settings: Settings, params: dict[str, str],
                        authorization: str | None) -> None:
    basic = _basic(authorization)
    client_id, secret = basic or (params.get("client_id", ""), params.get("client_secret", ""))
    candidates = [(client_id, secret)]
    if basic:
        # RFC 6749 §2.3.1 says to form-urlencode before Basic-encoding; requests does not.
        # Accept both spellings.
        candidates.append((unquote_plus(client_id), unquote_plus(secret)))
    ok = any(hmac.compare_digest(cid.encode(), settings.client_id.encode()) and
             hmac.compare_digest(sec.encode(), settings.client_secret.encode())
             for cid, sec in candidates)
    if not ok:
        # RFC 6749 §5.2: 401 when the client authenticated via the Authorization header.
        raise OAuthError(401 if basic else 400, "invalid_client", "invalid client credentials")


def issue_token(state: OrgState, settings: Settings, body: bytes, query: str,
                authorization: str | None, base_url: str) -> dict[str, Any]:
    """Handle POST /services/oauth2/token; raises OAuthError. Caller holds state.lock."""
    state.stats["token_requests"] += 1
    params = _form(body, query)
    grant = params.get("grant_type")
    instance_url = (settings.instance_url or base_url).rstrip("/")
    if grant == "client_credentials":
        _client_credentials(settings, params, authorization)
        user_id = state.integration_user_id
        client_id = settings.client_id
    elif grant == JWT_GRANT:
        user_id = _jwt_user(state, settings, params.get("assertion", ""), base_url)
        client_id = settings.consumer_key
    else:
        raise OAuthError(400, "unsupported_grant_type", "grant type not supported")
    token = f"{state.org_id[:15]}!{secrets.token_urlsafe(48)}"
    now = state.epoch()
    state.sessions[token] = {"user_id": user_id, "issued": now, "last_used": now,
                             "client_id": client_id}
    identity = f"{instance_url}/id/{state.org_id}/{user_id}"
    response: dict[str, Any] = {"access_token": token, "scope": "api",
                                "instance_url": instance_url, "id": identity,
                                "token_type": "Bearer"}
    if grant == "client_credentials":
        issued_at = str(int(now * 1000))
        digest = hmac.new(settings.client_secret.encode(), (identity + issued_at).encode(),
                          hashlib.sha256).digest()
        response |= {"issued_at": issued_at, "signature": base64.b64encode(digest).decode()}
    return response


def check_session(state: OrgState, authorization: str | None) -> str | None:
    """Return the session's user id, or None (-> 401). Touches the idle timer."""
    session = session_for(state, authorization)
    return None if session is None else str(session["user_id"])


def session_for(state: OrgState, authorization: str | None) -> dict[str, Any] | None:
    """Return the live session (user_id, client_id, ...) or None. Touches the idle timer."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() not in ("bearer", "oauth") or not token:
        return None
    session = state.sessions.get(token.strip())
    if session is None:
        return None
    now = state.epoch()
    if now - session["last_used"] > float(state.config["session_timeout"]):
        del state.sessions[token.strip()]
        return None
    session["last_used"] = now
    return session
