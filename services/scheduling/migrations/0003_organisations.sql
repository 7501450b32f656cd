-- Organisation scope. A clinic belongs to the organisation (ODS code) that runs it; its slots,
-- appointments and waitlist entries carry the same organisation, copied when they are created (a
-- clinic's organisation never changes), so each query filters on a column of its own table. Callers
-- acting for organisations read and change only rows whose organisation is one of theirs; rows
-- created before this migration, or by an unscoped caller without an organisation, belong to none
-- (''), which no scoped caller sees.
ALTER TABLE clinics ADD COLUMN organisation text NOT NULL DEFAULT '';
ALTER TABLE slots ADD COLUMN organisation text NOT NULL DEFAULT '';
ALTER TABLE appointments ADD COLUMN organisation text NOT NULL DEFAULT '';
ALTER TABLE waitlist_entries ADD COLUMN organisation text NOT NULL DEFAULT '';

-- Appointments are read by id, by patient or by clinic and day: those indexes find a handful of rows
-- and the organisation predicate filters them. Waitlist entries for a service code span
-- organisations (clinics of several may offer one service): a scoped list, and the search for an
-- entry a freed slot fits, read the organisation's own entries in offer order.
CREATE INDEX waitlist_open_by_organisation_service
    ON waitlist_entries (organisation, service_code, priority DESC, breach_date, added_at) WHERE closed_at IS NULL;

-- A patient may wait for the same service code with two organisations at once: one open entry per
-- patient, target and organisation.
DROP INDEX waitlist_one_open_per_target;
CREATE UNIQUE INDEX waitlist_one_open_per_target
    ON waitlist_entries (patient_id, coalesce(clinic_id::text, service_code), organisation) WHERE closed_at IS NULL;
