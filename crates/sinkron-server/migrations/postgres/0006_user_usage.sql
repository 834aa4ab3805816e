-- 0006: what each user's live records take, for the per-user storage quota.
--
-- `records` counts the user's records that hold a value (tombstones are not counted: they
-- are compacted away), `bytes` the UTF-8 bytes of those values. A push keeps both up to
-- date in its transaction (under the user's row lock) and is refused whole
-- (`quota_exceeded`) when it would take the user past `--user-records-max` or
-- `--user-bytes-max`.
ALTER TABLE users ADD COLUMN records BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;
UPDATE users u SET records = s.records, bytes = s.bytes
FROM (SELECT user_id, COUNT(*) AS records, SUM(octet_length(value)) AS bytes
      FROM records WHERE value IS NOT NULL GROUP BY user_id) s
WHERE u.id = s.user_id;
