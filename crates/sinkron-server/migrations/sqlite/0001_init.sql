-- 0001: accounts, sign-in tokens, records and per-client acknowledgements.
--
-- Never edit this file once released: add 0002_*.sql instead. The runner in
-- src/store/sqlite.rs applies each file once, in order, and notes it in schema_migrations.

-- One row per account. `version` counts every accepted (winning) change of the user and is
-- the pull cursor; `horizon` is the highest version whose tombstone has been compacted away,
-- so a client whose cursor is below it must start over with a full reset.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    version       INTEGER NOT NULL DEFAULT 0,
    horizon       INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

-- Sign-in tokens, stored only as the SHA-256 of the token the client holds.
CREATE TABLE tokens (
    token_hash BLOB    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX tokens_user ON tokens (user_id);

-- The latest version of each record. `value` is JSON object text, or NULL for a tombstone.
-- `version` is the user's version at which this row was last written; `stored_at` is the
-- server's clock then (tombstone compaction goes by it, not by the client's updated_at).
CREATE TABLE records (
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    collection TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    value      TEXT,
    updated_at INTEGER NOT NULL,
    client_id  TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    stored_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, collection, key)
) WITHOUT ROWID;

-- Pulls page by version; every version is unique per user, so a page never splits a change.
CREATE UNIQUE INDEX records_user_version ON records (user_id, version);

-- Compaction looks only at tombstones.
CREATE INDEX records_tombstones ON records (stored_at) WHERE value IS NULL;

-- The highest mutation id applied per (user, client): a retried push at or below it is a no-op.
CREATE TABLE clients (
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id TEXT    NOT NULL,
    ack       INTEGER NOT NULL,
    PRIMARY KEY (user_id, client_id)
) WITHOUT ROWID;
