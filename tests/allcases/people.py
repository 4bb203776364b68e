"""The people on each side, changing things the way people do, never through frontforce.

- ``SalesforcePerson``: a sales rep with their own Salesforce User, logged in through the
  connected app's JWT bearer flow (the emulator accepts an unverified RS256 assertion when
  no certificate is configured, as its docs say). Their writes go through the public REST
  API without ``Sforce-Call-Options``: change events name *their* User as ``commitUser``
  and a changeOrigin without ``client=frontforce`` — what a person in the UI or a data
  loader leaves behind.
- ``FrontTeammate``: a Front teammate (and the customers writing in), through the Front
  emulator's ``/__admin/simulate`` actions: events whose ``source._meta.type`` is
  ``teammate`` (``inboxes`` for a customer's message), delivered to frontforce's receiver
  as signed application webhooks by the emulator's own dispatcher.
"""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class SalesforcePerson:
    def __init__(self, base_url: str, ca_file: str, consumer_key: str, username: str,
                 api_version: str = "59.0") -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=30,
                                 verify=ssl.create_default_context(cafile=ca_file))
        self.consumer_key = consumer_key
        self.username = username
        self.api = f"/services/data/v{api_version}"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._token: str | None = None
        self.user_id = ""
        self.writes = 0
        self._lock = threading.Lock()

    def login(self) -> None:
        assertion = jwt.encode({"iss": self.consumer_key, "sub": self.username,
                                "aud": self.base_url, "exp": int(time.time()) + 120},
                               self._key, algorithm="RS256")
        r = self.http.post("/services/oauth2/token",
                           data={"grant_type": JWT_GRANT, "assertion": assertion})
        r.raise_for_status()
        body = r.json()
        self._token = body["access_token"]
        self.user_id = str(body["id"]).rstrip("/").rsplit("/", 1)[-1]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._token is None:
            self.login()
        for _ in range(2):
            r = self.http.request(method, f"{self.api}/{path}", json=body,
                                  headers={"Authorization": f"Bearer {self._token}"})
            if r.status_code == 401:  # session timed out: log in again
                self.login()
                continue
            if r.status_code >= 300:
                raise AssertionError(f"{method} {path} as {self.username}: {r.status_code} {r.text}")
            with self._lock:
                self.writes += 1
            return r.json() if r.content else None
        raise AssertionError(f"{method} {path}: still 401 after a fresh login")

    def update(self, sobject: str, record_id: str, **fields: Any) -> None:
        self._call("PATCH", f"sobjects/{sobject}/{record_id}", fields)

    def create(self, sobject: str, **fields: Any) -> str:
        return str(self._call("POST", f"sobjects/{sobject}", fields)["id"])

    def close(self) -> None:
        self.http.close()


class FrontTeammate:
    def __init__(self, front_url: str, email: str) -> None:
        self.http = httpx.Client(base_url=front_url, timeout=30)
        self.email = email

    def _do(self, action: str, **body: Any) -> dict[str, Any]:
        r = self.http.post(f"/__admin/simulate/{action}", json=body)
        if r.status_code != 200:
            raise AssertionError(f"simulate {action} {body}: {r.status_code} {r.text}")
        out: dict[str, Any] = r.json()
        return out

    def inbound(self, sender: str, subject: str, text: str, name: str | None = None,
                conversation_id: str | None = None) -> dict[str, Any]:
        """A customer writes in (a new conversation, or into ``conversation_id``)."""
        return self._do("inbound", **{"from": sender, "subject": subject, "text": text,
                                      "name": name,
                                      **({"conversation_id": conversation_id}
                                         if conversation_id else {})})

    def tag(self, conversation_id: str, tag: str) -> list[str]:
        return list(self._do("tag", conversation_id=conversation_id, tag=tag,
                             teammate=self.email)["event_ids"])

    def untag(self, conversation_id: str, tag: str) -> list[str]:
        return list(self._do("untag", conversation_id=conversation_id, tag=tag,
                             teammate=self.email)["event_ids"])

    def archive(self, conversation_id: str) -> list[str]:
        return list(self._do("archive", conversation_id=conversation_id,
                             teammate=self.email)["event_ids"])

    def reopen(self, conversation_id: str) -> list[str]:
        return list(self._do("reopen", conversation_id=conversation_id,
                             teammate=self.email)["event_ids"])

    def close(self) -> None:
        self.http.close()
