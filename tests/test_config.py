"""A malformed configuration must name the file, the line and the field, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from frontforce.config import load_settings, parse_settings
from frontforce.errors import ConfigError

GOOD = """\
kafka:
  bootstrap_servers: "127.0.0.1:9092"
front:
  app_secret: "${FF_TEST_SECRET}"
salesforce:
  login_url: "https://127.0.0.1:8443"
  client_id: "abc"
  client_secret: "${FF_TEST_SF_SECRET:-fallback}"
"""


def test_valid_config_reads_secrets_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_TEST_SECRET", "s3cret")
    s = parse_settings(GOOD)
    assert s.front.app_secret.get_secret_value() == "s3cret"
    assert s.salesforce.client_secret.get_secret_value() == "fallback"
    assert "s3cret" not in repr(s)  # secrets never print
    assert s.topics.front_events == "front.events"


def test_every_problem_is_reported_with_file_line_and_field(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FF_TEST_SECRET", raising=False)
    bad = tmp_path / "ff.yaml"
    bad.write_text(GOOD.replace('"127.0.0.1:9092"', '"127.0.0.1:9092"\n  partitions: zero')
                   .replace('client_id: "abc"', 'client_id: "abc"\n  api_version: "v59"'))
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    problems = info.value.problems
    assert (f"{bad}:3 kafka.partitions: Input should be a valid integer, unable to parse string as an integer"
            in problems)
    assert any(p.startswith(f"{bad}:5 front.app_secret: environment variable FF_TEST_SECRET") for p in problems)
    assert any(p.startswith(f"{bad}:9 salesforce.api_version:") for p in problems)


def test_unknown_field_and_missing_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings("kafka:\n  bootstrap: x\n", "f.yaml")
    text = str(info.value)
    assert "f.yaml:2 kafka.bootstrap: Extra inputs are not permitted" in text
    assert "front: Field required" in text and "salesforce: Field required" in text


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings("kafka:\n  a: [1, 2\nfront: {}\n", "f.yaml")
    assert info.value.problems[0].startswith("f.yaml:")


def test_the_mapping_is_checked_against_describe_and_every_misfit_named() -> None:
    """The fields and picklist values the configuration maps, against Salesforce's describe
    (the emulator's, built from the same object definitions): a fitting configuration has no
    problem; a stage that is not a StageName value, a Case status that is not a Status, a
    context field that does not exist or is not in change events, a custom field that does
    not exist — each is named by its config field."""
    import yaml

    from emulators.salesforce._describe import describe_sobject
    from emulators.salesforce._schema import get_sobject
    from frontforce.config import parse_settings
    from sinks.salesforce._mapping import mapping_problems, objects_to_describe

    base = {"front": {"app_secret": "x"},
            "salesforce": {"login_url": "https://sf.example", "client_id": "c", "client_secret": "s"}}

    def settings(doc: dict) -> object:
        return parse_settings(yaml.safe_dump(doc))

    def describes(s: object) -> dict:
        out = {}
        for name in objects_to_describe(s):
            sobj = get_sobject(name)
            if sobj is not None:
                out[name] = describe_sobject(sobj, "59.0")
        return out

    good = settings({**base, "worker": {"tag_rules": {"Upsell": {
        "opportunity_stage": "Proposal/Price Quote"}}, "task_fields_from_front": {"Priority": "Priority"}}})
    assert mapping_problems(good, describes(good)) == []
    bad = settings({**base,
                          "salesforce_source": {"custom_fields": {"Account": ["Nope__c"]}},
                          "worker": {"case_closed_status": "Done",
                                     "tag_rules": {"Upsell": {"opportunity_stage": "Upselling"}},
                                     "context_fields": {"ARR": "AnnualRevenue", "Site": "Tier__c",
                                                        "Gone": "Gone__c"},
                                     "task_fields_from_front": {"Area": "Area__c",
                                                                "Closed": "IsClosed"}}})
    problems = mapping_problems(bad, describes(bad))
    assert any(p.startswith("worker.case_closed_status: 'Done' is not an active Case Status")
               for p in problems)
    assert any(p.startswith("worker.tag_rules.Upsell.opportunity_stage: 'Upselling'") for p in problems)
    assert "worker.context_fields.Gone: field Account.Gone__c does not exist (or is not visible)" in problems
    assert any(p.startswith("worker.context_fields.Site: Account.Tier__c is not in change events")
               for p in problems)
    assert ("salesforce_source.custom_fields.Account: field Account.Nope__c does not exist "
            "(or is not visible)") in problems
    assert "worker.task_fields_from_front.Area: field Task.Area__c does not exist (or is not visible)" in problems
    assert "worker.task_fields_from_front.Closed: Task.IsClosed is not createable" in problems
