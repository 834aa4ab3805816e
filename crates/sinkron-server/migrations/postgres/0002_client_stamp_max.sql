-- The highest updatedAt (as sent) of every mutation taken under a client id. A push whose
-- ids are at or below the ack but whose updatedAt is above this is not a retry: the client
-- reused ids (it lost its numbering), and skipping those writes would lose them, so the push
-- is refused with 409 mutation_id_reused instead. NULL for clients acknowledged before this
-- column existed: their pushes are not checked.
ALTER TABLE clients ADD COLUMN stamp_max BIGINT;
