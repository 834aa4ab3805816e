-- 0009: a deleted account's devices get one last day of answers, with nothing.
--
-- Deleting one of Sinkron's own accounts erases its records, frees its username and sets
-- `deleted_at`. For a day after that, its sessions are still answered, as the emptied
-- account: a device's next pull is a reset that makes it drop its copy, and its unsent writes
-- are acknowledged and never stored (the account's `writes_after` is set past any stamp).
-- Then its sessions are refused (401), and the hourly sweep removes the account's row.
ALTER TABLE users ADD COLUMN deleted_at INTEGER NOT NULL DEFAULT 0;
