-- 0010: every node hears, at commit, what changed in the sessions it remembers.
--
-- A node answers a poll whose session and version it knows from memory (store/pg_cache.rs).
-- These triggers tell every node, through NOTIFY on the channel `sinkron`, which is sent
-- when (and only if) the transaction commits:
--
--   u <user id>             the user's sessions or identity changed (deleted, erased)
--   t <token hash, hex>     a session ended or its last use was recorded
--
-- Every writer is covered, whichever node or tool made the change. A user's new version is
-- announced by the node that made it, after its commit (`v <user id> <version>`), not here:
-- PostgreSQL commits the transactions that NOTIFY one at a time, which would take every push
-- out of the commits that share one flush of the log.
CREATE FUNCTION sinkron_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('sinkron', 'u ' || OLD.id);
    ELSE
        PERFORM pg_notify('sinkron', 'u ' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_changed AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.deleted_at <> NEW.deleted_at OR OLD.username <> NEW.username)
    EXECUTE FUNCTION sinkron_user_changed();

CREATE TRIGGER users_deleted AFTER DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION sinkron_user_changed();

CREATE FUNCTION sinkron_token_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sinkron', 't ' || encode(OLD.token_hash, 'hex'));
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_changed AFTER UPDATE OR DELETE ON tokens FOR EACH ROW
    EXECUTE FUNCTION sinkron_token_changed();
