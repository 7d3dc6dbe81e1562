"""The PostgreSQL store's schema, as numbered migrations applied on start.

``MIGRATIONS[n - 1]`` takes a database from schema version ``n - 1`` to ``n``. The
version lives in ``rcig_meta`` (key ``schema``). :func:`migrate` runs in one
transaction under an advisory lock, so replicas starting together apply each migration
once; a database whose version is higher than ``len(MIGRATIONS)`` was written by a
newer rc-instagram and is refused. Migrations are only ever appended, never edited.

Every table name starts with ``rcig_`` so the store can share a database (or a schema,
through ``search_path``) with other tools.
"""

from __future__ import annotations

from typing import Any

from storage.base import StorageError

#: Advisory-lock namespace (first int4 key) for schema migrations.
MIGRATION_LOCK = 0x52434701

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema. Records are JSON documents next to the columns queried.
    """
    CREATE TABLE rcig_pages (
        page_id      text PRIMARY KEY,
        instagram_id text NOT NULL,
        saved        bigserial,
        doc          jsonb NOT NULL
    );
    CREATE INDEX rcig_pages_instagram ON rcig_pages (instagram_id, saved);

    CREATE TABLE rcig_login_states (
        state      text PRIMARY KEY,
        kind       text NOT NULL,
        expires_at double precision NOT NULL,
        doc        jsonb NOT NULL
    );
    CREATE INDEX rcig_login_states_expiry ON rcig_login_states (expires_at);

    CREATE TABLE rcig_conversations (
        key           text PRIMARY KEY,
        visitor_token text NOT NULL,
        updated_at    double precision NOT NULL,
        waiting       boolean NOT NULL,
        doc           jsonb NOT NULL
    );
    CREATE INDEX rcig_conversations_token ON rcig_conversations (visitor_token);
    CREATE INDEX rcig_conversations_idle ON rcig_conversations (updated_at);
    CREATE INDEX rcig_conversations_waiting ON rcig_conversations (key) WHERE waiting;

    CREATE TABLE rcig_items (
        queue        text NOT NULL,
        item_id      text NOT NULL,
        conversation text NOT NULL,
        lock_key     integer NOT NULL,
        kind         text NOT NULL,
        payload      jsonb NOT NULL,
        order_ts     double precision NOT NULL,
        seq          bigserial,
        attempts     integer NOT NULL DEFAULT 0,
        next_try_at  double precision NOT NULL DEFAULT 0,
        created_at   double precision NOT NULL,
        last_error   text,
        progress     integer NOT NULL DEFAULT 0,
        PRIMARY KEY (queue, item_id)
    );
    CREATE INDEX rcig_items_order ON rcig_items (queue, conversation, order_ts, seq);
    CREATE INDEX rcig_items_conversation ON rcig_items (conversation);

    CREATE TABLE rcig_dedupe (
        key text PRIMARY KEY,
        exp double precision NOT NULL
    );
    CREATE INDEX rcig_dedupe_expiry ON rcig_dedupe (exp);

    CREATE TABLE rcig_inbox (
        id          bigserial PRIMARY KEY,
        owner       bigint NOT NULL,
        raw         bytea NOT NULL
    );
    CREATE INDEX rcig_inbox_owner ON rcig_inbox (owner, id);

    CREATE SEQUENCE rcig_replicas;
    """,
    # 2: items the relay gave up on, kept for the admins (Store.set_aside).
    """
    CREATE TABLE rcig_set_aside (
        queue        text NOT NULL,
        item_id      text NOT NULL,
        item         jsonb NOT NULL,
        reason       text NOT NULL,
        set_aside_at double precision NOT NULL,
        seq          bigint NOT NULL,
        PRIMARY KEY (queue, item_id)
    );
    """,
    # 3: the database's own clock on acknowledged webhooks and queued items, so that
    # replicas can tell whether an unqueued webhook is older than a queued item.
    """
    ALTER TABLE rcig_inbox ADD COLUMN received_at timestamptz NOT NULL
        DEFAULT clock_timestamp();
    ALTER TABLE rcig_items ADD COLUMN queued_at timestamptz NOT NULL
        DEFAULT clock_timestamp();
    CREATE INDEX rcig_inbox_received ON rcig_inbox (received_at);
    """,
    # 4: reconciliation with Instagram's record: the start of a send whose outcome is not
    # recorded yet (WorkItem.sending_at), and named numbers kept across restarts
    # (Store.mark: when Meta was last heard, per-page counts).
    """
    ALTER TABLE rcig_items ADD COLUMN sending_at double precision;
    CREATE TABLE rcig_marks (
        name  text PRIMARY KEY,
        value double precision NOT NULL
    );
    """,
    # 5: this month's visitors per page (/metrics, /instagram pages) from an index, not
    # a scan of every conversation's document. Generated, so every writer of ``doc``
    # keeps them right; adding them rewrites the table once.
    """
    ALTER TABLE rcig_conversations
        ADD COLUMN page_id text GENERATED ALWAYS AS (doc->>'page_id') STORED,
        ADD COLUMN last_inbound_at double precision GENERATED ALWAYS AS (
            CASE WHEN jsonb_typeof(doc->'last_inbound_at') = 'number'
                 THEN (doc->>'last_inbound_at')::double precision END) STORED;
    CREATE INDEX rcig_conversations_inbound ON rcig_conversations (last_inbound_at, page_id)
        WHERE last_inbound_at IS NOT NULL;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: Any, where: str) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the version found.

    ``conn`` is an open psycopg AsyncConnection outside a transaction; ``where`` names
    the database in messages (password masked).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS rcig_meta (key text PRIMARY KEY, value jsonb NOT NULL)"
        )
        cur = await conn.execute("SELECT value FROM rcig_meta WHERE key = 'schema'")
        row = await cur.fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise StorageError(
                f"{where} has schema version {found}, newer than this rc-instagram "
                f"understands ({SCHEMA_VERSION}); upgrade the bot (or restore a backup "
                f"taken before the newer version ran)"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1])
        if found < SCHEMA_VERSION:
            await conn.execute(
                "INSERT INTO rcig_meta (key, value) VALUES ('schema', %s::jsonb) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )
    return found
