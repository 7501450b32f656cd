-- Runs in schema `scheduling` as role pac_scheduling. Extensions (btree_gist) live in schema pac_ext.

CREATE TABLE locations (
    id            uuid        PRIMARY KEY,
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    address_lines text[]      NOT NULL DEFAULT '{}',
    locality      text        NOT NULL DEFAULT '',
    postcode      text        NOT NULL DEFAULT '',
    directions    text        NOT NULL DEFAULT '',
    access_notes  text[]      NOT NULL DEFAULT '{}',
    parking       text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL
);

CREATE TABLE clinics (
    id            uuid        PRIMARY KEY,
    location_id   uuid        NOT NULL REFERENCES locations (id),
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    specialty     text        NOT NULL DEFAULT '',
    service_code  text        NOT NULL CHECK (service_code ~ '^[A-Z0-9][A-Z0-9_-]{1,39}$'),
    -- IANA zone name, validated by the service against its time zone database.
    time_zone     text        NOT NULL,
    what_to_bring text[]      NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL
);
CREATE INDEX clinics_service_code ON clinics (service_code);
CREATE INDEX clinics_location ON clinics (location_id);

CREATE TABLE session_templates (
    id           uuid     PRIMARY KEY,
    clinic_id    uuid     NOT NULL REFERENCES clinics (id),
    weekday      smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    start_time   time     NOT NULL,
    end_time     time     NOT NULL,
    slot_minutes integer  NOT NULL CHECK (slot_minutes BETWEEN 5 AND 480),
    capacity     integer  NOT NULL CHECK (capacity BETWEEN 1 AND 100),
    valid_from   date     NOT NULL,
    valid_until  date,
    created_at   timestamptz NOT NULL,
    CHECK (end_time > start_time),
    CHECK (valid_until IS NULL OR valid_until >= valid_from)
);

-- A slot's capacity is a constraint: a booking adds one to `occupied` in the same statement that
-- checks it, so concurrent bookings of the last place serialise on the row and the loser fails the
-- CHECK. Service code and location are copied from the clinic (they never change) so that a search
-- by either is one index range.
CREATE TABLE slots (
    id           uuid        PRIMARY KEY,
    clinic_id    uuid        NOT NULL REFERENCES clinics (id),
    template_id  uuid        REFERENCES session_templates (id),
    service_code text        NOT NULL,
    location_id  uuid        NOT NULL,
    start_time   timestamptz NOT NULL,
    end_time     timestamptz NOT NULL,
    local_date   date        NOT NULL,
    local_start  time        NOT NULL,
    capacity     integer     NOT NULL CHECK (capacity BETWEEN 1 AND 100),
    occupied     integer     NOT NULL DEFAULT 0,
    CONSTRAINT slots_within_capacity CHECK (occupied BETWEEN 0 AND capacity),
    CONSTRAINT slots_start_before_end CHECK (end_time > start_time),
    CONSTRAINT slots_one_per_template_start UNIQUE (template_id, start_time)
);
CREATE INDEX slots_free_by_clinic ON slots (clinic_id, start_time) WHERE occupied < capacity;
CREATE INDEX slots_free_by_service ON slots (service_code, start_time) WHERE occupied < capacity;
CREATE INDEX slots_by_clinic ON slots (clinic_id, start_time);

-- Appointments. A live one (pending, booked, arrived, checked-in) holds a place in its slot and the
-- patient's time: a patient never has two live appointments that overlap.
CREATE TABLE appointments (
    id              uuid        PRIMARY KEY,
    version         bigint      NOT NULL DEFAULT 1 CHECK (version > 0),
    slot_id         uuid        NOT NULL REFERENCES slots (id),
    clinic_id       uuid        NOT NULL REFERENCES clinics (id),
    patient_id      uuid        NOT NULL,
    referral_id     uuid,
    status          text        NOT NULL CHECK (status IN ('proposed', 'pending', 'booked', 'arrived', 'checked-in',
                                                           'fulfilled', 'cancelled', 'noshow', 'entered-in-error', 'waitlist')),
    start_time      timestamptz NOT NULL,
    end_time        timestamptz NOT NULL,
    hold_expires_at timestamptz,
    cancel_reason_code text,
    cancelled_by    smallint    CHECK (cancelled_by BETWEEN 1 AND 3),
    cancel_late     boolean,
    cancelled_at    timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    CONSTRAINT appointments_hold_expires CHECK (status <> 'pending' OR hold_expires_at IS NOT NULL),
    CONSTRAINT appointments_cancellation_recorded CHECK (status <> 'cancelled' OR (cancel_reason_code IS NOT NULL AND cancelled_by IS NOT NULL)),
    CONSTRAINT appointments_patient_no_overlap EXCLUDE USING gist (
        patient_id WITH =, tstzrange(start_time, end_time) WITH &&
    ) WHERE (status IN ('pending', 'booked', 'arrived', 'checked-in'))
);
CREATE INDEX appointments_patient ON appointments (patient_id, start_time);
CREATE INDEX appointments_clinic_day ON appointments (clinic_id, start_time);
CREATE INDEX appointments_holds_to_expire ON appointments (hold_expires_at) WHERE status = 'pending';
