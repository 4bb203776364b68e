"""``frontforce config check`` beyond the file: do the credentials work, and does the org
have what the configuration maps? Read-only: a Salesforce login, one describe per mapped
object (``sinks/salesforce/_mapping.py``, as the sink checks at start), one Front read
(``GET /me``). Nothing is written anywhere."""

from __future__ import annotations

from typing import Any

import httpx

from frontforce.config import Settings


def check_online(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems, what was checked): each problem names the configuration field at fault."""
    problems: list[str] = []
    checked: list[str] = []
    _salesforce(settings, problems, checked)
    _front(settings, problems, checked)
    return problems, checked


def _salesforce(settings: Settings, problems: list[str], checked: list[str]) -> None:
    from simple_salesforce.exceptions import SalesforceError, SalesforceResourceNotFound

    from frontforce.errors import FrontforceError
    from frontforce.salesforce import connect
    from sinks.salesforce._mapping import mapping_problems, objects_to_describe

    cfg = settings.salesforce
    fields = ("salesforce.client_id, salesforce.client_secret" if cfg.auth == "client_credentials"
              else "salesforce.client_id, salesforce.username, salesforce.private_key_file")
    try:
        conn = connect(cfg)
    except FrontforceError as exc:
        problems.append(f"salesforce.login_url, {fields}: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - e.g. the CA bundle cannot be read
        problems.append(f"salesforce.login_url: cannot log in: {type(exc).__name__}: {exc}")
        return
    checked.append(f"salesforce: logged in at {cfg.login_url} (user {conn.user_id})")
    describes: dict[str, dict[str, Any]] = {}
    for sobject in objects_to_describe(settings):
        try:
            describes[sobject] = dict(conn.client.restful(f"sobjects/{sobject}/describe") or {})
        except SalesforceResourceNotFound:
            continue  # mapping_problems names the config field that needs it
        except (SalesforceError, OSError, ValueError) as exc:
            problems.append(f"salesforce: cannot read {sobject}'s describe: {type(exc).__name__}: {exc}")
            return
    found = mapping_problems(settings, describes)
    problems.extend(found)
    if not found:
        checked.append(f"salesforce: every mapped field and value exists ({', '.join(sorted(describes))})")


def _front(settings: Settings, problems: list[str], checked: list[str]) -> None:
    cfg = settings.front
    if cfg.api_token is None:
        checked.append("front: no front.api_token, not checked (the Front sink, backfill and "
                       "gap-fill need one)")
        return
    try:
        with httpx.Client(timeout=cfg.timeout_s, trust_env=False) as http:
            r = http.get(cfg.api_url.rstrip("/") + "/me", headers={
                "Authorization": f"Bearer {cfg.api_token.get_secret_value()}",
                "Accept": "application/json"})
    except httpx.HTTPError as exc:
        problems.append(f"front.api_url: {cfg.api_url} does not answer: {type(exc).__name__}: {exc}")
        return
    if r.status_code == 401:
        problems.append("front.api_token: Front refused the token (401)")
    elif r.status_code == 403:
        problems.append("front.api_token: the token may not read the company (403 on GET /me)")
    elif r.status_code == 429:
        checked.append("front: token not checked, rate limited (429): try again in a minute")
    elif r.status_code != 200:
        problems.append(f"front.api_url: GET /me answered HTTP {r.status_code}")
    else:
        company = r.json().get("id")
        if settings.front.company_id and company and company != settings.front.company_id:
            problems.append(f"front.company_id: {settings.front.company_id} but the token is "
                            f"company {company}'s")
        else:
            checked.append(f"front: token accepted (company {company})")
