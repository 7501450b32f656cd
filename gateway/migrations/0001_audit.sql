-- The audit trail: one row per call that read or changed patient data, and per refused call.
-- Owned by a role nobody logs in as; the gateway may only add and read rows, and a trigger refuses
-- every change and removal, whoever asks.

CREATE TABLE events (
    writer         text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    occurred_at    timestamptz NOT NULL,
    subject        text        NOT NULL,
    role           text        NOT NULL,
    organisation   text        NOT NULL,
    action         text        NOT NULL,
    patient_ids    text[]      NOT NULL DEFAULT '{}',
    outcome        text        NOT NULL,
    reason         text        NOT NULL DEFAULT '',
    request_id     text        NOT NULL,
    trace_id       text        NOT NULL DEFAULT '',
    previous_hash  text        NOT NULL CHECK (previous_hash ~ '^[0-9a-f]{64}$'),
    hash           text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (writer, sequence)
);

CREATE INDEX events_time ON events (occurred_at DESC, writer DESC, sequence DESC);
CREATE INDEX events_subject ON events (subject, occurred_at DESC);
CREATE INDEX events_patients ON events USING gin (patient_ids);
CREATE INDEX events_request ON events (request_id);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

REVOKE ALL ON events FROM PUBLIC;
GRANT USAGE ON SCHEMA audit TO pac_gateway;
GRANT SELECT, INSERT ON events TO pac_gateway;
