"""Encryption of access tokens at rest (Fernet, from ``cryptography``).

Only tokens are encrypted: ``Page.page_token``, ``Page.user_token`` and every string
value whose key ends in ``token`` inside ``LoginState.data`` (at any depth). An
encrypted value is stored as ``"fernet:<token>"`` so plain and encrypted values can be
told apart (a store written without a key is encrypted in place on the first start
with one). The store keeps a *key check* (a known plaintext encrypted with the key) so
a wrong key is detected at startup instead of at the first token use. No message ever
contains the key.
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from storage.base import StorageError

PREFIX = "fernet:"
_CHECK_PLAINTEXT = b"rc-instagram key check v1"


class TokenCipher:
    """Encrypts and decrypts token strings; a no-op when no key is configured."""

    def __init__(self, key: str | bytes | None) -> None:
        self._fernet: Fernet | None = None
        if key:
            try:
                self._fernet = Fernet(key.encode() if isinstance(key, str) else key)
            except (ValueError, TypeError):
                raise StorageError(
                    "storage.encryption_key (or RC_INSTAGRAM_STORAGE_KEY) is not a valid "
                    "Fernet key: it must be 32 url-safe base64-encoded bytes, e.g. from "
                    "python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'"
                ) from None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    @staticmethod
    def generate_key() -> str:
        """A fresh random key in the format ``storage.encryption_key`` expects."""
        return Fernet.generate_key().decode()

    # -- key check -----------------------------------------------------------------
    def key_check(self) -> str | None:
        """A value stored with the data that proves which key encrypted it."""
        if self._fernet is None:
            return None
        return self._fernet.encrypt(_CHECK_PLAINTEXT).decode()

    def verify(self, key_check: str | None, path: str) -> None:
        """Raise StorageError unless this cipher's key matches the stored ``key_check``."""
        if key_check is None:
            return  # data written without a key: it will be encrypted now
        if self._fernet is None:
            raise StorageError(
                f"{path} holds encrypted tokens but no storage.encryption_key "
                "(or RC_INSTAGRAM_STORAGE_KEY) is set; set the key it was written with"
            )
        try:
            ok = self._fernet.decrypt(key_check.encode()) == _CHECK_PLAINTEXT
        except (InvalidToken, ValueError):
            ok = False
        if not ok:
            raise StorageError(
                f"storage.encryption_key (or RC_INSTAGRAM_STORAGE_KEY) is not the key "
                f"{path} was encrypted with; set the original key"
            )

    # -- values ------------------------------------------------------------------
    def encrypt(self, value: str) -> str:
        if self._fernet is None or not value or value.startswith(PREFIX):
            return value
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str) -> str:
        if not isinstance(value, str) or not value.startswith(PREFIX):
            return value
        if self._fernet is None:
            raise StorageError("an encrypted token was found but no encryption key is set")
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise StorageError(
                "a stored token cannot be decrypted with storage.encryption_key"
            ) from None

    def encrypt_tree(self, value: Any) -> Any:
        """Copy ``value`` with every ``*token`` string (at any depth) encrypted."""
        return _map_tokens(value, self.encrypt)

    def decrypt_tree(self, value: Any) -> Any:
        """Copy ``value`` with every ``*token`` string (at any depth) decrypted."""
        return _map_tokens(value, self.decrypt)


def _map_tokens(value: Any, fn: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (fn(v) if isinstance(v, str) and _is_token_key(k) else _map_tokens(v, fn))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_map_tokens(v, fn) for v in value]
    return value


def _is_token_key(key: Any) -> bool:
    return isinstance(key, str) and key.lower().endswith("token")
