-- Runs inside each service's own schema (first on the search path), as the service's role.

-- Domain events, written in the same transaction as the change they describe.
-- `txid` orders delivery: an event is delivered only once every transaction with a smaller id has
-- finished, so an event whose transaction commits late is never skipped by a reader that moved on.
CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    txid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL CHECK (event_type ~ '^[A-Z][A-Za-z]+$'),
    aggregate_id uuid        NOT NULL,
    payload      bytea       NOT NULL,
    actor_subject      text  NOT NULL,
    actor_role         text  NOT NULL,
    actor_organisation text  NOT NULL,
    request_id   text,
    trace_id     text,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id),
    UNIQUE (event_id)
);
CREATE INDEX outbox_delivery_order ON outbox (txid, id);

-- Idempotency keys of writes: the first response is replayed for a retry with the same request.
CREATE TABLE idempotency (
    operation    text        NOT NULL,
    request_id   text        NOT NULL CHECK (length(request_id) BETWEEN 1 AND 128),
    request_hash bytea       NOT NULL,
    response     bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, request_id)
);
CREATE INDEX idempotency_expiry ON idempotency (created_at);
