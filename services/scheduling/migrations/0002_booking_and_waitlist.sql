-- Withdrawn slots (a session changed under them) stay for the history of the appointments that used
-- them, but are never offered or booked again.
ALTER TABLE slots ADD COLUMN withdrawn_at timestamptz;
DROP INDEX slots_free_by_clinic;
DROP INDEX slots_free_by_service;
CREATE INDEX slots_free_by_clinic ON slots (clinic_id, start_time) WHERE occupied < capacity AND withdrawn_at IS NULL;
CREATE INDEX slots_free_by_service ON slots (service_code, start_time) WHERE occupied < capacity AND withdrawn_at IS NULL;
CREATE INDEX slots_free_by_location ON slots (location_id, service_code, start_time) WHERE occupied < capacity AND withdrawn_at IS NULL;
CREATE INDEX slots_by_template ON slots (template_id, start_time);

-- Slots exist up to this clinic-local day for the template; the horizon task extends it daily.
ALTER TABLE session_templates ADD COLUMN generated_until date;
ALTER TABLE session_templates ADD COLUMN updated_at timestamptz;

-- Every status change after creation, with who and why: corrections of finished appointments are
-- audited here.
CREATE TABLE appointment_changes (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    appointment_id uuid        NOT NULL REFERENCES appointments (id),
    from_status    text        NOT NULL,
    to_status      text        NOT NULL,
    from_slot_id   uuid,
    to_slot_id     uuid,
    reason         text,
    actor_subject  text        NOT NULL,
    changed_at     timestamptz NOT NULL
);
CREATE INDEX appointment_changes_by_appointment ON appointment_changes (appointment_id, id);

CREATE TABLE waitlist_entries (
    id            uuid        PRIMARY KEY,
    patient_id    uuid        NOT NULL,
    clinic_id     uuid        REFERENCES clinics (id),
    service_code  text,
    earliest_date date,
    latest_date   date,
    priority      smallint    NOT NULL CHECK (priority BETWEEN 1 AND 3),
    breach_date   date,
    referral_id   uuid,
    added_at      timestamptz NOT NULL,
    closed_at     timestamptz,
    close_reason  text,
    CONSTRAINT waitlist_one_target CHECK ((clinic_id IS NULL) <> (service_code IS NULL)),
    CONSTRAINT waitlist_window CHECK (latest_date IS NULL OR earliest_date IS NULL OR latest_date >= earliest_date),
    CONSTRAINT waitlist_closed_with_reason CHECK ((closed_at IS NULL) = (close_reason IS NULL))
);
-- One open entry per patient and target.
CREATE UNIQUE INDEX waitlist_one_open_per_target
    ON waitlist_entries (patient_id, coalesce(clinic_id::text, service_code)) WHERE closed_at IS NULL;
CREATE INDEX waitlist_open_by_clinic ON waitlist_entries (clinic_id, priority DESC, breach_date, added_at) WHERE closed_at IS NULL;
CREATE INDEX waitlist_open_by_service ON waitlist_entries (service_code, priority DESC, breach_date, added_at) WHERE closed_at IS NULL;

-- A slot offered to an entry, held for it as a pending appointment until it expires.
CREATE TABLE offers (
    id             uuid        PRIMARY KEY,
    entry_id       uuid        NOT NULL REFERENCES waitlist_entries (id),
    appointment_id uuid        NOT NULL UNIQUE REFERENCES appointments (id),
    slot_id        uuid        NOT NULL REFERENCES slots (id),
    offered_at     timestamptz NOT NULL,
    notice_hours   integer     NOT NULL CHECK (notice_hours >= 0),
    expires_at     timestamptz NOT NULL,
    outcome        text        NOT NULL CHECK (outcome IN ('open', 'accepted', 'declined', 'expired', 'withdrawn')),
    responded_at   timestamptz,
    -- An entry is offered a given slot at most once.
    CONSTRAINT offers_once_per_entry_and_slot UNIQUE (entry_id, slot_id)
);
-- At most one open offer per entry at a time.
CREATE UNIQUE INDEX offers_one_open_per_entry ON offers (entry_id) WHERE outcome = 'open';

-- Where this service has read other services' event streams up to.
CREATE TABLE consumed_streams (
    stream     text        PRIMARY KEY,
    cursor     text        NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Rows re-pointed from a merged-away patient record to its survivor, so that an unmerge can move
-- exactly those back.
CREATE TABLE patient_repoints (
    merge_id     uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('appointment', 'waitlist')),
    row_id       uuid NOT NULL,
    from_patient uuid NOT NULL,
    to_patient   uuid NOT NULL,
    PRIMARY KEY (merge_id, kind, row_id)
);
CREATE INDEX waitlist_by_patient ON waitlist_entries (patient_id);
