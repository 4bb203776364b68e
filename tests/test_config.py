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
