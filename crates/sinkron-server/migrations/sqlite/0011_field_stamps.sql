-- 0011: records of a collection merged field by field (`--merge-fields`) keep their stamps.
--
-- `stamps` is the JSON of `sinkron_core::merge::Stamps`: each top-level field's newest write
-- as `[updatedAt, clientId]`, and the record's newest write and delete. A push merges into it
-- and writes it with the record; every other write of a record (a whole-record collection,
-- an erasure's tombstone) leaves it NULL, which reads as every field stamped with the record's
-- own `updated_at` and `client_id`. (0010 is PostgreSQL's change notifications; SQLite has
-- none, and keeps the numbers alike.)
ALTER TABLE records ADD COLUMN stamps TEXT;
