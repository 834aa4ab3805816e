-- 0005: sessions end after a time without use.
--
-- `last_used_at` is when a request last came with the token (the server's clock, in
-- milliseconds), written at most about once a day per session: a token unused for
-- `--session-idle-secs` is refused with `token_expired` and deleted. Existing sessions
-- count as used when they were made.
ALTER TABLE tokens ADD COLUMN last_used_at INTEGER NOT NULL DEFAULT 0;
UPDATE tokens SET last_used_at = created_at;

-- The hourly sweep deletes sessions unused for longer than the limit.
CREATE INDEX tokens_last_used ON tokens (last_used_at);
