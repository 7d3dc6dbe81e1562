"""Load and validate ``config.yaml``.

``${NAME}`` is replaced from the environment and ``${NAME:-default}`` gives a default.
Every problem raises :class:`ConfigError` naming the offending key (``rocketchat.url``),
so ``rc-instagram config check`` and startup can say exactly what to fix. Secrets are
wrapped in :class:`Secret`, whose ``repr``/``str`` never show the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from storage import is_postgres_url, mask_url

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config problem; ``key`` is the dotted path of the offending setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class Secret:
    """A value that must never be printed; ``reveal()`` when it is really needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class RocketChatConfig:
    url: str
    user: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    user_id: str = ""
    token: Secret = field(default_factory=lambda: Secret(""))
    webhook_secret: Secret = field(default_factory=lambda: Secret(""))
    admin_roles: tuple[str, ...] = ("admin",)


@dataclass(frozen=True)
class InstagramLoginConfig:
    """The Instagram API with Instagram Login route (no Facebook Page); off without app_id."""

    app_id: str = ""
    app_secret: Secret = field(default_factory=lambda: Secret(""))
    graph_url: str = "https://graph.instagram.com"
    authorize_url: str = "https://www.instagram.com"  # <authorize_url>/oauth/authorize
    token_url: str = "https://api.instagram.com"  # <token_url>/oauth/access_token

    @property
    def enabled(self) -> bool:
        return bool(self.app_id)


@dataclass(frozen=True)
class InstagramConfig:
    app_id: str
    app_secret: Secret
    verify_token: Secret
    graph_url: str = "https://graph.facebook.com"
    dialog_url: str = "https://www.facebook.com"
    api_version: str = "v24.0"  # available until 18 February 2028 (bot/instagram/versions.py)
    #: Facebook Login for Business configuration id; set, the dialog carries config_id
    #: instead of scope (Business-type Meta apps require it).
    login_config_id: str = ""
    human_agent_tag: bool = False
    instagram_login: InstagramLoginConfig = field(default_factory=InstagramLoginConfig)


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "0.0.0.0:8080"
    public_url: str = ""

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True)
class StorageConfig:
    path: str = "data/rc-instagram.json"
    encryption_key: Secret = field(default_factory=lambda: Secret(""))
    #: ``postgresql://…``: the PostgreSQL store instead of the TinyDB file at ``path``.
    #: A Secret because it may carry a password; show it with :attr:`where`.
    url: Secret = field(default_factory=lambda: Secret(""))

    @property
    def location(self) -> str:
        """What ``storage.open_store`` takes: the URL when set, else the path."""
        return self.url.reveal() or self.path

    @property
    def where(self) -> str:
        """The store for messages and logs (a URL's password masked)."""
        return mask_url(self.url.reveal()) if self.url else self.path

    @property
    def url_secrets(self) -> list[str]:
        """The URL and its password (raw and decoded), for the log redaction filter."""
        url = self.url.reveal()
        if not url:
            return []
        try:
            password = urlsplit(url).password or ""
        except ValueError:
            password = ""
        # Without a password the URL is shown as it is (where), so not redacted either.
        return [v for v in (url, password, unquote(password)) if v] if password else []


@dataclass(frozen=True)
class Config:
    rocketchat: RocketChatConfig
    instagram: InstagramConfig
    server: ServerConfig
    storage: StorageConfig
    source: str = "<memory>"

    @property
    def redirect_uri(self) -> str:
        """The OAuth callback Meta redirects the admin's browser to."""
        return self.server.public_url.rstrip("/") + "/oauth/callback"

    @property
    def instagram_redirect_uri(self) -> str:
        """The Instagram Login callback (``instagram.instagram_login``)."""
        return self.server.public_url.rstrip("/") + "/oauth/instagram/callback"


_SECTIONS: dict[str, type] = {
    "rocketchat": RocketChatConfig,
    "instagram": InstagramConfig,
    "server": ServerConfig,
    "storage": StorageConfig,
}
_SECRETS = {
    "rocketchat.password",
    "rocketchat.token",
    "rocketchat.webhook_secret",
    "instagram.app_secret",
    "instagram.verify_token",
    "instagram.instagram_login.app_secret",
    "storage.encryption_key",
    "storage.url",
}
_URLS = {
    "rocketchat.url", "instagram.graph_url", "instagram.dialog_url", "server.public_url",
    "instagram.instagram_login.graph_url", "instagram.instagram_login.authorize_url",
    "instagram.instagram_login.token_url",
}
#: Keys whose value is a section of its own.
_SUBSECTIONS: dict[str, type] = {"instagram.instagram_login": InstagramLoginConfig}
_REQUIRED = {
    "rocketchat.url",
    "rocketchat.webhook_secret",
    "instagram.app_id",
    "instagram.app_secret",
    "instagram.verify_token",
    "server.public_url",
}


def expand(value: str, env: dict[str, str], key: str) -> str:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in one string value."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(key, f"environment variable {name} is not set")

    return _VAR.sub(substitute, value)


