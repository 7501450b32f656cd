-- Records are signed (HMAC-SHA256 under a key the database does not hold); the key's id is kept with
-- each record. Records written before have none, and a plain SHA-256 as their hash.
ALTER TABLE events ADD COLUMN key_id text NOT NULL DEFAULT '';

-- Signed checkpoints of each writer's chain: one chain of their own across writers (numbered from
-- 1, each signing the one before), so that removing the end of a writer's chain, or a whole writer,
-- is found. Append-only, like the events.
CREATE TABLE checkpoints (
    number        bigint      PRIMARY KEY CHECK (number >= 1),
    writer        text        NOT NULL,
    sequence      bigint      NOT NULL CHECK (sequence >= 0),
    hash          text        NOT NULL,
    written_at    timestamptz NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('interval', 'final', 'archived')),
    key_id        text        NOT NULL,
    previous_mac  text        NOT NULL,
    mac           text        NOT NULL
);
CREATE INDEX checkpoints_writer ON checkpoints (writer, sequence);

CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

REVOKE ALL ON checkpoints FROM PUBLIC;
GRANT SELECT, INSERT ON checkpoints TO pac_gateway;
