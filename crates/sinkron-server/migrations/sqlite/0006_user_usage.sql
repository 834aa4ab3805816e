-- 0006: what each user's live records take, for the per-user storage quota.
--
-- `records` counts the user's records that hold a value (tombstones are not counted: they
-- are compacted away), `bytes` the UTF-8 bytes of those values. A push keeps both up to
-- date in its transaction and is refused whole (`quota_exceeded`) when it would take the
-- user past `--user-records-max` or `--user-bytes-max`.
ALTER TABLE users ADD COLUMN records INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE users SET
    records = (SELECT COUNT(*) FROM records r WHERE r.user_id = users.id AND r.value IS NOT NULL),
    bytes = (SELECT COALESCE(SUM(LENGTH(CAST(r.value AS BLOB))), 0) FROM records r
             WHERE r.user_id = users.id AND r.value IS NOT NULL);
