"""The deployment files: the systemd unit, the Dockerfile and the rocketchat-compose overlay."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.web import routes

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_ENV = {
    "RC_INSTAGRAM_DOMAIN": "ig.example.com",
    "RC_BOT_PASSWORD": "bot-password",
    "RC_WEBHOOK_SECRET": "webhook-secret",
    "IG_APP_ID": "123456789012345",
    "IG_APP_SECRET": "app-secret",
    "IG_VERIFY_TOKEN": "verify-token",
    "LETSENCRYPT_EMAIL": "admin@example.com",
    "TRAEFIK_PROTOCOL": "https",
}
# The shape of RocketChat/rocketchat-compose that the overlay relies on: service names,
# Traefik's generated-config volume, Prometheus's bind-mounted config directory.
STACK = """
services:
  rocketchat:
    image: registry.rocket.chat/rocketchat/rocket.chat:7.4.0
  traefik:
    image: docker.io/traefik:v3.4
    command: ["--providers.file.filename=/traefik_config/https/dynamic.yml"]
    volumes: ["traefik_config:/traefik_config"]
  prometheus:
    image: docker.io/prom/prometheus:v3.4.2
    volumes: ["./files/prometheus:/etc/prometheus"]
volumes:
  traefik_config: {driver: local}
"""


def public_paths() -> list[str]:
    """One concrete path per route of the web receiver, /metrics excluded."""
    paths = []
    for route in routes():
        path = re.sub(r"\{[^}]+\}", "some-state", route.path)
        if path != "/metrics":
            paths.append(path)
    return sorted(set(paths))


def traefik_matches(rule: str, path: str) -> bool:
    """Evaluate the path part of our Traefik rule: ``PathPrefix``/``Path`` alternatives."""
    prefixes = re.findall(r"PathPrefix\(`([^`]*)`\)", rule)
    exact = re.findall(r"(?<!Prefix)Path\(`([^`]*)`\)", rule)
    return any(path.startswith(p) for p in prefixes) or path in exact


@pytest.mark.parametrize("protocol", ["http", "https"])
def test_traefik_routes_every_public_endpoint_but_not_metrics(protocol: str):
    """Meta's and the browser's endpoints are routed by Traefik; /metrics is not."""
    config = yaml.safe_load((DEPLOY / "traefik" / f"{protocol}.yml").read_text())
    router = config["http"]["routers"]["rc-instagram"]
    assert router["entryPoints"] == [protocol]
    assert 'Host(`{{ env "RC_INSTAGRAM_DOMAIN" }}`)' in router["rule"]
    for path in public_paths():
        assert traefik_matches(router["rule"], path), f"{path} is not routed"
    assert not traefik_matches(router["rule"], "/metrics")
    servers = config["http"]["services"]["rc-instagram"]["loadBalancer"]["servers"]
    assert servers == [{"url": "http://rc-instagram:8080"}]
    if protocol == "https":
        assert router["tls"] == {"certResolver": "le"}


def test_compose_config_file_is_a_valid_bridge_config():
    """The config the overlay mounts passes ``rc-instagram config check``."""
    env = {**os.environ, **COMPOSE_ENV, "RC_INSTAGRAM_PUBLIC_URL": "https://ig.example.com"}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "config", "check", "--config",
         str(DEPLOY / "config.compose.yaml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``docker-compose config`` of the stack's shape plus our overlay."""
    (tmp_path / "compose.yml").write_text(STACK)
    (tmp_path / "rc-instagram").symlink_to(ROOT)
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    return subprocess.run(
        ["docker-compose", "-f", "compose.yml", "-f",
         "rc-instagram/deploy/compose.rc-instagram.yml", "config"],
        cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (apt-get install docker-compose)")
def test_compose_overlay_joins_the_rocketchat_stack(tmp_path: Path):
    """The overlay validates on top of the stack and wires Traefik, Prometheus, a volume."""
    done = compose_config(tmp_path, COMPOSE_ENV)
    assert done.returncode == 0, done.stderr
    merged = yaml.safe_load(done.stdout)
    bridge = merged["services"]["rc-instagram"]
    assert bridge["environment"]["RC_INSTAGRAM_PUBLIC_URL"] == "https://ig.example.com"
    assert bridge["environment"]["IG_APP_SECRET"] == "app-secret"
    assert any(v.startswith("rc_instagram_data:/data") for v in bridge["volumes"])
    assert bridge["labels"]["prometheus.io/port"] == "8080"
    traefik = merged["services"]["traefik"]
    assert "--providers.file.directory=/traefik_config/https" in traefik["command"]
    assert not any(c.startswith("--providers.file.filename") for c in traefik["command"])
    assert any(v.endswith(":/traefik_config/https/rc-instagram.yml:ro")
               and "deploy/traefik/https.yml" in v for v in traefik["volumes"])
    assert traefik["environment"]["RC_INSTAGRAM_DOMAIN"] == "ig.example.com"
    assert any("file_sd_configs.d/rc-instagram.yml" in v
               for v in merged["services"]["prometheus"]["volumes"])


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (apt-get install docker-compose)")
def test_compose_overlay_without_a_secret_names_it(tmp_path: Path):
    """A missing secret in .env stops ``docker-compose`` with the variable's name."""
    env = {k: v for k, v in COMPOSE_ENV.items() if k != "IG_APP_SECRET"}
    done = compose_config(tmp_path, env)
    assert done.returncode != 0
    assert "IG_APP_SECRET" in done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (no systemd here)")
def test_systemd_unit_verifies(tmp_path: Path):
    """``systemd-analyze verify`` accepts the unit without a warning (binary paths pointed
    at this checkout's virtualenv, since /opt/rc-instagram does not exist here)."""
    exe = Path(sys.executable).parent / "rc-instagram"
    if not exe.exists():
        pytest.skip(f"{exe} is not installed")
    unit = (DEPLOY / "rc-instagram.service").read_text()
    assert "/opt/rc-instagram/.venv/bin/rc-instagram run" in unit
    path = tmp_path / "rc-instagram.service"
    path.write_text(unit.replace("/opt/rc-instagram/.venv/bin/rc-instagram", str(exe)))
    done = subprocess.run(["systemd-analyze", "verify", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def docker_daemon() -> bool:
    """Whether a Docker daemon answers here (none does on the project's machines)."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not docker_daemon(), reason="no Docker daemon on this machine")
def test_docker_image_builds_and_serves_healthz(tmp_path: Path):
    """The image builds; in a container the overlay's config passes ``config check`` and
    the whole demo (sandboxes and the real bot) runs to its end."""
    tag = "rc-instagram:test"
    build = subprocess.run(["docker", "build", "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-2000:]
    env = {**COMPOSE_ENV, "RC_INSTAGRAM_PUBLIC_URL": "https://ig.example.com"}
    args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    check = subprocess.run(
        ["docker", "run", "--rm", *args, "-v",
         f"{DEPLOY / 'config.compose.yaml'}:/etc/rc-instagram/config.yaml:ro", tag,
         "config", "check", "--config", "/etc/rc-instagram/config.yaml"],
        capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    demo = subprocess.run(["docker", "run", "--rm", tag, "demo"],
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "demo finished" in demo.stdout
