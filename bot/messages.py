"""Every sentence a person reads: DM texts and HTML pages, in one reviewable place.

This module is a leaf (it imports nothing of ours except for type checking), so both
the runtime (``bot/``) and the command handlers (``commands/``) may use it.
Wording is plain Rocket.Chat markdown (``*bold*``, `` `code` ``).
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commands.base import Command

# --- escaping what comes from outside ---------------------------------------------------
# Page names, usernames, display names, department names and command arguments are
# chosen by other people. Put into a DM or a note as they are, `Shop [Re-authorize
# here](https://evil.example)` is a live link, `*`/`_` restyle the text, a backtick ends
# a code span and a display name `@all` pings a room (a bare URL stays a visible URL).
# Every template below is filled with render(), which escapes each value for where it
# stands.

#: Zero-width space: splits link and mention syntax without changing what is shown.
_ZWSP = "\u200b"
#: Characters Rocket.Chat's message parser takes as markup and honours a backslash before.
_MARKUP = re.compile(r"([\\*_~`])")
#: Link syntaxes: ``[label](url)`` and ``<url|label>``.
_LINKS = re.compile(r"(\]|<)(?=[(\S])")


class Markup(str):
    """Text already fit for a message (a rendered template, a trusted fragment)."""


def md(value: object) -> str:
    """``value`` as literal text in a Rocket.Chat message (outside code spans)."""
    if isinstance(value, Markup):
        return value
    text = _MARKUP.sub(r"\\\1", " ".join(str(value).splitlines()))
    text = _LINKS.sub(lambda m: m.group(1) + _ZWSP, text)
    return text.replace("@", "@" + _ZWSP)  # "@all" in a display name pings nobody


def code(value: object) -> str:
    """``value`` for inside a `` `code span` `` (where a backslash escapes nothing)."""
    if isinstance(value, Markup):
        return value
    return " ".join(str(value).splitlines()).replace("`", "\u02cb")  # ˋ cannot end the span


def render(template: str, **values: object) -> Markup:
    """``template.format(**values)`` with every value escaped for where it stands: inside
    a backtick code span with :func:`code`, elsewhere with :func:`md`. :class:`Markup`
    values (fragments rendered before) are inserted as they are."""
    out: list[str] = []
    ticks = 0
    for literal, field, spec, conversion in string.Formatter().parse(template):
        out.append(literal)
        ticks += literal.count("`")
        if field is None:
            continue
        value = values[field]
        if conversion or spec:
            value = format(value if conversion != "r" else repr(value), spec or "")
        out.append(code(value) if ticks % 2 else md(value))
    return Markup("".join(out))

# --- commands: router -----------------------------------------------------------------

UNKNOWN_COMMAND = "Unknown command `{name}`. Type `/instagram help` for the list."
NOT_ADMIN = (
    "Sorry, `/instagram {name}` is for administrators only "
    "(a user holding one of the roles: {roles})."
)
USAGE = "{problem}\nUsage: `{usage}`"
COMMAND_FAILED = (
    "Sorry, `/instagram {name}` failed: {reason}. Nothing was changed that you were not told about."
)
ADMIN_CHECK_FAILED = (
    "Sorry, I could not run `/instagram {name}`: it is for administrators, and I could not "
    "find out whether you are one ({reason}). Nothing was changed. Try again in a moment; "
    "if this persists, an administrator can run `rc-instagram doctor` (reference `{ref}`)."
)
INTERNAL_ERROR = (
    "Sorry, `/instagram {name}` failed unexpectedly. The error is in the bot's log "
    "(reference `{ref}`)."
)


def help_text(commands: Iterable[Command]) -> str:
    """The command list, one line per command, admin-only ones marked."""
    lines = ["*Instagram bridge commands*"]
    for command in commands:
        marker = "" if not command.requires_admin else " _(admin)_"
        lines.append(f"`{command.usage}` — {command.summary}{marker}")
    lines.append("In a direct message with me you can leave out the slash: `instagram help`.")
    return "\n".join(lines)


# --- OAuth: /instagram authorize, pages, subscribe, unsubscribe, unauthorize ---------------
# (owner: Meta-integration engineer). DM texts first, then the HTML pages of the OAuth
# callback. Every value put into HTML goes through html.escape.

AUTHORIZE_LINK = (
    "To connect an Instagram business account, open this link and log in with a Facebook "
    "account that manages the Facebook Page linked to it (the link works once, for "
    "{minutes} minutes):\n{url}"
)
AUTHORIZE_LINKS = (
    "To connect an Instagram business account, choose how (each link works once, for "
    "{minutes} minutes):\n"
    "• *Log in with Facebook* — the account is linked to a Facebook Page you manage:\n{url}\n"
    "• *Log in with Instagram* — no Facebook Page needed, log in with the Instagram "
    "account itself:\n{instagram_url}"
)
AUTHORIZE_BUTTON_FACEBOOK = "Log in with Facebook"
AUTHORIZE_BUTTON_INSTAGRAM = "Log in with Instagram"
AUTHORIZE_LINK_FROM_CHANNEL = (
    "(You typed `/instagram authorize` in a room; the login link is only ever sent here, "
    "in this direct message.)"
)
OAUTH_DM_CANCELLED = (
    "The Facebook login was cancelled, so nothing was connected. "
    "Type `/instagram authorize` when you are ready to try again."
)
OAUTH_DM_FAILED = (
    "Connecting Instagram failed: {reason}. Nothing was connected. "
    "Type `/instagram authorize` to try again."
)
OAUTH_DM_NO_PAGES = (
    "The Facebook login shared no Facebook Page with the bot, so nothing was connected. "
    "Type `/instagram authorize` again and tick the Page linked to your Instagram account."
)
OAUTH_DM_NO_ELIGIBLE = "None of the Facebook Pages you shared has an Instagram account linked."
OAUTH_DM_SKIPPED = (
    "Skipped *{name}* (`{page_id}`): no Instagram professional account is linked to it. "
    "Fix: link the Page to Instagram (Meta Business Suite > Settings > Instagram accounts), "
    "then type `/instagram authorize` again."
)
OAUTH_DM_CHOOSE = (
    "Several of your Facebook Pages have an Instagram account: choose one in the browser "
    "window to finish connecting."
)
OAUTH_DM_CONNECTED = (
    "Connected Instagram *@{username}* through the Facebook Page *{name}* (page id "
    "`{page_id}`). Its direct messages now open Omnichannel conversations.\n"
    "Next steps: `/instagram edit {page_id}` to choose the department and the welcome, "
    "finished and offline texts; `/instagram pages` lists every connected page."
)
OAUTH_DM_RECONNECTED = (
    "Re-authorized Instagram *@{username}* (Facebook Page *{name}*, page id `{page_id}`): "
    "its tokens were renewed and its settings kept. `/instagram edit {page_id}` shows them."
)
IG_LOGIN_DM_CONNECTED = (
    "Connected Instagram *@{username}* through Instagram Login (no Facebook Page; account "
    "id `{page_id}`). Its direct messages now open Omnichannel conversations; its token "
    "lasts 60 days and the bot renews it on its own.\n"
    "Next steps: `/instagram edit {page_id}` to choose the department and the welcome, "
    "finished and offline texts; `/instagram pages` lists every connected account."
)
IG_LOGIN_DM_RECONNECTED = (
    "Re-authorized Instagram *@{username}* (Instagram Login, account id `{page_id}`): its "
    "token was renewed and its settings kept. `/instagram edit {page_id}` shows them."
)
OAUTH_DM_SUBSCRIPTION_LISTED = (
    "Meta lists the bot as installed on the Page (Page field {fields}); Instagram events "
    "reach it through the app's Instagram webhook."
)
OAUTH_DM_SUBSCRIPTION_UNCONFIRMED = (
    "Meta accepted the installation on the Page but could not be asked to confirm it just "
    "now; `rc-instagram doctor` and the bot's standing watch check it again."
)
OAUTH_DM_SUBSCRIBE_FAILED = (
    "Saved the Facebook Page *{name}* (`{page_id}`, @{username}), but installing the bot "
    "on it at Meta failed ({reason}), so its messages are not bridged yet. "
    "Type `/instagram subscribe {page_id}` to try again."
)

#: Why the bridge asks for each Facebook permission (DMs, the missing-permission page
#: and the README's permission list say the same).
PERMISSION_REASONS = {
    "instagram_basic": "read the Instagram account linked to the Page (its id and @username)",
    "instagram_manage_messages": "receive and answer the account's Instagram Direct messages",
    "pages_manage_metadata": "install the bot on the Page, which Meta needs to deliver webhooks",
    "pages_show_list": "list the Facebook Pages you manage, to pick the one to connect",
    "pages_read_engagement": "read the Page and the visitors' names and @usernames",
    "business_management": "see Pages owned by a Business portfolio (optional)",
}
OAUTH_DM_MISSING_PERMISSIONS = (
    "The Facebook login did not grant every permission the bridge needs, so nothing was "
    "connected. Missing:\n{missing}\n{fix}\nThis fresh link asks for them again (it works "
    "once, for {minutes} minutes):\n{url}"
)
OAUTH_MISSING_FIX_SCOPE = "In the Facebook dialog, keep every permission ticked."
OAUTH_MISSING_FIX_CONFIG = (
    "The bridge logs in with the Facebook Login for Business configuration `{config_id}`: "
    "add the missing permissions to it (App Dashboard > Facebook Login for Business > "
    "Configurations), then open the link."
)


def _missing_lines(missing: Sequence[str]) -> list[tuple[str, str]]:
    return [(name, PERMISSION_REASONS.get(name, "required")) for name in missing]


def oauth_missing_permissions_dm(
    missing: Sequence[str], config_id: str, url: str, minutes: int
) -> str:
    """The DM after a login that lacks required permissions, with a re-asking link."""
    lines = "\n".join(f"• `{name}` — {why}" for name, why in _missing_lines(missing))
    fix = (
        OAUTH_MISSING_FIX_CONFIG.format(config_id=config_id) if config_id
        else OAUTH_MISSING_FIX_SCOPE
    )
    return OAUTH_DM_MISSING_PERMISSIONS.format(missing=lines, fix=fix, url=url, minutes=minutes)


SUBSCRIBE_EARLIER_KEPT = (
    "Meta still lists the bot's earlier installation on the page, so its messages keep "
    "being bridged meanwhile."
)
SUBSCRIBE_NOW_OFF = (
    "Meta lists no installation of the bot on the page, so bridging is off for it until "
    "this is fixed"
)
WATCH_RESUBSCRIBED = (
    "Meta had removed the bot from the Facebook Page *{name}* (`{page_id}`, @{username}), "
    "so its Instagram messages had stopped arriving (Meta does this after webhooks failed "
    "for a while). The bot installed itself again; Meta now lists it with {fields}."
)
WATCH_RESUBSCRIBE_FAILED = (
    "Meta removed the bot from the Facebook Page *{name}* (`{page_id}`, @{username}), so "
    "its Instagram messages do not arrive, and installing it again failed ({reason}). "
    "`/instagram subscribe {page_id}` retries; `/instagram authorize` renews the login."
)

PAGES_NONE = "No Instagram account is connected yet. Type `/instagram authorize` to connect one."
PAGES_HEADER = "*Connected Instagram accounts* ({count})"
PAGES_LINE = (
    "• `{page_id}` — {name} — @{username} — department: {department} — subscribed: {subscribed}"
)
PAGES_VISITORS = " — visitors this month: {count}"
PAGES_CONTACTS = (
    "{total} Instagram visitor(s) wrote this month. Rocket.Chat counts each one it answers "
    "as a monthly active contact (Starter and Pro include {included} across all channels)."
)
PAGES_ROUTE_INSTAGRAM = " — via Instagram Login, token until {until}"
PAGES_NEEDS_REAUTH = " — *needs re-authorization* (`/instagram authorize`)"
# Appended to a page's line when Rocket.Chat refused some of its messages for good.
PAGES_SET_ASIDE = " — *{count} message(s) set aside*, last: {reason}"
# Appended to a page's line once reconciliation with Instagram's own record did anything:
# sends settled by reading the thread back, outcomes left unknown (the agent was told),
# visitor messages found in the threads that no webhook had delivered, last backfill.
PAGES_RECONCILE = (
    " — Instagram's record: {settled} send(s) settled by read-back, {unknown} unknown, "
    "{backfilled} message(s) backfilled, last backfill: {last}"
)
UNKNOWN_PAGE = "I know no connected page with id `{page_id}`. Known page ids: {known}."
UNKNOWN_PAGE_NONE = (
    "I know no connected page with id `{page_id}`: no page is connected yet "
    "(`/instagram authorize` connects one)."
)
SUBSCRIBED = "Bridging is on for *{name}* (`{page_id}`, @{username}): the bot is installed on it."
UNSUBSCRIBED = (
    "Bridging is off for *{name}* (`{page_id}`, @{username}): the bot was uninstalled from it "
    "and its new Instagram messages are not relayed. `/instagram subscribe {page_id}` turns "
    "it back on."
)
SUBSCRIBE_FAILED = "installing the bot on page `{page_id}` at Meta failed ({reason})"
UNSUBSCRIBE_META_FAILED = (
    "Bridging is off for *{name}* (`{page_id}`) here, but uninstalling the bot at Meta failed "
    "({reason}); Meta may keep sending its events, which are now ignored."
)
NEEDS_REAUTH_HINT = (
    "Meta no longer accepts the token of this page; type `/instagram authorize` and log in again."
)
UNAUTHORIZE_NOTHING = "No Instagram account is connected; there is nothing to unauthorize."
UNAUTHORIZE_SUMMARY = (
    "Disconnected {count} page(s): {pages}. Their tokens were deleted from the bot's storage."
)
UNAUTHORIZE_ALL_OK = "Meta confirmed every uninstall and the revocation of the login."
UNAUTHORIZE_FAILURES = (
    "These calls to Meta failed (the pages were forgotten here anyway; you can remove the "
    "app in Facebook Settings > Business integrations):\n{failures}"
)
#: To the admins: Meta's messaging_policy_enforcement (action block/unblock) for a page.
META_POLICY_ENFORCEMENT = (
    "Meta sent a policy enforcement notice (action: *{action}*) for Facebook Page *{name}* "
    "(page id `{page_id}`): {reason}. While blocked, replies to Instagram cannot be sent; "
    "see the app's alerts in the Meta App Dashboard."
)
#: To the admins, once per problem kind and page a day: a permission/app-setup refusal.
META_CONFIG_PROBLEM = (
    "Meta refused to deliver a reply from Instagram account *@{username}* (Facebook Page "
    "*{name}*, page id `{page_id}`) because of the Meta app's configuration or "
    "permissions: {error}. Typical causes: the app lacks Advanced Access to "
    "`instagram_manage_messages` (App Review), the Human Agent feature is not approved, or "
    "another app owns the conversation (handover). Agents see a short note; fix it in "
    "the Meta App Dashboard, then `/instagram doctor` shows the result."
)
REAUTH_NEEDED = (
    "Instagram account *@{username}* (Facebook Page *{name}*, page id `{page_id}`) lost its "
    "authorization at Meta: the token expired or was revoked. Replies to its visitors "
    "cannot be sent until an admin types `/instagram authorize` and logs in again."
)

# HTML pages of GET /oauth/callback and POST /oauth/select (no external assets, no tokens).

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title} — Instagram for Rocket.Chat</title>
<style>
body{{font-family:system-ui,sans-serif;line-height:1.5;max-width:38rem;margin:2rem auto;
padding:0 1rem;color:#1f2329;background:#fff}}
h1{{font-size:1.5rem}} code{{background:#f2f3f5;padding:0 .25rem}}
fieldset{{border:1px solid #cbced1;padding:1rem}} label{{display:block;margin:.5rem 0}}
button{{font:inherit;padding:.5rem 1.25rem;margin-top:1rem;color:#fff;background:#1d74f5;
border:0;border-radius:4px;cursor:pointer}} button:focus{{outline:3px solid #0b3d91}}
</style>
</head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"""


