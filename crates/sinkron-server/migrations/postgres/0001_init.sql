-- 0001: accounts, sign-in tokens, records and per-client acknowledgements.
--
-- Never edit this file once released: add 0002_*.sql instead. The runner in
-- src/store/postgres.rs applies every pending file in one transaction, under an advisory
-- lock, so nodes starting at once migrate exactly once, and notes each in schema_migrations.

-- One row per account. `version` counts every accepted (winning) change of the user and is
-- the pull cursor; `horizon` is the highest version whose tombstone has been compacted away,
-- so a client whose cursor is below it must start over with a full reset. A push locks this
-- row first: that serialises one user's pushes across every node.
CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT   NOT NULL UNIQUE,
    password_hash TEXT   NOT NULL,
    version       BIGINT NOT NULL DEFAULT 0,
    horizon       BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);

-- Sign-in tokens, stored only as the SHA-256 of the token the client holds. The primary key
-- is the poll path's index: token hash -> user in one lookup.
CREATE TABLE tokens (
    token_hash BYTEA  PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);

CREATE INDEX tokens_user ON tokens (user_id);

-- The latest version of each record. `value` is JSON object text, or NULL for a tombstone.
-- `collection`, `key` and `client_id` are the UTF-8 bytes the client sent, as BYTEA: they
-- compare bytewise whatever the database's collation (newest-wins breaks ties on
-- `client_id` bytewise), and a NUL character, which TEXT cannot hold, is stored as sent.
-- `version` is the user's version at which this row was last written; `stored_at` is the
-- server's clock then (tombstone compaction goes by it, not by the client's updated_at).
CREATE TABLE records (
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    collection BYTEA  NOT NULL,
    key        BYTEA  NOT NULL,
    value      TEXT,
    updated_at BIGINT NOT NULL,
    client_id  BYTEA  NOT NULL,
    version    BIGINT NOT NULL,
    stored_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, collection, key)
);

-- Pulls page by version; every version is unique per user, so a page never splits a change.
CREATE UNIQUE INDEX records_user_version ON records (user_id, version);

-- Compaction looks only at tombstones.
CREATE INDEX records_tombstones ON records (stored_at) WHERE value IS NULL;

-- The highest mutation id applied per (user, client): a retried push at or below it is a no-op.
CREATE TABLE clients (
    user_id   BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id BYTEA  NOT NULL,
    ack       BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