def load(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read, expand and validate a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("<file>", f"{path} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("<file>", f"{path} is not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError("<file>", f"{path} is nested too deeply") from None
    return from_dict(raw, env=os.environ.copy() if env is None else env, source=str(path))


def from_dict(raw: Any, *, env: dict[str, str], source: str = "<memory>") -> Config:
    """Validate an already parsed mapping (see :func:`load`)."""
    if not isinstance(raw, dict):
        raise ConfigError("<file>", "the top level must be a mapping of sections")
    for section in raw:
        if section not in _SECTIONS:
            name = str(section) if str(section).strip() else repr(section)  # never blank
            raise ConfigError(name, f"unknown section (known: {', '.join(_SECTIONS)})")
    built: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(section, "must be a mapping")
        built[section] = _build_section(section, cls, values, env)
    config = Config(**built, source=source)
    _check_credentials(config)
    return config


def _build_section(section: str, cls: type, values: dict[str, Any], env: dict[str, str]) -> Any:
    known = {f.name: f for f in fields(cls)}
    for name in values:
        if name not in known:
            raise ConfigError(f"{section}.{name}", f"unknown key (known: {', '.join(known)})")
    kwargs: dict[str, Any] = {}
    for name in known:
        key = f"{section}.{name}"
        if name not in values or values[name] is None:
            if key in _REQUIRED:
                raise ConfigError(key, "is required")
            continue
        if key in _SUBSECTIONS:
            if not isinstance(values[name], dict):
                raise ConfigError(key, "must be a mapping")
            kwargs[name] = _build_section(key, _SUBSECTIONS[key], values[name], env)
            continue
        value = _convert(key, values[name], env)
        if key in _REQUIRED and (value == "" or (isinstance(value, Secret) and not value)):
            raise ConfigError(key, "is required and must not be empty")
        kwargs[name] = value
    if section == "storage" and "encryption_key" not in kwargs:
        kwargs["encryption_key"] = Secret(env.get("RC_INSTAGRAM_STORAGE_KEY", ""))
    return cls(**kwargs)


def _convert(key: str, value: Any, env: dict[str, str]) -> Any:
    if key == "rocketchat.admin_roles":
        if isinstance(value, str):
            value = [value]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise ConfigError(key, "must be a non-empty list of role names, e.g. [admin]")
        return tuple(expand(v, env, key).strip() for v in value)
    if key == "instagram.human_agent_tag":
        if not isinstance(value, bool):
            raise ConfigError(key, "must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(key, "must be a string")
    text = expand(str(value), env, key).strip()
    if key == "storage.url":
        _check_storage_url(key, text)
    if key in _SECRETS:
        return Secret(text)
    if key in _URLS:
        _check_url(key, text)
        return text.rstrip("/")
    if key == "server.listen":
        _check_listen(key, text)
    if key == "instagram.app_id" and not (text.isascii() and text.isdigit()):
        raise ConfigError(key, "must be the numeric Meta app id")
    if key == "instagram.instagram_login.app_id" and text and not (
        text.isascii() and text.isdigit()
    ):
        raise ConfigError(key, "must be the numeric Instagram app id (or empty: route off)")
    if key == "instagram.api_version" and not re.fullmatch(r"v\d+\.\d+", text):
        raise ConfigError(key, "must look like v24.0")
    if key == "instagram.login_config_id" and text and not (text.isascii() and text.isdigit()):
        raise ConfigError(key, "must be the numeric id of a Login for Business configuration")
    return text


def _check_url(key: str, text: str) -> None:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError for a port that is not 0-65535)
    except ValueError:  # "http://[::1" and the like
        raise ConfigError(key, f"must be an http(s) URL, got {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"must be an http(s) URL, got {text!r}")


def _check_storage_url(key: str, text: str) -> None:
    if not text:
        return  # the TinyDB file at storage.path
    # The message shows the URL masked: it may carry the database password.
    if not is_postgres_url(text):
        raise ConfigError(key, f"must be empty or a postgresql:// URL, got {mask_url(text)!r}")
    try:
        urlsplit(text).port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise ConfigError(key, f"is not a valid URL: {mask_url(text)!r}") from None


def _check_listen(key: str, text: str) -> None:
    host, sep, port = text.rpartition(":")
    # isascii: str.isdigit() is also true for "²", which int() refuses.
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(key, f"must be HOST:PORT (e.g. 0.0.0.0:8080), got {text!r}")


def _check_credentials(config: Config) -> None:
    login = config.instagram.instagram_login
    if login.enabled and not login.app_secret:
        raise ConfigError("instagram.instagram_login.app_secret",
                          "is required with instagram.instagram_login.app_id")
    rc = config.rocketchat
    has_password = bool(rc.user and rc.password)
    has_token = bool(rc.user_id and rc.token)
    if not (has_password or has_token):
        if rc.user and not rc.password and not rc.user_id:
            raise ConfigError("rocketchat.password", "is required with rocketchat.user")
        if rc.user_id and not rc.token:
            raise ConfigError("rocketchat.token", "is required with rocketchat.user_id")
        raise ConfigError(
            "rocketchat.user", "set user + password, or user_id + token (personal access token)"
        )
