"""``rc-instagram demo``: the whole story on this machine, with no accounts.

Starts the sandbox Rocket.Chat and the sandbox Meta on free loopback ports (threads of
this process), writes a temporary config and data directory, and runs the **real bot as
a subprocess** (``python -m bot.cli run``). Then it plays the people through the
sandboxes' control APIs and real HTTP, and prints what happens with timings:

1. the admin types ``/instagram authorize``; the bot DMs a Facebook Login link; the
   admin's "browser" opens it, approves, lands on ``/oauth/callback``, picks one of two
   Pages on ``/oauth/select``; the admin sets the department and the welcome, offline
   and finished texts with ``/instagram edit``;
2. a visitor writes on "Instagram" (a signed webhook); the Omnichannel room opens, the
   visitor gets the welcome text; an agent replies and the visitor receives it;
3. nobody is online: a second visitor gets the offline text, and the message is
   delivered as soon as the agent is back;
4. the agent closes the first room; the visitor gets the finished text.

Every step waits for its real effect in the sandboxes; nothing is simulated on the
bot's side. A step whose effect does not happen stops the demo with the step's name,
the reason and the tail of the bot's log, and the exit code is 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin

import requests
import yaml

from bot.instagram.events import visitor_token
from storage import open_store

T = TypeVar("T")

BOT_USER, BOT_PASSWORD = "instagram.bot", "demo-bot-password"
ADMIN, ADMIN_PASSWORD = "admin.alice", "demo-admin-password"
AGENT, AGENT_PASSWORD = "agent.ana", "demo-agent-password"
DEPARTMENT = "Instagram"
APP_ID = "000000000000000"
APP_SECRET = "demo-app-secret-0123456789"
VERIFY_TOKEN = "demo-verify-token"
WEBHOOK_SECRET = "demo-rocketchat-webhook-secret"
META_USER = "Sandbox Admin"
SHOP = {"id": "100000000000001", "name": "Sandbox Shop",
        "instagram_business_account": {"id": "17841400000000001", "username": "sandboxshop"}}
CAFE = {"id": "100000000000002", "name": "Sandbox Café",
        "instagram_business_account": {"id": "17841400000000002", "username": "sandboxcafe"}}
#: An Instagram professional account with no Facebook Page (the Instagram Login route).
STUDIO = {"id": "17841400000000003", "username": "sandboxstudio", "name": "Sandbox Studio"}
IG_APP_ID, IG_APP_SECRET = "1111111111111111", "demo-instagram-app-secret"

WELCOME = "Hi! Thanks for writing to Sandbox Shop. An agent will be with you shortly."
# No apostrophes: the command parser splits arguments like a shell (see the report).
OFFLINE = "We are offline right now; we will answer here as soon as someone is back."
FINISHED = "Thanks for chatting with Sandbox Shop. Write any time!"

STEP_TIMEOUT = 15.0


async def _bridge_secret(path: str, key: str) -> bytes:
    """The bridge secret of the store at ``path`` (created now if the store is new)."""
    store = open_store(path, key or None)
    await store.open()
    try:
        return await store.bridge_secret()
    finally:
        await store.close()
_URL = re.compile(r"https?://[^\s)>\]]+")


class DemoFailed(Exception):
    """A step's effect did not happen; the message says what was expected."""


