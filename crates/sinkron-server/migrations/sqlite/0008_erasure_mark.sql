-- 0008: what a device must drop after an erasure.
--
-- A device learns that its records are gone from a whole state (a reset) whose highest
-- version is above them; a whole state with no record at all says nothing about versions.
-- So the erasure keeps the collection and key of the erased user's newest record, and a user
-- made again for the same subject starts with a tombstone of it at its first version: the
-- reset a device of the erased user gets ends at that version, above everything it holds.
ALTER TABLE erasures ADD COLUMN collection TEXT;
ALTER TABLE erasures ADD COLUMN key TEXT;
