-- 0005: sessions end after a time without use; sign-in attempts counted across nodes.
--
-- `last_used_at` is when a request last came with the token (the server's clock, in
-- milliseconds), written at most about once a day per session: a token unused for
-- `--session-idle-secs` is refused with `token_expired` and deleted. Existing sessions
-- count as used when they were made.
ALTER TABLE tokens ADD COLUMN last_used_at BIGINT NOT NULL DEFAULT 0;
UPDATE tokens SET last_used_at = created_at;

-- The hourly sweep deletes sessions unused for longer than the limit.
CREATE INDEX tokens_last_used ON tokens (last_used_at);

-- The login throttle, shared by every node so that guessing a password through many nodes
-- is held back as through one: sign-in attempts per (username, client address) in a fixed
-- window. `key` is the SHA-256 of the pair, so no address is stored in the clear; `since`
-- is when the window began. A successful sign-in deletes the row; the hourly sweep deletes
-- windows that have ended.
CREATE TABLE login_attempts (
    key      BYTEA   PRIMARY KEY,
    attempts INTEGER NOT NULL,
    since    BIGINT  NOT NULL
);
