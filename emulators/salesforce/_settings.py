"""Emulator configuration that is not org data (org data and limits live in OrgState)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_CLIENT_ID", "DEFAULT_CLIENT_SECRET", "Settings"]

DEFAULT_CLIENT_ID = "frontforce-emulator-client"
DEFAULT_CLIENT_SECRET = "frontforce-emulator-secret"


@dataclass(frozen=True)
class Settings:
    # Connected-app credentials for client_credentials.
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    # JWT bearer: `iss` must equal this consumer key (defaults to client_id). With a PEM
    # public key or X.509 certificate the RS256 signature is verified; without one any
    # well-formed, unexpired RS256 JWT is accepted (signature NOT checked) — test convenience.
    jwt_consumer_key: str | None = None
    jwt_public_key: str | None = None
    # Accepted `aud` values besides the emulator's own base URL.
    jwt_audiences: tuple[str, ...] = ("https://login.salesforce.com",
                                      "https://test.salesforce.com")
    # Salesforce rejects assertions whose exp is far in the future (~3 min documented).
    jwt_max_lifetime: float = 300.0
    # instance_url returned by the token endpoint; default = the URL the client called.
    instance_url: str | None = None
    # Saved on shutdown (lifespan) when set.
    persist_path: Path | None = None
    # Admin API only from loopback peers.
    admin_loopback_only: bool = True

    @property
    def consumer_key(self) -> str:
        return self.jwt_consumer_key or self.client_id
