"""``rc-instagram``: the command-line entry point (a click group).

Commands are thin wrappers: they load the config, call library code, and turn known
failures into one clear line and an exit code (no tracebacks for user errors).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import click

from bot import config as config_module
from bot import logs

DEFAULT_CONFIG = "config.yaml"

#: Exit codes: 1 bad config / prerequisites, 2 Rocket.Chat refused the credentials,
#: 3 storage unusable (locked, corrupt, wrong key).
EXIT_CONFIG, EXIT_AUTH, EXIT_STORAGE = 1, 2, 3

config_option = click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Path of the config file.",
)


def _load_config(path: str) -> config_module.Config:
    try:
        return config_module.load(path)
    except config_module.ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group()
@click.version_option(package_name="rc-instagram")
def main() -> None:
    """Bridge Instagram Direct messages into Rocket.Chat Omnichannel."""


@main.command()
@config_option
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]))
def run(config_path: str, log_level: str, log_format: str) -> None:
    """Run the bridge (the long-running bot)."""
    config = _load_config(config_path)
    logs.setup(log_level, log_format, secrets=secret_values(config))
    sys.exit(asyncio.run(serve(config, config_path)))


async def serve(config: config_module.Config, config_path: str) -> int:
    """Run a bot until SIGINT/SIGTERM; return the process exit code."""
    import logging

    from bot import __version__
    from bot.app import Bot
    from bot.rocketchat.rest import AuthenticationFailed, RocketChatError
    from storage.base import StorageError

    log = logging.getLogger("bot")
    log.info(
        "rc-instagram %s starting: config %s, public URL %s, storage %s",
        __version__, config_path, config.server.public_url, config.storage.where,
    )
    try:
        bot = Bot(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bot.stop)
        await bot.run()
    except AuthenticationFailed as exc:
        log.error("Rocket.Chat refused the bot's credentials: %s", exc)
        click.echo(f"error: Rocket.Chat refused the bot's credentials ({exc})", err=True)
        return EXIT_AUTH
    except RocketChatError as exc:
        # Unreachable or failing at startup: exit cleanly and let the supervisor retry.
        log.error("Rocket.Chat at %s is not usable: %s", config.rocketchat.url, exc)
        click.echo(f"error: Rocket.Chat at {config.rocketchat.url} is not usable ({exc}); "
                   "rc-instagram doctor shows why", err=True)
        return EXIT_CONFIG
    except StorageError as exc:
        click.echo(f"error: storage: {exc}", err=True)
        return EXIT_STORAGE
    except OSError as exc:
        click.echo(f"error: cannot listen on {config.server.listen}: {exc.strerror}", err=True)
        return EXIT_CONFIG
    return 0


def secret_values(config: config_module.Config) -> list[str]:
    """Every secret in the config, for the log redaction filter."""
    secrets = [
        config.rocketchat.password, config.rocketchat.token, config.rocketchat.webhook_secret,
        config.instagram.app_secret, config.instagram.verify_token, config.storage.encryption_key,
        config.instagram.instagram_login.app_secret,
    ]
    return [s.reveal() for s in secrets if s] + config.storage.url_secrets


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@config_option
def config_check(config_path: str) -> None:
    """Validate the config file; exit 1 naming the offending key."""
    config = _load_config(config_path)
    click.echo(f"{config_path}: OK (Rocket.Chat {config.rocketchat.url}, "
               f"public URL {config.server.public_url})")


@main.group("storage")
def storage_group() -> None:
    """Maintain the store."""


@storage_group.command("migrate")
@click.option("--from", "source", required=True, metavar="PATH|URL",
              help="The store to copy: a TinyDB path or a postgresql:// URL.")
@click.option("--to", "destination", required=True, metavar="PATH|URL",
              help="The new, empty store: a TinyDB path or a postgresql:// URL.")
@config_option
def storage_migrate(source: str, destination: str, config_path: str) -> None:
    """Copy every record into an empty store, offline, verified by counts.

    Stop the bot (every replica) first. Tokens are decrypted and re-encrypted with
    storage.encryption_key from --config when that file exists, else with
    RC_INSTAGRAM_STORAGE_KEY. The source is not changed.
    """
    import os

    from storage import mask_url
    from storage.base import StorageError
    from storage.migrate import migrate

    if os.path.exists(config_path):
        key = _load_config(config_path).storage.encryption_key.reveal()
    else:
        key = os.environ.get("RC_INSTAGRAM_STORAGE_KEY", "")
    try:
        counts = asyncio.run(migrate(source, destination, key or None))
    except StorageError as exc:
        click.echo(f"error: storage: {exc}", err=True)
        sys.exit(EXIT_STORAGE)
    click.echo(f"migrated {mask_url(source)} -> {mask_url(destination)}: "
               + ", ".join(f"{n} {name}" for name, n in counts.items())
               + " (verified)")


@main.command()
@config_option
@click.option("--expected-rate", type=float, default=None, metavar="PER_MINUTE",
              help="Visitor messages per minute you expect; FAIL if the rate limiter is lower.")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds to wait for each network call.")
def doctor(config_path: str, expected_rate: float | None, timeout: float) -> None:
    """Check every prerequisite; one PASS/WARN/FAIL line each, exit 1 on any FAIL."""
    from bot.doctor import diagnose

    sys.exit(diagnose(config_path, echo=click.echo, expected_rate=expected_rate,
                      timeout=timeout))


@main.command()
@click.option("--keep-running", is_flag=True,
              help="Leave the sandboxes and the bot up and print their URLs.")
def demo(keep_running: bool) -> None:
    """Play the whole story against sandbox Rocket.Chat and Meta; no accounts needed."""
    from bot.demo import run_demo

    sys.exit(run_demo(keep_running=keep_running, echo=click.echo))


if __name__ == "__main__":
    main()
