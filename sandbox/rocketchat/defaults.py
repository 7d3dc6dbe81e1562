"""Seed data of a fresh Rocket.Chat: roles, permissions and settings with real ids and defaults.

Sources: protocols/rocketchat.md §3 (public roles), §4.6 (rate limiter), §5 (CRM webhooks),
§2.1 (slash commands), §7 (message size); permission seeds from upsertPermissions
(``app/authorization/server/constant/permissions.ts``).
"""

from __future__ import annotations

from typing import Any

# role -> (scope, description). A role is "public" when scope is Users and it has a
# description (roles.getUsersInPublicRoles); bot/app/user have an empty description.
ROLES: dict[str, tuple[str, str]] = {
    "admin": ("Users", "Admin"),
    "moderator": ("Subscriptions", "Moderator"),
    "leader": ("Subscriptions", "Leader"),
    "owner": ("Subscriptions", "Owner"),
    "user": ("Users", ""),
    "bot": ("Users", ""),
    "app": ("Users", ""),
    "guest": ("Users", ""),
    "anonymous": ("Users", ""),
    "livechat-agent": ("Users", "Livechat Agent"),
    "livechat-manager": ("Users", "Livechat Manager"),
    "livechat-monitor": ("Users", "Livechat Monitor"),
}

PUBLIC_ROLES = frozenset(r for r, (scope, desc) in ROLES.items() if scope == "Users" and desc)

_LIVECHAT_STAFF = ["livechat-manager", "livechat-monitor", "admin"]

# permission id -> roles holding it by default (the subset the sandbox enforces).
PERMISSIONS: dict[str, list[str]] = {
    "access-permissions": ["admin"],
    "view-privileged-setting": ["admin"],
    "edit-privileged-setting": ["admin"],
    "api-bypass-rate-limit": ["admin", "bot", "app"],
    "send-many-messages": ["admin", "bot", "app"],
    # BeforeSavePreventMention: @all/@here need these; bot and visitors hold neither.
    "mention-all": ["admin", "owner", "moderator", "user"],
    "mention-here": ["admin", "owner", "moderator", "user"],
    "view-full-other-user-info": ["admin"],
    "view-other-user-channels": ["admin"],
    "view-c-room": ["admin", "user", "bot", "app", "anonymous"],
    "view-d-room": ["admin", "user", "bot", "app", "guest"],
    "preview-c-room": ["admin", "user", "anonymous"],
    "create-d": ["admin", "user", "bot", "app", "livechat-agent", "livechat-manager"],
    "view-livechat-rooms": list(_LIVECHAT_STAFF),
    "view-livechat-departments": list(_LIVECHAT_STAFF),
    "view-livechat-manager": list(_LIVECHAT_STAFF),
    "view-l-room": ["livechat-agent", *_LIVECHAT_STAFF],
    "close-livechat-room": ["livechat-agent", *_LIVECHAT_STAFF],
    "close-others-livechat-room": list(_LIVECHAT_STAFF),
}

# setting id -> (default value, public?)
SETTINGS: dict[str, tuple[Any, bool]] = {
    "Site_Url": ("http://localhost:3000", True),
    "Site_Name": ("Rocket.Chat", True),
    "UI_Use_Real_Name": (False, True),
    "Threads_enabled": (True, True),
    "Message_AllowUnrecognizedSlashCommand": (False, True),
    "Message_MaxAllowedSize": (5000, True),
    "Message_AllowConvertLongMessagesToAttachment": (True, True),
    # Checked by the visitor's own edit/delete routes (Livechat.updateMessage/deleteMessage).
    "Message_AllowEditing": (True, True),
    "Message_AllowDeleting": (True, True),
    "Hide_System_Messages": ([], True),
    "E2E_Enable": (False, True),
    "E2E_Allow_Unencrypted_Messages": (False, True),
    "Accounts_LoginExpiration": (90, True),
    "API_Enable_Rate_Limiter": (True, False),
    "API_Enable_Rate_Limiter_Dev": (True, False),
    "API_Enable_Rate_Limiter_Limit_Calls_Default": (10, False),
    "API_Enable_Rate_Limiter_Limit_Time_Default": (60000, False),
    "Livechat_enabled": (True, True),
    "Livechat_title": ("Rocket.Chat", True),
    "Livechat_accept_chats_with_no_agents": (False, False),
    "Livechat_assign_new_conversation_to_bot": (False, False),
    "Livechat_Routing_Method": ("Auto_Selection", False),
    "Livechat_guest_count": (1, False),
    "Livechat_enable_message_character_limit": (False, True),
    "Livechat_message_character_limit": (0, True),
    "Omnichannel_allow_visitors_to_close_conversation": (True, True),
    "Livechat_webhookUrl": ("", False),
    "Livechat_secret_token": ("", False),
    "Livechat_webhook_on_start": (False, False),
    "Livechat_webhook_on_close": (False, False),
    "Livechat_webhook_on_chat_taken": (False, False),
    "Livechat_webhook_on_chat_queued": (False, False),
    "Livechat_webhook_on_forward": (False, False),
    "Livechat_webhook_on_offline_msg": (False, False),
    "Livechat_webhook_on_visitor_message": (False, False),
    "Livechat_webhook_on_agent_message": (False, False),
    "Livechat_webhook_on_capture": (False, False),
    "Livechat_http_timeout": (5000, False),
    # server/settings/file-upload.ts (see sandbox/rocketchat/files.py)
    "FileUpload_ProtectFiles": (True, True),
    "FileUpload_Enable_json_web_token_for_files": (True, False),
    "FileUpload_Restrict_to_room_members": (True, False),
    "FileUpload_Restrict_to_users_who_can_access_room": (False, False),
}

# Per-route rate limits and the reported version depend on the release: see versions.py.
