-- 0007: the site's users erased through the admin API.
--
-- Erasing deletes the user and everything stored for it, and leaves one row here: the
-- user's last version and when it was erased. If the same site user id is seen again (a
-- device still signed in, a later write by the site), its new user starts with version and
-- horizon above `version`, so a device's old cursor is answered with a reset of nothing
-- (the device drops its copy), and `writes_after` makes the push path acknowledge, without
-- storing, every write stamped at or before the erasure, so nothing of the erased data
-- comes back from a device's outbox.
CREATE TABLE erasures (
    subject   TEXT    PRIMARY KEY,
    version   BIGINT NOT NULL,
    erased_at BIGINT NOT NULL
);
ALTER TABLE users ADD COLUMN writes_after BIGINT NOT NULL DEFAULT 0;
