-- The trail by month: one partition of `events` per calendar month (UTC), so that an old month can
-- be archived whole (`pac audit archive`), leaving signed checkpoints from which verification of the
-- rest starts. A default partition takes any record no month's partition holds.

-- Months are added ahead of time by this function: by provisioning (the next twelve) and by each
-- gateway when it starts (the next three). It runs as the schema's owner; the gateway may call it.
CREATE FUNCTION add_months(first date, months integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = audit, pg_temp AS $$
DECLARE
    month date;
    name text;
BEGIN
    FOR i IN 0 .. least(months, 120) - 1 LOOP
        month := (date_trunc('month', first) + make_interval(months => i))::date;
        name := 'events_' || to_char(month, 'YYYY_MM');
        IF to_regclass('audit.' || name) IS NULL THEN
            -- A month the default partition already holds records of cannot be made; the months
            -- after it still are.
            BEGIN
                EXECUTE format('CREATE TABLE audit.%I PARTITION OF audit.events FOR VALUES FROM (%L) TO (%L)', name,
                               to_char(month, 'YYYY-MM-DD') || ' 00:00:00+00',
                               to_char(month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
                EXECUTE format('CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit.%I FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()', name);
                EXECUTE format('REVOKE ALL ON audit.%I FROM PUBLIC', name);
            EXCEPTION WHEN check_violation OR invalid_object_definition THEN
                RAISE WARNING 'audit trail month % not partitioned: %', name, SQLERRM;
            END;
        END IF;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION add_months(date, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION add_months(date, integer) TO pac_gateway;

CREATE TABLE events_by_month (
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
    previous_hash  text        NOT NULL CONSTRAINT events_previous_hash_check
                               CHECK (octet_length(previous_hash) = 64 AND previous_hash ~ '^[0-9a-f]*$'),
    hash           text        NOT NULL CONSTRAINT events_hash_check CHECK (octet_length(hash) = 64 AND hash ~ '^[0-9a-f]*$'),
    detail         text        NOT NULL DEFAULT '',
    organisations  text[]      NOT NULL DEFAULT '{}',
    key_id         text        NOT NULL DEFAULT '',
    PRIMARY KEY (writer, sequence, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- The records so far, moved: a month's partition for each month they span (and the months ahead).
DO $$
DECLARE
    oldest date := (coalesce((SELECT min(occurred_at) FROM audit.events), now()) AT TIME ZONE 'UTC')::date;
    this_month date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    ALTER TABLE audit.events RENAME TO events_unpartitioned;
    ALTER TABLE audit.events_by_month RENAME TO events;
    PERFORM audit.add_months(oldest, (extract(year FROM age(date_trunc('month', this_month), date_trunc('month', oldest))) * 12
                                      + extract(month FROM age(date_trunc('month', this_month), date_trunc('month', oldest))))::integer + 13);
END $$;
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON events_default FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
REVOKE ALL ON events_default FROM PUBLIC;

INSERT INTO events (writer, sequence, occurred_at, subject, role, organisation, action, patient_ids, outcome, reason,
                    request_id, trace_id, previous_hash, hash, detail, organisations, key_id)
SELECT writer, sequence, occurred_at, subject, role, organisation, action, patient_ids, outcome, reason,
       request_id, trace_id, previous_hash, hash, detail, organisations, key_id
FROM events_unpartitioned;
DROP TABLE events_unpartitioned;

CREATE INDEX events_time ON events (occurred_at DESC, writer DESC, sequence DESC);
CREATE INDEX events_subject ON events (subject, occurred_at DESC);
CREATE INDEX events_patients ON events USING gin (patient_ids);
CREATE INDEX events_request ON events (request_id);

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

REVOKE ALL ON events FROM PUBLIC;
GRANT SELECT, INSERT ON events TO pac_gateway;
