-- A coordinator's worklist of messages to look at: a registration that may be a patient already
-- on file, refused (AE) when the listener refuses possible duplicates
-- (PAC_INTEROP_POSSIBLE_DUPLICATES=refuse). Resolved by a person, with what they did.
CREATE TABLE review_tasks (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id        bigint      NOT NULL REFERENCES inbound_messages (id) ON DELETE CASCADE,
    sending_facility  text        NOT NULL,
    reason            text        NOT NULL,
    -- The records that may be the same patient (ids).
    candidate_ids     text[]      NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    resolved_by       text,
    resolution        text,
    CHECK ((resolved_at IS NULL) = (resolved_by IS NULL) AND (resolved_at IS NULL) = (resolution IS NULL)),
    UNIQUE (message_id, reason)
);
CREATE INDEX review_tasks_open ON review_tasks (created_at) WHERE resolved_at IS NULL;
