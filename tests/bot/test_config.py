"""Config loading: env expansion, validation naming the key, secrets never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.config import ConfigError, Secret, from_dict, load

ENV = {
    "RC_BOT_PASSWORD": "bot-password-123",
    "RC_WEBHOOK_SECRET": "webhook-secret-456",
    "IG_APP_SECRET": "app-secret-789",
    "IG_VERIFY_TOKEN": "verify-token-000",
}
EXAMPLE = Path(__file__).resolve().parents[2] / "config.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_config_loads_with_env() -> None:
    """The shipped config.yaml is valid once its variables are set."""
    config = load(EXAMPLE, env=ENV)
    assert config.rocketchat.password.reveal() == "bot-password-123"
    assert config.server.port == 8080
    assert config.redirect_uri == "https://bot.example.com/oauth/callback"


def test_graph_version_defaults_to_one_supported_past_2027() -> None:
    """Without api_version the bot uses v24.0 (v21.0 stops on 21 January 2027)."""
    raw = example()
    del raw["instagram"]["api_version"], raw["instagram"]["login_config_id"]
    config = from_dict(raw, env=ENV)
    assert config.instagram.api_version == "v24.0" and config.instagram.login_config_id == ""
    assert load(EXAMPLE, env=ENV).instagram.api_version == "v24.0"


def test_default_value_used_when_variable_unset() -> None:
    """${NAME:-default} falls back to the default; an empty key means no encryption."""
    config = load(EXAMPLE, env=ENV)
    assert not config.storage.encryption_key


def test_encryption_key_from_environment_when_key_omitted() -> None:
    """storage.encryption_key may come from RC_INSTAGRAM_STORAGE_KEY alone."""
    raw = example()
    del raw["storage"]["encryption_key"]
    config = from_dict(raw, env={**ENV, "RC_INSTAGRAM_STORAGE_KEY": "k" * 44})
    assert config.storage.encryption_key.reveal() == "k" * 44


def test_secrets_are_redacted_in_repr() -> None:
    """No secret value appears in the config's repr."""
    text = repr(load(EXAMPLE, env=ENV))
    for value in ENV.values():
        assert value not in text
    assert "********" in text


def _mutate(path: list[str], value: object) -> dict:
    raw = example()
    node = raw
    for part in path[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (["rocketchat", "url"], _DELETE, "rocketchat.url"),
        (["rocketchat", "urll"], "http://x", "rocketchat.urll"),
        (["server", "listen"], "nonsense", "server.listen"),
        (["server", "listen"], "0.0.0.0:99999", "server.listen"),
        (["rocketchat", "url"], "localhost:3000", "rocketchat.url"),
        (["rocketchat", "admin_roles"], [], "rocketchat.admin_roles"),
        (["rocketchat", "admin_roles"], {"a": 1}, "rocketchat.admin_roles"),
        (["instagram", "app_id"], "my-app", "instagram.app_id"),
        (["instagram", "api_version"], "21", "instagram.api_version"),
        (["instagram", "login_config_id"], "my-config", "instagram.login_config_id"),
        (["instagram", "human_agent_tag"], "yes", "instagram.human_agent_tag"),
        (["server", "public_url"], "", "server.public_url"),
        (["rocketchat", "password"], "", "rocketchat.password"),
        (["extra"], {}, "extra"),
    ],
)
def test_invalid_value_names_the_key(path: list[str], value: object, key: str) -> None:
    """Each malformed, missing or unknown value raises ConfigError naming its key."""
    with pytest.raises(ConfigError) as info:
        from_dict(_mutate(path, value), env=ENV)
    assert info.value.key == key


def test_missing_environment_variable_names_the_key() -> None:
    """An unset ${VAR} without default is reported against the key that uses it."""
    env = {k: v for k, v in ENV.items() if k != "IG_APP_SECRET"}
    with pytest.raises(ConfigError) as info:
        load(EXAMPLE, env=env)
    assert info.value.key == "instagram.app_secret"
    assert "IG_APP_SECRET" in str(info.value)


def test_personal_access_token_credentials_accepted() -> None:
    """user_id + token is an alternative to user + password."""
    raw = _mutate(["rocketchat", "password"], "")
    raw["rocketchat"].update(user="", user_id="uid123", token="pat-abcdef")
    config = from_dict(raw, env=ENV)
    assert config.rocketchat.token == Secret("pat-abcdef")


def _check(tmp_path: Path, raw: dict) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "config", "check", "--config", str(path)],
        capture_output=True, text=True, env={**ENV, "PATH": "/usr/bin:/bin"}, timeout=60,
    )


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (["rocketchat", "url"], _DELETE, "rocketchat.url"),
        (["rocketchat", "urll"], "http://x", "rocketchat.urll"),
        (["server", "listen"], "nonsense", "server.listen"),
    ],
)
def test_config_check_cli_exits_1_naming_key(
    tmp_path: Path, path: list[str], value: object, key: str
) -> None:
    """`rc-instagram config check` exits 1 and prints the offending key, no traceback."""
    result = _check(tmp_path, _mutate(path, value))
    assert result.returncode == 1
    assert key in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_cli_ok_never_prints_secrets(tmp_path: Path) -> None:
    """A valid file passes with exit 0 and its secrets are not echoed."""
    result = _check(tmp_path, example())
    assert result.returncode == 0, result.stderr
    for value in ENV.values():
        assert value not in result.stdout + result.stderr


def test_storage_url_chooses_postgresql_and_is_never_shown() -> None:
    """storage.url replaces the TinyDB path; repr and messages show it password-masked."""
    url = "postgresql://bot:pg-pass%21word@db.internal:5432/rcig"
    config = from_dict(_mutate(["storage", "url"], url), env=ENV)
    assert config.storage.location == url
    assert config.storage.where == "postgresql://bot:***@db.internal:5432/rcig"
    assert "pg-pass" not in repr(config)
    assert set(config.storage.url_secrets) >= {url, "pg-pass%21word", "pg-pass!word"}
    assert load(EXAMPLE, env=ENV).storage.location == "data/rc-instagram.json"  # default


@pytest.mark.parametrize("value", ["mysql://bot:pg-pass@db/rcig", "postgresql://bot:pg-pass@db:99999/x"])
def test_bad_storage_url_names_the_key_without_the_password(value: str) -> None:
    """A storage.url that is not a usable postgresql:// URL is refused, password masked."""
    with pytest.raises(ConfigError) as caught:
        from_dict(_mutate(["storage", "url"], value), env=ENV)
    assert caught.value.key == "storage.url"
    assert "pg-pass" not in str(caught.value)


def test_storage_url_password_is_redacted_from_logs() -> None:
    """The log filter's secrets include the database password (the URL itself too)."""
    from bot.cli import secret_values

    url = "postgresql://bot:pg-pass@db/rcig"
    config = from_dict(_mutate(["storage", "url"], url), env=ENV)
    assert {"pg-pass", url} <= set(secret_values(config))
