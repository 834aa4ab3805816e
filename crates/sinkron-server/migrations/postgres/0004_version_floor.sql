-- 0004: the version every user starts from after a restore from backup.
--
-- `sinkron restored` raises `version_floor` above any cursor the lost history could have
-- issued, and every user's `version` and `horizon` to it: a device whose cursor is from
-- before the restore is then behind its user's horizon and is answered with a reset (the
-- whole state), never with changes of a history that no longer exists. Users created later
-- start from the floor too.
CREATE TABLE meta (
    key   TEXT   PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('version_floor', 0);
