"""Access tokens at rest: encrypted with a key, clear errors for a wrong or missing key."""

from __future__ import annotations

import pytest

from storage import LoginState, Page, StorageError, TokenCipher, open_store
from tests.storage.helpers import stored_bytes

KEY = TokenCipher.generate_key()
OTHER_KEY = TokenCipher.generate_key()
SECRETS = ("EAAG-page-token-secret", "EAAG-user-token-secret", "EAAG-candidate-secret")


async def save_secrets(store, clock) -> None:
    await store.save_page(Page("p1", "Shop", "ig1", page_token=SECRETS[0], user_token=SECRETS[1]))
    await store.add_login_state(
        LoginState(
            "s1",
            "u1",
            "admin",
            clock() + 600,
            kind="select",
            data={"pages": [{"id": "p2", "access_token": SECRETS[2]}]},
        )
    )


async def test_tokens_are_not_in_the_files_when_a_key_is_set(make_store, store_path, clock):
    """With a key, no token appears in plain text at rest, before or after close."""
    store = await make_store(encryption_key=KEY)
    await save_secrets(store, clock)
    journal_state = stored_bytes(store_path)  # (TinyDB: changes still in the journal)
    await store.close()
    compacted_state = stored_bytes(store_path)  # (TinyDB: folded into the snapshot)
    for secret in SECRETS:
        assert secret.encode() not in journal_state
        assert secret.encode() not in compacted_state
    store = await make_store(encryption_key=KEY)
    page = await store.page("p1")
    assert (page.page_token, page.user_token) == SECRETS[:2]
    state = await store.consume_login_state("s1", "select", clock())
    assert state.data["pages"][0]["access_token"] == SECRETS[2]


async def test_without_a_key_tokens_are_stored_plain(make_store, store_path, clock):
    """No key: tokens are stored as they are (doctor warns about it)."""
    store = await make_store()
    await save_secrets(store, clock)
    assert SECRETS[0].encode() in stored_bytes(store_path)


async def test_wrong_key_is_a_clear_startup_error(make_store, store_path, clock):
    """Opening with another key fails at open(), naming the setting but not the key."""
    store = await make_store(encryption_key=KEY)
    await save_secrets(store, clock)
    await store.close()
    wrong = open_store(store_path, OTHER_KEY, clock=clock)
    with pytest.raises(StorageError) as caught:
        await wrong.open()
    message = str(caught.value)
    assert "encryption_key" in message and "not the key" in message
    assert OTHER_KEY not in message and KEY not in message
    # The refused start released the lock: the right key still opens it.
    store = await make_store(encryption_key=KEY)
    assert (await store.page("p1")).page_token == SECRETS[0]


async def test_missing_key_for_encrypted_store_is_refused(make_store, store_path, clock):
    """An encrypted store opened without any key is refused, not read as garbage."""
    store = await make_store(encryption_key=KEY)
    await save_secrets(store, clock)
    await store.close()
    with pytest.raises(StorageError, match=r"no storage\.encryption_key"):
        await open_store(store_path, None, clock=clock).open()


def test_malformed_key_is_refused_without_echoing_it(store_path):
    """A key that is not a Fernet key fails at once, and the message hides it."""
    with pytest.raises(StorageError) as caught:
        open_store(store_path, "not-a-fernet-key-but-a-secret")
    assert "not a valid Fernet key" in str(caught.value)
    assert "not-a-fernet-key-but-a-secret" not in str(caught.value)


async def test_plain_store_is_encrypted_when_a_key_is_added(make_store, store_path, clock):
    """Adding a key to an existing plain store encrypts the tokens already there."""
    store = await make_store()
    await save_secrets(store, clock)
    await store.close()
    store = await make_store(encryption_key=KEY)
    await store.close()
    data = stored_bytes(store_path)
    assert not any(secret.encode() in data for secret in SECRETS)
    store = await make_store(encryption_key=KEY)
    assert (await store.page("p1")).user_token == SECRETS[1]
