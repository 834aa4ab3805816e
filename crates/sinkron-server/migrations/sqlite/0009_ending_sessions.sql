-- 0009: sessions of a deleted account answer once more, with nothing.
--
-- Deleting one of Sinkron's own accounts erases its records and marks each of its sessions
-- `ending`: the next request with such a token is answered as the (now empty) account — a
-- reset that makes the device drop its copy, its old unsent writes taken and not stored —
-- and the token is deleted, so every later request is refused (401). The account's row
-- stays, renamed `deleted:<id>` without a password, until its last session is gone.
ALTER TABLE tokens ADD COLUMN ending INTEGER NOT NULL DEFAULT 0;
