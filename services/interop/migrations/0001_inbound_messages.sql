-- Runs in schema `interop` as role pac_interop.

-- Every message a listener received: its idempotency key, what it asked, the answer it got, and
-- the message itself for investigation (`raw`, cleared after the message retention). A message
-- sent again with the same key and body is answered with the stored ACK (`ack`) and writes nothing.
CREATE TABLE inbound_messages (
    id                   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    listener             text        NOT NULL,
    -- The idempotency key: MSH-3, MSH-4 and MSH-10 (empty for a message whose header could not be read).
    sending_application  text        NOT NULL,
    sending_facility     text        NOT NULL,
    control_id           text        NOT NULL,
    -- SHA-256 of the message text: the same key with another body is refused.
    body_sha256          bytea       NOT NULL CHECK (length(body_sha256) = 32),
    -- MSH-9 as read, e.g. "ADT^A28".
    message_type         text        NOT NULL,
    -- The request id the message's calls to the gateway carry (and the audit trail shows).
    request_id           text        NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    answered_at          timestamptz,
    ack_code             text        CHECK (ack_code IN ('AA', 'AE', 'AR')),
    -- HL7 table 0357 code and the text sent with an AE or AR (never patient data).
    error_code           smallint,
    error_text           text,
    ack                  bytea,
    raw                  bytea,
    raw_cleared          boolean     NOT NULL DEFAULT false,
    CHECK ((ack_code IS NULL) = (answered_at IS NULL) AND (ack_code IS NULL) = (ack IS NULL)),
    CHECK (raw IS NULL = raw_cleared)
);

CREATE UNIQUE INDEX inbound_messages_key ON inbound_messages (sending_application, sending_facility, control_id)
    WHERE control_id <> '';
CREATE INDEX inbound_messages_received ON inbound_messages (received_at);