def free_port() -> int:
    """A loopback port that was free a moment ago (the bot's config cannot say port 0)."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Transcript:
    """Prints ``[  1.23s] actor     text`` lines, timed from the start of the demo."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, actor: str, text: str) -> None:
        self.echo(f"[{self.elapsed:6.2f}s] {actor:<9} {text}")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = STEP_TIMEOUT,
             interval: float = 0.05, alive: Callable[[], None] | None = None) -> T:
    """Poll ``probe`` until it returns something truthy; DemoFailed naming ``what`` if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what}: did not happen within {timeout:.0f} s")
        time.sleep(interval)


def short(text: str, limit: int = 110) -> str:
    """One line of a chat text for the transcript (URLs cut to their path)."""
    line = " ".join(str(text).split())
    line = _URL.sub(lambda m: m.group(0).split("?", 1)[0] + ("?…" if "?" in m.group(0) else ""),
                    line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Demo:
    """One run of the story; :meth:`run` plays it, :meth:`close` tears everything down."""

    def __init__(self, echo: Callable[[str], None] = print) -> None:
        self.t = Transcript(echo)
        self.echo = echo
        self.tmp = Path(tempfile.mkdtemp(prefix="rc-instagram-demo-"))
        self.secret = b""  # the store's bridge secret, read in write_config()
        self.rc: Any = None
        self.meta: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.public_url = ""
        self.config_path = self.tmp / "config.yaml"
        self.log_path = self.tmp / "bot.log"
        self._log_file: Any = None
        self.step = "setup"
        self.http = requests.Session()

    # -- the story -------------------------------------------------------------------
    def run(self) -> None:
        self.start_sandboxes()
        self.start_bot()
        self.authorize()
        self.instagram_login()
        self.configure_page()
        jane, jane_room = self.visitor_writes()
        self.agent_replies(jane, jane_room)
        self.nobody_online()
        self.close_room(jane, jane_room)
        self.show_metrics()

    # -- 0. machinery --------------------------------------------------------------------
    def start_sandboxes(self) -> None:
        self.step = "start the sandboxes"
        try:
            from sandbox.meta import SandboxMeta
            from sandbox.rocketchat import SandboxRocketChat
        except ImportError as exc:
            raise DemoFailed(f"the sandbox servers are not available ({exc})") from None
        self.port = free_port()
        self.public_url = f"http://127.0.0.1:{self.port}"
        rc = self.rc = SandboxRocketChat(webhook_retry_delay=1.0).start()
        rc.create_user(BOT_USER, BOT_PASSWORD, roles=["bot", "livechat-manager"],
                       name="Instagram")
        rc.create_user(ADMIN, ADMIN_PASSWORD, roles=["user", "admin"], name="Alice (admin)")
        rc.create_user(AGENT, AGENT_PASSWORD, roles=["user", "livechat-agent"], name="Ana")
        rc.create_department(DEPARTMENT, agents=[AGENT])
        rc.set_agent_status(AGENT, "online")
        # What the README asks the Rocket.Chat admin to set up.
        rc.set_setting("Message_AllowUnrecognizedSlashCommand", True)
        rc.set_setting("Livechat_webhookUrl", self.public_url + "/webhooks/rocketchat")
        rc.set_setting("Livechat_secret_token", WEBHOOK_SECRET)
        rc.set_setting("Livechat_webhook_on_agent_message", True)
        rc.set_setting("Livechat_webhook_on_close", True)
        rc.set_setting("API_Enable_Rate_Limiter", False)
        self.t.say("setup", f"sandbox Rocket.Chat {rc.url}: bot {BOT_USER} (bot, "
                            f"livechat-manager), admin {ADMIN}, agent {AGENT} online in "
                            f"department {DEPARTMENT}")
        meta = self.meta = SandboxMeta(app_id=APP_ID, app_secret=APP_SECRET,
                                       ig_app_id=IG_APP_ID, ig_app_secret=IG_APP_SECRET).start()
        meta.set_login_user(META_USER, pages=[SHOP, CAFE])
        meta.set_instagram_login_account(STUDIO["id"], STUDIO["username"], name=STUDIO["name"])
        meta.set_redirect_uris([self.public_url + "/oauth/callback",
                                self.public_url + "/oauth/instagram/callback"])
        meta.set_webhook(self.public_url + "/webhooks/instagram", echoes=True)
        self.t.say("setup", f"sandbox Meta {meta.graph_url}: app {APP_ID}; {META_USER} manages "
                            f"{SHOP['name']} and {CAFE['name']}, each with an Instagram account")

    def write_config(self) -> None:
        from cryptography.fernet import Fernet

        raw = {
            "rocketchat": {"url": self.rc.url, "user": BOT_USER, "password": BOT_PASSWORD,
                           "webhook_secret": WEBHOOK_SECRET, "admin_roles": ["admin"]},
            "instagram": {"app_id": APP_ID, "app_secret": APP_SECRET,
                          "verify_token": VERIFY_TOKEN, "graph_url": self.meta.graph_url,
                          "dialog_url": self.meta.dialog_url,
                          "api_version": self.meta.api_version,
                          "instagram_login": {
                              "app_id": IG_APP_ID, "app_secret": IG_APP_SECRET,
                              "graph_url": self.meta.instagram_url,
                              "authorize_url": self.meta.instagram_url,
                              "token_url": self.meta.instagram_url}},
            "server": {"listen": f"127.0.0.1:{self.port}", "public_url": self.public_url},
            "storage": {"path": str(self.tmp / "data" / "rc-instagram.json"),
                        "encryption_key": Fernet.generate_key().decode()},
        }
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        os.chmod(self.config_path, 0o600)
        # Visitor tokens are opaque (keyed by the store's secret): read the secret now,
        # before the bot holds the store, to find the visitors' rooms as an observer.
        self.secret = asyncio.run(_bridge_secret(raw["storage"]["path"],
                                                 raw["storage"]["encryption_key"]))

    def start_bot(self) -> None:
        self.step = "start the bot"
        self.write_config()
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        command = [sys.executable, "-m", "bot.cli", "run", "--config", str(self.config_path)]
        # A session of its own: Ctrl-C reaches the demo, which then stops the bot in order.
        self.proc = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env=env, cwd=self.tmp, start_new_session=True)
        self.t.say("bot", f"started: rc-instagram run --config {self.config_path} "
                          f"(pid {self.proc.pid})")

        def healthy() -> dict | None:
            try:
                body = self.http.get(self.public_url + "/healthz", timeout=1).json()
            except (requests.RequestException, ValueError):
                return None
            return body if body.get("status") == "ok" else None

        body = wait_for("the bot answering /healthz with status ok", healthy, alive=self.alive)
        self.t.say("bot", f"GET /healthz -> {body}")

    def alive(self) -> None:
        """Raise DemoFailed if the bot process died."""
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoFailed(f"the bot process exited with code {self.proc.returncode}")

    # -- 1. the admin connects a page --------------------------------------------------------
    def bot_dms(self) -> list[dict]:
        return [m for m in self.rc.dm_messages(ADMIN, BOT_USER)
                if (m.get("u") or {}).get("username") == BOT_USER and not m.get("t")]

    def command(self, text: str) -> str:
        """The admin types ``text`` in the DM with the bot; return the bot's DM answer."""
        seen = len(self.bot_dms())
        self.t.say("admin", f"-> {BOT_USER} (DM): {text}")
        self.rc.send_dm(ADMIN, BOT_USER, text)
        reply = wait_for(f"the bot's DM answer to {text!r}",
                         lambda: self.bot_dms()[seen:], alive=self.alive)[0]
        self.t.say("bot", f"-> {ADMIN} (DM): {short(reply['msg'])}")
        buttons = self.rc.buttons(reply["_id"])
        if buttons:
            shown = ", ".join(
                f"[{b['text']}] " + (f"opens {short(b['url'])}" if b.get("url")
                                     else f"posts \"{b.get('msg')}\"")
                for b in buttons
            )
            self.t.say("bot", f"   buttons under it: {shown}")
        return str(reply["msg"])

    def authorize(self) -> None:
        self.step = "/instagram authorize"
        reply = self.command("/instagram authorize")
        links = [u for u in _URL.findall(reply) if "/dialog/oauth" in u]
        if not links:
            raise DemoFailed("the bot's answer to /instagram authorize holds no login link")
        self.t.say("admin", f"gets the single-use login link {short(links[0])}")
        self.step = "Facebook Login"
        seen = len(self.bot_dms())
        login = self.http.get(links[0], timeout=5)
        if login.status_code != 200 or "Continue as" not in login.text:
            raise DemoFailed(f"the login dialog did not open (HTTP {login.status_code})")
        self.t.say("browser", f"opens the link: Facebook Login dialog, clicks "
                              f"\"Continue as {META_USER}\"")
        location = self.consent(login, "continue", "Meta")
        self.step = "OAuth callback"
        callback = self.http.get(location, timeout=10)
        title = page_title(callback.text)
        self.t.say("browser", f"Meta redirects to /oauth/callback -> HTTP {callback.status_code} "
                              f"\"{title}\"")
        if callback.status_code != 200:
            raise DemoFailed(f"/oauth/callback answered HTTP {callback.status_code}: {title}")
        if "page_id" in callback.text:
            self.step = "page choice"
            action, fields = parse_form(callback.text, callback.url)
            choices = re.findall(r'name="page_id" value="([^"]+)"', callback.text)
            fields["page_id"] = SHOP["id"]
            self.t.say("browser", f"{len(choices)} pages offered; picks {SHOP['name']} "
                                  f"(@{SHOP['instagram_business_account']['username']})")
            chosen = self.http.post(action, data=fields, timeout=10,
                                    headers={"Origin": self.public_url})
            title = page_title(chosen.text)
            self.t.say("browser", f"POST /oauth/select -> HTTP {chosen.status_code} \"{title}\"")
            if chosen.status_code != 200:
                raise DemoFailed(f"/oauth/select answered HTTP {chosen.status_code}: {title}")
        self.step = "page connected"
        wait_for("the app subscribed to the chosen page at Meta",
                 lambda: self.meta.subscription(SHOP["id"]) is not None, alive=self.alive)
        self.t.say("meta", f"app installed on {SHOP['name']} (webhooks on)")
        handle = "@" + SHOP["instagram_business_account"]["username"]
        for dm in wait_for("the bot's DM confirming the connection",
                           lambda: [m for m in self.bot_dms()[seen:] if handle in m["msg"]],
                           alive=self.alive)[:1]:
            self.t.say("bot", f"-> {ADMIN} (DM): {short(dm['msg'])}")

    def consent(self, page: requests.Response, action: str, who: str) -> str:
        """Submit a login dialog's form with ``action``; the bot URL it redirects to."""
        target, fields = parse_form(page.text, page.url)
        fields["action"] = action
        answer = self.http.post(target, data=fields, allow_redirects=False, timeout=5)
        location = answer.headers.get("Location", "")
        if answer.status_code != 302 or not location.startswith(self.public_url):
            raise DemoFailed(f"{who} did not redirect to the bot (HTTP {answer.status_code})")
        return location

    def instagram_login(self) -> None:
        """Connect an account with no Facebook Page, and let one of its visitors write."""
        self.step = "Instagram Login"
        reply = self.command("/instagram authorize")
        links = [u for u in _URL.findall(reply) if "/oauth/authorize" in u]
        if not links:
            raise DemoFailed("the authorize DM offers no Instagram Login link")
        consent = self.http.get(links[0], timeout=5)
        if consent.status_code != 200 or "Allow" not in consent.text:
            raise DemoFailed(f"Instagram's consent page did not open (HTTP "
                             f"{consent.status_code})")
        self.t.say("browser", f"opens the Instagram Login link, clicks \"Allow\" for "
                              f"@{STUDIO['username']} (no Facebook Page)")
        location = self.consent(consent, "allow", "Instagram")
        seen = len(self.bot_dms())
        callback = self.http.get(location.split("#", 1)[0], timeout=10)
        title = page_title(callback.text)
        self.t.say("browser", f"Instagram redirects to /oauth/instagram/callback -> HTTP "
                              f"{callback.status_code} \"{title}\"")
        if callback.status_code != 200:
            raise DemoFailed(f"/oauth/instagram/callback answered HTTP {callback.status_code}")
        wait_for("the account's webhooks turned on at Meta",
                 lambda: self.meta.ig_subscription(STUDIO["id"]), alive=self.alive)
        self.t.say("meta", f"@{STUDIO['username']}: webhooks on (me/subscribed_apps), 60-day "
                           "token issued")
        dm = wait_for("the bot's DM confirming the Instagram Login",
                      lambda: [m for m in self.bot_dms()[seen:] if STUDIO["username"] in m["msg"]],
                      alive=self.alive)[0]
        self.t.say("bot", f"-> {ADMIN} (DM): {short(dm['msg'])}")
        self.step = "a visitor writes to the account without a Page"
        nora = self.meta.new_igsid()
        self.meta.set_profile(nora, name="Nora Lund")
        text = "Do you still have the blue vase?"
        payload = self.meta.text_event(STUDIO["id"], nora, text)
        status, _ = self.meta.deliver(None, payload, secret=IG_APP_SECRET)
        self.t.say("visitor", f"Nora Lund -> @{STUDIO['username']} on Instagram: \"{text}\" "
                              f"(signed with the Instagram app secret; webhook answered {status})")
        room = wait_for("Nora's room with her message",
                        lambda: next((r for r in self.rc.livechat_rooms()
                                      if r.get("fname") == "Nora Lund"
                                      and any(m.get("msg") == text
                                              for m in self.rc.room_messages(r["_id"]))),
                                     None), alive=self.alive)
        self.t.say("omni", f"room {room['_id']} opened for \"Nora Lund\" (@{STUDIO['username']}"
                           ", Instagram Login); her message is in it")

    def configure_page(self) -> None:
        self.step = "/instagram edit"
        page = SHOP["id"]
        self.command(f"/instagram edit {page} department {DEPARTMENT}")
        self.command(f"/instagram edit {page} welcome {WELCOME}")
        self.command(f"/instagram edit {page} offline {OFFLINE}")
        self.command(f"/instagram edit {page} finished {FINISHED}")

    # -- 2. a visitor, a room, an agent ---------------------------------------------------
    def visitor_token(self, igsid: str) -> str:
        return visitor_token(self.secret, SHOP["id"], igsid)

    def rooms_of(self, igsid: str) -> list[dict]:
        token = self.visitor_token(igsid)
        return [r for r in self.rc.livechat_rooms() if (r.get("v") or {}).get("token") == token]

    def received(self, igsid: str, text: str) -> dict | None:
        """The Send API call that delivered ``text`` to ``igsid``, if any."""
        for sent in self.meta.sent_messages(SHOP["id"], igsid, ok=True):
            if (sent.get("body") or {}).get("message", {}).get("text") == text:
                return sent
        return None

    def write(self, who: str, igsid: str, text: str) -> None:
        ig = SHOP["instagram_business_account"]["id"]
        status, _ = self.meta.deliver(None, self.meta.text_event(ig, igsid, text))
        self.t.say("visitor", f"{who} -> @{SHOP['instagram_business_account']['username']} "
                              f"on Instagram: \"{text}\" (webhook answered {status})")
        if status != 200:
            raise DemoFailed(f"the bot answered the Instagram webhook with HTTP {status}")

    def in_room(self, igsid: str, text: str) -> dict | None:
        token = self.visitor_token(igsid)
        for room in self.rooms_of(igsid):
            for msg in self.rc.room_messages(room["_id"]):
                if msg.get("token") == token and msg.get("msg") == text:
                    return room
        return None

    def visitor_writes(self) -> tuple[str, dict]:
        self.step = "a visitor writes"
        jane = self.meta.new_igsid()
        self.meta.set_profile(jane, name="Jane Doe", username="jane.doe")
        text = "Hi! Do you ship to Canada?"
        self.write("Jane Doe (@jane.doe)", jane, text)
        self.step = "the room opens"
        room = wait_for("Jane's message in an Omnichannel room",
                        lambda: self.in_room(jane, text), alive=self.alive)
        served = (room.get("servedBy") or {}).get("username") or "nobody yet"
        self.t.say("omni", f"room {room['_id']} opened for \"{room.get('fname')}\" in "
                           f"{DEPARTMENT}, served by {served}; the message is in it")
        self.step = "welcome text"
        wait_for("the welcome text on Instagram", lambda: self.received(jane, WELCOME),
                 alive=self.alive)
        self.t.say("visitor", f"Jane receives: \"{WELCOME}\"")
        return jane, room

    def agent_replies(self, jane: str, room: dict) -> None:
        self.step = "an agent replies"
        text = "Hi Jane! Yes, we ship to Canada in 3-5 days."
        self.rc.agent_reply(AGENT, room["_id"], text)
        self.t.say("agent", f"{AGENT} in room {room['_id']}: \"{text}\"")
        sent = wait_for("the agent's reply on Instagram", lambda: self.received(jane, text),
                        alive=self.alive)
        self.t.say("visitor", f"Jane receives: \"{text}\" (Send API message "
                              f"{short(str(sent.get('message_id')), 24)})")

    # -- 3. nobody online ------------------------------------------------------------------
    def nobody_online(self) -> None:
        self.step = "no agent online"
        self.rc.set_agent_status(AGENT, "offline")
        self.t.say("agent", f"{AGENT} goes offline: no agent is available")
        sam = self.meta.new_igsid()
        self.meta.set_profile(sam, name="Sam Lee", username="sam.lee")
        text = "Is the blue mug back in stock?"
        self.write("Sam Lee (@sam.lee)", sam, text)
        wait_for("the offline text on Instagram", lambda: self.received(sam, OFFLINE),
                 alive=self.alive)
        self.t.say("visitor", f"Sam receives: \"{OFFLINE}\"")
        if self.rooms_of(sam):
            raise DemoFailed("a room opened for Sam although no agent was online")
        self.t.say("bot", "Sam's message waits in the bridge's queue (no room yet)")
        time.sleep(1.0)  # a short offline spell
        self.step = "delivery once an agent is back"
        self.rc.set_agent_status(AGENT, "online")
        back = time.monotonic()
        self.t.say("agent", f"{AGENT} is back online")
        room = wait_for("Sam's waiting message delivered into a room",
                        lambda: self.in_room(sam, text), timeout=25, alive=self.alive)
        self.t.say("omni", f"room {room['_id']} opened for \"{room.get('fname')}\"; the waiting "
                           f"message delivered {time.monotonic() - back:.1f} s after the agent "
                           "came back")
        wait_for("the welcome text for Sam's new room", lambda: self.received(sam, WELCOME),
                 alive=self.alive)
        self.t.say("visitor", f"Sam receives: \"{WELCOME}\"")

    # -- 4. closing --------------------------------------------------------------------------
    def close_room(self, jane: str, room: dict) -> None:
        self.step = "the room closes"
        self.rc.close_room(room["_id"], by=AGENT)
        self.t.say("agent", f"{AGENT} closes room {room['_id']}")
        wait_for("the finished text on Instagram", lambda: self.received(jane, FINISHED),
                 alive=self.alive)
        self.t.say("visitor", f"Jane receives: \"{FINISHED}\"")

    def show_metrics(self) -> None:
        self.step = "metrics"
        from prometheus_client.parser import text_string_to_metric_families

        text = self.http.get(self.public_url + "/metrics", timeout=5).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "rcig_messages_relayed_total":
                    key = f"relayed {s.labels['direction']}"
                elif s.name == "rcig_webhooks_received_total":
                    key = f"webhooks {s.labels['source']}"
                else:
                    continue
                totals[key] = totals.get(key, 0) + s.value
        summary = ", ".join(f"{k} {v:g}" for k, v in sorted(totals.items()))
        self.t.say("bot", f"GET /metrics -> {summary}")

    # -- keep running / teardown ------------------------------------------------------------
    def keep_running(self) -> None:
        """Print the URLs and block until Ctrl-C / SIGTERM."""
        reply = self.command("/instagram authorize")
        link = next((u for u in _URL.findall(reply) if "/dialog/oauth" in u), "(none)")
        self.command("/instagram pages")
        edit = self.command(f"/instagram edit {SHOP['id']}")
        form = next((u for u in _URL.findall(edit) if "/settings/" in u), "(none)")
        lines = [
            "",
            "Everything is still running. Poke at it (Ctrl-C to stop):",
            f"  bot health    {self.public_url}/healthz",
            f"  bot metrics   {self.public_url}/metrics",
            f"  OAuth login   {link}",
            "                (a fresh single-use link: open it in a browser to walk the sandbox",
            "                 Facebook Login -> /oauth/callback -> page choice)",
            f"  settings form {form}",
            f"                (the page's settings form, single use, 10 minutes; a fresh one:"
            f" instagram edit {SHOP['id']})",
            "  buttons       shown under each DM above (the sandbox Rocket.Chat has no web",
            "                client to click them in; a click posts the command shown)",
            f"  Rocket.Chat   {self.rc.url}  (REST /api/v1, DDP /websocket; users {ADMIN} / "
            f"{ADMIN_PASSWORD}, {AGENT} / {AGENT_PASSWORD})",
            f"  Meta Graph    {self.meta.graph_url}/{self.meta.api_version}",
            f"  config        {self.config_path}",
            f"                (try: rc-instagram doctor --config {self.config_path})",
            f"  bot log       {self.log_path}",
        ]
        for line in lines:
            self.echo(line)
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.is_set():
                self.alive()
                stop.wait(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)

    def stop_bot(self) -> int | None:
        """SIGTERM the bot and wait; return its exit code (None if it had to be killed)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                return None
        return proc.returncode

    def log_tail(self, lines: int = 15) -> list[str]:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def close(self) -> None:
        """Stop the bot and the sandboxes; delete the temporary directory."""
        self.stop_bot()
        for server in (self.meta, self.rc):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if self._log_file is not None:
            self._log_file.close()
        self.http.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def parse_form(page: str, base_url: str) -> tuple[str, dict[str, str]]:
    """The first form of an HTML page: absolute action URL and its hidden fields."""
    match = re.search(r'<form[^>]*action="([^"]*)"', page)
    if match is None:
        raise DemoFailed("the page has no form")
    action = urljoin(base_url, html.unescape(match.group(1)))
    fields = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(
            r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }
    return action, fields


def page_title(page: str) -> str:
    match = re.search(r"<title>(.*?)</title>", page, re.S)
    return html.unescape(match.group(1)).strip() if match else "(no title)"


def run_demo(*, keep_running: bool = False, echo: Callable[[str], None] = print) -> int:
    """Play the story; 0 when every step happened, 1 (with the reason) otherwise."""
    demo = Demo(echo)
    echo("rc-instagram demo: sandbox Rocket.Chat and Meta on loopback, the real bot as a "
         "subprocess")
    code = 0
    try:
        demo.run()
        if keep_running:
            demo.keep_running()
        demo.step = "stop the bot"
        exit_code = demo.stop_bot()
        if exit_code != 0:
            raise DemoFailed(f"the bot did not stop cleanly (exit code {exit_code})")
        demo.t.say("bot", "stopped cleanly on SIGTERM (exit 0)")
        echo(f"demo finished in {demo.t.elapsed:.1f} s: every step above happened for real")
    except DemoFailed as exc:
        code = 1
        echo(f"demo FAILED at step \"{demo.step}\" after {demo.t.elapsed:.1f} s: {exc}")
        tail = demo.log_tail()
        if tail:
            echo("last lines of the bot's log:")
            for line in tail:
                echo("  " + line)
    except KeyboardInterrupt:
        code = 130
        echo("demo interrupted")
    finally:
        demo.close()
    return code