def html_page(title: str, *paragraphs: str, raw: str = "") -> str:
    """A complete page: ``title`` and ``paragraphs`` are escaped; ``raw`` is trusted markup."""
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return _PAGE.format(title=html.escape(title), body=body + raw)


def _skipped_html(skipped: Sequence[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    items = "\n".join(
        f"<li>{html.escape(name)} (<code>{html.escape(page_id)}</code>)</li>"
        for page_id, name in skipped
    )
    return (
        "<h2>Skipped pages</h2>\n<p>These Facebook Pages have no Instagram professional account "
        "linked. To bridge one, link it to Instagram (Meta Business Suite &gt; Settings &gt; "
        "Instagram accounts), then type <code>/instagram authorize</code> again.</p>\n"
        f"<ul>\n{items}\n</ul>\n"
    )


def oauth_invalid_state_page() -> str:
    return html_page(
        "This link cannot be used",
        "The login link has expired, was already used, or was not issued by this bot. "
        "Nothing was changed.",
        "Type /instagram authorize in Rocket.Chat to get a fresh link.",
    )


def oauth_not_admin_page() -> str:
    return html_page(
        "This link cannot be used",
        "The Rocket.Chat user who asked for this link is no longer an administrator. "
        "Nothing was connected.",
    )


def oauth_cancelled_page() -> str:
    return html_page(
        "Login cancelled",
        "Nothing was connected. When you are ready, type /instagram authorize in Rocket.Chat "
        "again. You can close this window.",
    )


def oauth_failed_page(reason: str) -> str:
    return html_page(
        "Connecting Instagram failed",
        f"Meta did not complete the login: {reason}. Nothing was connected.",
        "Type /instagram authorize in Rocket.Chat to try again.",
    )


def oauth_no_pages_page(skipped: Sequence[tuple[str, str]]) -> str:
    if not skipped:
        return html_page(
            "No Facebook Page was shared",
            "The login did not share any Facebook Page with the bot, so nothing was connected.",
            "Type /instagram authorize in Rocket.Chat again and tick the Page linked to your "
            "Instagram account.",
        )
    return html_page(
        "No Instagram account found",
        "None of the Facebook Pages you shared has an Instagram account linked, so nothing "
        "was connected.",
        raw=_skipped_html(skipped),
    )


def oauth_choose_page(
    action: str, state: str, candidates: Sequence[tuple[str, str, str]],
    skipped: Sequence[tuple[str, str]],
) -> str:
    """The page-choice form; ``candidates`` are (page_id, name, username)."""
    options = "\n".join(
        f'<label><input type="radio" name="page_id" value="{html.escape(pid)}" required'
        f"{' checked' if i == 0 else ''}> {html.escape(name)} — @{html.escape(username)} "
        f"(<code>{html.escape(pid)}</code>)</label>"
        for i, (pid, name, username) in enumerate(candidates)
    )
    form = (
        f'<form method="post" action="{html.escape(action)}">\n'
        f'<input type="hidden" name="state" value="{html.escape(state)}">\n'
        "<fieldset>\n<legend>Instagram account to connect</legend>\n"
        f"{options}\n</fieldset>\n"
        '<button type="submit">Connect</button>\n</form>\n'
    )
    return html_page(
        "Choose the Instagram account",
        "Several of your Facebook Pages have an Instagram account. Choose the one to bridge "
        "with Rocket.Chat (run /instagram authorize again later to add another).",
        raw=form + _skipped_html(skipped),
    )


def oauth_connected_page(
    name: str, username: str, page_id: str, skipped: Sequence[tuple[str, str]] = ()
) -> str:
    return html_page(
        "Instagram connected",
        f"@{username} (Facebook Page {name}, page id {page_id}) is now bridged with "
        "Rocket.Chat. The next steps are in your Rocket.Chat direct messages; you can close "
        "this window.",
        raw=_skipped_html(skipped),
    )


def ig_login_connected_page(username: str, ig_id: str) -> str:
    return html_page(
        "Instagram connected",
        f"@{username} (Instagram account id {ig_id}, connected with Instagram Login) is now "
        "bridged with Rocket.Chat. The next steps are in your Rocket.Chat direct messages; "
        "you can close this window.",
    )


def oauth_missing_permissions_page(missing: Sequence[str], config_id: str) -> str:
    items = "\n".join(
        f"<li><code>{html.escape(name)}</code> — {html.escape(why)}</li>"
        for name, why in _missing_lines(missing)
    )
    fix = (
        OAUTH_MISSING_FIX_CONFIG.format(config_id=config_id).replace("`", "") if config_id
        else OAUTH_MISSING_FIX_SCOPE
    )
    return html_page(
        "Permissions missing",
        "The Facebook login did not grant every permission the bridge needs, so nothing "
        "was connected.",
        fix,
        "A fresh link that asks for them again is in your Rocket.Chat direct messages.",
        raw=f"<h2>Missing permissions</h2>\n<ul>\n{items}\n</ul>\n",
    )


def oauth_subscribe_failed_page(name: str, page_id: str, reason: str) -> str:
    return html_page(
        "Connected, but not yet bridged",
        f"The Facebook Page {name} (page id {page_id}) was saved, but installing the bot on "
        f"it at Meta failed: {reason}.",
        f"Type /instagram subscribe {page_id} in Rocket.Chat to try again.",
    )

# --- Inbound: what agents see (Instagram events posted into the Omnichannel room) --------

IN_ATTACHMENT_LABELS = {
    "image": "Image",
    "video": "Video",
    "audio": "Voice message",
    "file": "File",
    "share": "Shared post",
    "ig_reel": "Reel",
    "reel": "Reel",
    "animated_image": "GIF",
    "ig_post": "Instagram post",
    "ig_story": "Story",
}
IN_ATTACHMENT_DEFAULT_LABEL = "Attachment"
IN_NO_LINK = "{label} (no link; open Instagram to view it)"
IN_STORY_LABEL = "story"
IN_STORY_MENTION = "📣 Mentioned you in their {link}"
IN_STORY_REPLY = "↩️ Replied to your {link}:"
IN_REPLY_TO = "↩️ In reply to {target}:"
# Inbound refusals. {excerpt} is the visitor's text (clipped, mentions neutralised);
# {reason} the route and error code (never a token).
IN_SET_ASIDE_NOTE = (
    "⚠️ Rocket.Chat refused a message from {visitor} ({reason}), so it is not shown above. "
    "It is kept by the Instagram bridge (`/instagram pages`). What they wrote: {excerpt}"
)
IN_SET_ASIDE_DM = (
    "Rocket.Chat refused a message from Instagram *@{username}* (page *{name}*, `{page_id}`) "
    "for good: {reason}. It was set aside (kept, not delivered) and the conversation moved on; "
    "the agent got a note in the room where there is one. `/instagram pages` counts the "
    "set-aside messages. I tell you once a day per page and cause."
)
IN_DEPARTMENT_GONE_DM = (
    "The Omnichannel department `{department}` of page *{name}* (`{page_id}`) no longer "
    "exists, so new Instagram conversations of that page are routed without a department. "
    "Choose another: `/instagram edit {page_id} department <name>`."
)
IN_TARGET_OURS = "a message sent from Rocket.Chat"
IN_TARGET_LINKED = "[an earlier message]({url})"
IN_TARGET_UNKNOWN = "an earlier message"
IN_REACTION = "Reacted {emoji} to {target}"
IN_SOME_REACTION = "with a reaction"
IN_UNREACTION = "Removed their reaction from {target}"
#: Replaces an unsent message's text where the server does not allow deleting it.
IN_UNSENT_NOTICE = "🗑 (the visitor unsent this message on Instagram)"
IN_UNSUPPORTED = "This content can't be shown here; open Instagram to view it."
IN_UNSUPPORTED_LINK = "This content can't be shown here; [open it on Instagram]({url})."
IN_EMPTY = "(an empty message; open Instagram to view it)"
IN_POSTBACK = "Tapped the button “{title}”"
IN_QUICK_REPLY = "(quick reply `{payload}`)"
IN_AD_REFERRAL = "ℹ️ Came from the ad “{title}”"
IN_UNTITLED_AD = "untitled"
IN_AD_ID = " (ad id {ad_id})"
IN_LINK_REFERRAL = "ℹ️ Opened the chat from an ig.me link"
IN_PRODUCT_REFERRAL = "ℹ️ Asked about a product in your Instagram shop (product id {product_id})"
IN_REF = " (ref `{ref}`)"
IN_ECHO = "📱 Sent by the business from the Instagram app (not from Rocket.Chat):\n{text}"
IN_ECHO_OTHER_APP = (
    "📱 Sent by the business through another app (Meta app id {app_id}), not from "
    "Rocket.Chat:\n{text}"
)
IN_UNKNOWN_VISITOR = "Instagram user {igsid}"

# --- Outbound (agent replies → Instagram; notes posted into the livechat room) ----------
# Notes are one sentence each: {visitor} is the visitor's name, {partial} is empty or
# OUTBOUND_PARTIAL, {error} is Meta's error (code and message; never a token).

OUTBOUND_WINDOW_TAG_DISABLED = (
    "⚠️ Not delivered to Instagram: {visitor} last wrote more than 24 hours ago, and "
    "replying later needs Meta's human agent tag, which this bridge does not have enabled"
    "{partial}."
)
OUTBOUND_WINDOW_HUMAN_ONLY = (
    "⚠️ Not delivered to Instagram: {visitor} last wrote more than 24 hours ago, and after "
    "that only a human agent may reply{partial}."
)
OUTBOUND_WINDOW_EXPIRED = (
    "⚠️ Not delivered to Instagram: {visitor} last wrote more than 7 days ago, so Instagram "
    "accepts no reply until they write again{partial}."
)
OUTBOUND_META_WINDOW = (
    "⚠️ Not delivered to Instagram: Instagram says the messaging window is closed, so "
    "{visitor} must write again before you can reply{partial}."
)
OUTBOUND_USER_UNAVAILABLE = (
    "⚠️ Not delivered to Instagram: {visitor} cannot receive messages right now (they may "
    "have blocked the account or turned off message requests){partial}."
)
OUTBOUND_ACCOUNT_UNAVAILABLE = (
    "⚠️ Not delivered to Instagram: messaging is not available for this Instagram account, "
    "so an administrator must check it in Meta's settings{partial}."
)
OUTBOUND_META_CONFIG = (
    "⚠️ Not delivered to Instagram: Meta refused it because of how the bridge's Meta app "
    "or Page is set up, not because of {visitor}; the admins have been told{partial}."
)
OUTBOUND_REFUSED = (
    "⚠️ Not delivered to Instagram: Instagram refused the message ({error}){partial}."
)
OUTBOUND_PAGE_NOT_CONNECTED = (
    "⚠️ Not delivered to Instagram: this conversation's Instagram account is no longer "
    "connected to the bridge, so an administrator must connect it again{partial}."
)
OUTBOUND_PARTIAL = " (only the first {sent} of {total} parts were delivered)"
# A send was interrupted (crash or timeout) and Instagram's record could not tell whether
# it arrived; {reason} is one of OUTCOME_UNKNOWN_REASONS, {partial} OUTBOUND_UNKNOWN_PART.
OUTBOUND_OUTCOME_UNKNOWN = (
    "⚠️ Not sure this reached Instagram{partial}: the send was interrupted and "
    "{reason}. It was not sent again, so {visitor} never gets it twice; if {visitor} "
    "did not get it, send it again."
)
OUTBOUND_UNKNOWN_PART = " (part {part} of {total})"
OUTCOME_UNKNOWN_REASONS = {
    "identical_texts": "the conversation holds the same text more than once, so "
                       "Instagram's record cannot tell which one this was",
    "thread_moved_on": "more than 20 messages came since, and Instagram only shows "
                       "the newest 20",
    "api_refused": "Instagram did not let the bridge read the conversation back",
}
# A file the bridge could not send; {name} is its file name, {error} one of MEDIA_* below.
# The rest of the message (its caption, other files) is still sent.
OUTBOUND_FILE_REFUSED = (
    "⚠️ The file “{name}” was not delivered to Instagram: {error}. The rest of the "
    "message was sent."
)
MEDIA_IMAGE_FORMAT = (
    "Instagram accepts images only as PNG, JPEG or GIF (this one is {format}); send it "
    "in one of those formats"
)
MEDIA_VIDEO_FORMAT = (
    "Instagram accepts videos only as MP4, MOV, AVI, WebM or OGG (this one is {format})"
)
MEDIA_FILE_FORMAT = (
    "Instagram accepts documents only as PDF; export the document as a PDF and send it "
    "again"
)
MEDIA_TOO_LARGE = (
    "it is {size:.1f} MB and Instagram accepts {kind} files of at most {limit} MB"
)
MEDIA_NOT_AUDIO = "it holds no sound the bridge could convert for Instagram"
MEDIA_CONVERSION_FAILED = (
    "Instagram does not accept its format and the bridge could not convert it"
)
MEDIA_CONVERSION_UNAVAILABLE = (
    "Instagram does not accept its format and this bridge cannot convert it (PyAV is "
    "not installed)"
)
MEDIA_FETCH_REFUSED = (
    "the bridge may not download it from Rocket.Chat (HTTP {status}). Its link expires "
    "after an hour; for older files an administrator must let the bridge's user read "
    "room files (File Upload > \"Restrict file access to users who can access room\")"
)
MEDIA_FETCH_MISSING = "it no longer exists in Rocket.Chat"
MEDIA_FETCH_TOO_LARGE = "it is larger than the 25 MB Instagram accepts for any file"
MEDIA_NOT_ROCKETCHAT = "its link does not point to a Rocket.Chat upload"
MEDIA_META_REFUSED = "Instagram refused it ({error})"

# --- commands: edit -----------------------------------------------------------------------

EDIT_SETTINGS = (
    "*Settings of {name}* (`{page_id}`{username})\n"
    "department: {department}\n"
    "welcome: {welcome}\n"
    "finished: {finished}\n"
    "offline: {offline}\n"
    "Change one with `/instagram edit {page_id} <setting> <value…>`, where setting is "
    "`department`, `welcome`, `finished` or `offline`; the value `none` clears it. "
    "Changes apply to the next conversation or message."
)
EDIT_UNSET = Markup("_(not set)_")
EDIT_DEPARTMENTS_FAILED = "I could not list the Omnichannel departments ({error})"
#: Fragments of lists (filled with render() like every template).
PAGE_REF = "*{name}* (`{page_id}`)"
BULLET = "• {item}"
CODE = "`{value}`"
BOLD = "*{value}*"
QUOTED = "“{value}”"
SEP_USERNAME = ", @{username}"
EDIT_UNKNOWN_SETTING = (
    "`{setting}` is not a setting; use `department`, `welcome`, `finished` or `offline`."
)
EDIT_MISSING_VALUE = "Give a value for `{setting}` (or `none` to clear it)."
EDIT_UNKNOWN_DEPARTMENT = (
    "There is no Omnichannel department named `{name}`. Departments: {known}."
)
EDIT_NO_DEPARTMENTS = "There is no Omnichannel department named `{name}` (none exist yet)."
EDIT_TOO_LONG = (
    "The {setting} text is {size} bytes long; Instagram accepts at most {limit} bytes "
    "(UTF-8) per message, so shorten it."
)
EDIT_DEPARTMENT_SET = (
    "Page *{name}*: new conversations now go to the department *{department}*."
)
EDIT_DEPARTMENT_CLEARED = "Page *{name}*: new conversations now go to no particular department."
EDIT_TEXT_SET = "Page *{name}*: the {setting} text is now:\n{text}"
EDIT_TEXT_CLEARED = "Page *{name}*: the {setting} text is cleared; none will be sent."

# --- buttons under DMs --------------------------------------------------------------------

AUTHORIZE_BUTTON = "Start authentication"
PAGES_BUTTON_EDIT = "Edit"
PAGES_BUTTON_SUBSCRIBE = "Subscribe"
PAGES_BUTTON_UNSUBSCRIBE = "Unsubscribe"

# --- the settings form (/settings/<state>) --------------------------------------------------

EDIT_FORM_LINK = (
    "Or change them in a form (the link works once, for {minutes} minutes, and only for "
    "you):\n{url}"
)
EDIT_FORM_BUTTON = "Edit page configuration"
SETTINGS_UNCHANGED = "Page *{name}*: the form was saved without changes."

_COUNTER_SCRIPT = """
for (const box of document.querySelectorAll("textarea[data-limit]")) {
  const out = document.getElementById(box.id + "-count");
  const limit = Number(box.dataset.limit);
  const update = () => {
    const size = new TextEncoder().encode(box.value).length;
    out.textContent = size + " / " + limit + " bytes";
    const over = size > limit;
    box.setAttribute("aria-invalid", over ? "true" : "false");
    out.classList.toggle("over", over);
  };
  box.addEventListener("input", update);
  update();
}
"""


def settings_link_invalid_page() -> str:
    return html_page(
        "This link cannot be used",
        "The settings link has expired, was already used, or was not issued by this bot. "
        "Nothing was changed.",
        "Type /instagram edit <pageId> in Rocket.Chat to get a fresh link.",
    )


def settings_unavailable_page() -> str:
    return html_page(
        "Try again in a moment",
        "Rocket.Chat did not answer, so your admin rights could not be checked. Nothing was "
        "changed; type /instagram edit <pageId> in Rocket.Chat for a fresh link.",
    )


def settings_not_admin_page() -> str:
    return html_page(
        "Not allowed",
        "Only Rocket.Chat users with an admin role for the Instagram bridge may change a "
        "page's settings. Nothing was changed.",
    )


def settings_page_gone_page() -> str:
    return html_page(
        "Page not connected",
        "This Instagram account is no longer connected, so there is nothing to change.",
    )


def settings_form_page(
    *, action: str, page: Any, departments: Sequence[dict] | None,
    values: Mapping[str, str] | None, error: str | None, nonce: str, limit: int,
) -> str:
    """The settings form of ``page``; ``values`` re-fill it after a refused save."""
    current = {
        "department": page.department_id or "",
        "welcome": page.welcome_text or "",
        "finished": page.finished_text or "",
        "offline": page.offline_text or "",
    }
    if values is not None:
        current.update({k: values.get(k, "") for k in current})
    options = ['<option value="">(no particular department)</option>']
    known = departments or []
    if departments is None and page.department_id:
        known = [{"_id": page.department_id, "name": page.department_name or page.department_id}]
    for dep in sorted(known, key=lambda d: str(d.get("name", "")).casefold()):
        dep_id = str(dep.get("_id", ""))
        if not dep_id:
            continue
        selected = " selected" if dep_id == current["department"] else ""
        options.append(f'<option value="{html.escape(dep_id)}"{selected}>'
                       f'{html.escape(str(dep.get("name") or dep_id))}</option>')
    listing_note = (
        "<p>The list of departments could not be read from Rocket.Chat; saving keeps the "
        "current department unless you clear it.</p>\n" if departments is None else ""
    )
    labels = {
        "welcome": ("Welcome text", "sent once when a new conversation starts"),
        "finished": ("Conversation-finished text", "sent when an agent closes the conversation"),
        "offline": ("Offline text", "sent when no agent is online (once per offline spell)"),
    }
    boxes = []
    for name, (label, hint) in labels.items():
        boxes.append(
            f'<label for="{name}">{label} <small>({hint}; empty = none)</small></label>\n'
            f'<textarea id="{name}" name="{name}" rows="4" data-limit="{limit}" '
            f'aria-describedby="{name}-count">{html.escape(current[name])}</textarea>\n'
            f'<output id="{name}-count" for="{name}" aria-live="polite">'
            f'{len(current[name].encode("utf-8"))} / {limit} bytes</output>'
        )
    alert = (f'<p role="alert" class="error">{html.escape(error)}</p>\n' if error else "")
    form = (
        alert
        + f'<form method="post" action="{html.escape(action)}">\n'
        "<fieldset>\n<legend>Routing</legend>\n"
        '<label for="department">Omnichannel department</label>\n'
        f'<select id="department" name="department">\n{chr(10).join(options)}\n</select>\n'
        f"{listing_note}</fieldset>\n"
        "<fieldset>\n<legend>Automatic texts (at most "
        f"{limit} bytes each, Instagram's limit)</legend>\n"
        + "\n".join(boxes)
        + "\n</fieldset>\n"
        '<button type="submit">Save</button>\n</form>\n'
        "<style>textarea{width:100%;font:inherit} output{display:block;font-size:.9rem}"
        " .over,.error{color:#b00020;font-weight:600}</style>\n"
        f'<script nonce="{html.escape(nonce)}">{_COUNTER_SCRIPT}</script>\n'
    )
    username = f" (@{page.username})" if page.username else ""
    return html_page(
        f"Settings of {page.name}",
        f"Facebook Page {page.name}{username}, page id {page.page_id}. Changes apply to the "
        "next conversation or message. This form works once; saving sends you a summary in "
        "Rocket.Chat.",
        raw=form,
    )


_BOLD = re.compile(r"[*]([^*\n]+)[*]")


def _plain(match: re.Match[str]) -> str:
    return match.group(1)


def settings_saved_page(name: str, summary: str) -> str:
    return html_page(
        "Settings saved",
        f"The settings of {name} are saved. A summary is in your Rocket.Chat direct "
        "messages; you can close this window.",
        raw=f"<pre>{html.escape(_BOLD.sub(_plain, summary))}</pre>",
    )
