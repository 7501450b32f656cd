-- Whose each event is: the organisation that owns what it is about (a stream delivers it only to
-- callers acting for that organisation) and the patients it is about (recorded in the audit trail
-- of the streams that deliver it). Each service's own migrations fill both in for the events it
-- wrote before this one; an event left without an organisation ('') is delivered only to unscoped
-- callers (the platform's own services).
ALTER TABLE outbox
    ADD COLUMN organisation text NOT NULL DEFAULT '',
    ADD COLUMN patient_ids uuid[] NOT NULL DEFAULT '{}';
