"""Fuzzed config files: the loader answers a Config or a ConfigError naming a key, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from bot.config import Config, ConfigError, from_dict, load
from tests.fuzz.conftest import FUZZ
from tests.fuzz.strategies import odd_text

SECTIONS = {
    "rocketchat": ["url", "user", "password", "user_id", "token", "webhook_secret",
                   "admin_roles"],
    "instagram": ["app_id", "app_secret", "verify_token", "graph_url", "dialog_url",
                  "api_version", "human_agent_tag"],
    "server": ["listen", "public_url"],
    "storage": ["path", "encryption_key"],
}
GOOD = {
    "rocketchat": {"url": "http://localhost:3000", "user": "bot", "password": "pw",
                   "webhook_secret": "s", "admin_roles": ["admin"]},
    "instagram": {"app_id": "123", "app_secret": "x", "verify_token": "y"},
    "server": {"listen": "0.0.0.0:8080", "public_url": "https://bot.example.com"},
    "storage": {"path": "data/x.json"},
}
ENV = {"SET": "value", "EMPTY": ""}

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), odd_text,
    st.sampled_from([
        "${SET}", "${UNSET}", "${UNSET:-}", "${UNSET:-d}", "${EMPTY}", "$", "${", "${1}",
        "http://[::1", "http://", "https://h:99999", "ftp://x", "host:²", "host:0",
        "host:65536", "0.0.0.0:", ":80", "v1.0", "v21", "²", "１２３", "0" * 500,
    ]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(odd_text, c, max_size=3)),
    max_leaves=8,
)


@st.composite
def configs(draw: st.DrawFn) -> Any:
    """A mostly-valid config with a few keys replaced, removed or added."""
    raw: Any = {section: dict(values) for section, values in GOOD.items()}
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from([*SECTIONS, "extra"]))
        action = draw(st.sampled_from(["set", "drop", "replace_section"]))
        if action == "replace_section":
            raw[section] = draw(yaml_values)
        elif isinstance(raw.get(section), dict):
            key = draw(st.sampled_from([*SECTIONS.get(section, []), "unknown_key"]))
            if action == "set":
                raw[section][key] = draw(yaml_values)
            else:
                raw[section].pop(key, None)
    return draw(st.one_of(st.just(raw), st.just(raw), yaml_values))


def _check(outcome: Config | ConfigError) -> None:
    if isinstance(outcome, ConfigError):
        assert outcome.key and isinstance(outcome.key, str)


@FUZZ
@given(raw=configs())
@example(raw={**GOOD, "server": {"listen": "0.0.0.0:²", "public_url": "https://b.example"}})
@example(raw={**GOOD, "server": {"listen": "0.0.0.0:8080", "public_url": "http://[::1"}})
@example(raw={**GOOD, "rocketchat": {**GOOD["rocketchat"], "url": "http://[::1]:99999"}})
def test_random_config_mappings_give_config_or_config_error(raw: Any) -> None:
    """from_dict answers a Config or a ConfigError with a key; never another exception."""
    try:
        outcome: Config | ConfigError = from_dict(raw, env=ENV)
    except ConfigError as exc:
        outcome = exc
    _check(outcome)


@FUZZ
@given(text=st.one_of(configs().map(lambda raw: yaml.safe_dump(raw, allow_unicode=True)),
                      st.text(max_size=200)))
@example(text="a: &a [*a]")  # a recursive alias
@example(text="? [1, 2]\n: x")  # an unhashable key
@example(text="rocketchat: " + "[" * 3000)  # deep nesting
@example(text="!!python/object:os.system {}")
@example(text="? ''\n: null\n")  # a blank section name is still named (as '')
def test_random_config_files_give_config_or_config_error(text: str, tmp_path: Path) -> None:
    """load() of any text answers a Config or a ConfigError with a key."""
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        outcome: Config | ConfigError = load(path, env=ENV)
    except ConfigError as exc:
        outcome = exc
    _check(outcome)


@pytest.mark.parametrize("data", [b"\xff\xfe\x00garbage", b"rocketchat:\n  url: \xc3\x28\n"])
def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path, data: bytes) -> None:
    """A file that is not UTF-8 is a ConfigError for <file>, not a UnicodeDecodeError."""
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load(path, env=ENV)
    assert info.value.key == "<file>"
