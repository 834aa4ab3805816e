-- 0012: what a push that takes a user past a collection cap reads, so that its work does
-- not grow with what the user keeps (a history of 1,000 entries was read and sorted on every
-- new entry).
--
-- How many records hold a value in each of a user's collections, kept by every push (the
-- plan's `counts`) and emptied with the user's records; `users.records` is their sum.
CREATE TABLE collection_counts (
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    collection TEXT    NOT NULL,
    live       INTEGER NOT NULL,
    PRIMARY KEY (user_id, collection)
) WITHOUT ROWID;

INSERT INTO collection_counts (user_id, collection, live)
SELECT user_id, collection, COUNT(*) FROM records WHERE value IS NOT NULL
GROUP BY user_id, collection;

-- The records holding a value in the cap's order (`updatedAt`, then client id and key,
-- bytewise): the oldest, which a cap evicts, are read first and only as many as it needs.
-- Tombstones never count against a cap. On a large database the first start of this version
-- takes a while to build both.
CREATE INDEX records_live_age ON records (user_id, collection, updated_at, client_id, key)
    WHERE value IS NOT NULL;
