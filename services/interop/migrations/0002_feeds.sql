-- Scheduling feeds to the trust: per destination, the position in the scheduling event stream and
-- the messages made from it, each delivered in order, one in flight, until its ACK says AA.

CREATE TABLE feeds (
    destination    text        PRIMARY KEY CHECK (destination ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    -- The last event read from the stream (its envelope's cursor): every event up to it has its
    -- message stored below, or needed none.
    cursor         text        NOT NULL DEFAULT '',
    -- The next message's sequence number (its MSH-10 is made from it).
    next_sequence  bigint      NOT NULL DEFAULT 1 CHECK (next_sequence >= 1),
    last_error     text,
    last_error_at  timestamptz
);

CREATE TABLE outbound_messages (
    destination    text        NOT NULL REFERENCES feeds (destination),
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    event_id       text        NOT NULL,
    event_cursor   text        NOT NULL,
    patient_id     text        NOT NULL,
    message_type   text        NOT NULL,
    control_id     text        NOT NULL CHECK (length(control_id) BETWEEN 1 AND 20),
    -- The message as sent, in the destination's character set: a retry sends these bytes again.
    message        bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    state          text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'parked')),
    attempts       integer     NOT NULL DEFAULT 0,
    last_error     text,
    delivered_at   timestamptz,
    PRIMARY KEY (destination, sequence),
    UNIQUE (destination, event_id),
    UNIQUE (destination, control_id),
    CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
CREATE INDEX outbound_messages_pending ON outbound_messages (destination, sequence) WHERE state = 'pending';

-- A patient whose message the destination refused (AE): that patient's messages wait, the others'
-- go on, until an operator releases the patient.
CREATE TABLE parked_patients (
    destination    text        NOT NULL REFERENCES feeds (destination),
    patient_id     text        NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    sequence       bigint      NOT NULL,
    reason         text        NOT NULL,
    PRIMARY KEY (destination, patient_id)
);
