-- The referrals service's tables (schema `referrals`, role `pac_referrals`).

-- The service directory; entry rules are data.
CREATE TABLE services (
    code                  text PRIMARY KEY CHECK (code ~ '^[A-Z0-9][A-Z0-9-]{1,39}$'),
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    specialty             text NOT NULL CHECK (length(specialty) <= 200),
    min_age               integer CHECK (min_age BETWEEN 0 AND 150),
    max_age               integer CHECK (max_age BETWEEN 0 AND 150),
    sexes                 smallint[] NOT NULL DEFAULT '{}' CHECK (sexes <@ '{1,2,3,4}'),
    sources               text[] NOT NULL DEFAULT '{}',
    catchment             text[] NOT NULL DEFAULT '{}',
    required_information  text[] NOT NULL DEFAULT '{}',
    priorities            smallint[] NOT NULL DEFAULT '{}' CHECK (priorities <@ '{1,2,3}'),
    target_wait_days      integer NOT NULL CHECK (target_wait_days BETWEEN 1 AND 730),
    -- [{"status": "awaiting-triage", "priority": 3, "working_days": 2}, ...]; priority 0 means any.
    stuck_thresholds      jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(stuck_thresholds) = 'array'),
    later_dna_policy      text NOT NULL CHECK (later_dna_policy IN ('rebook', 'discharge')),
    created_at            timestamptz NOT NULL,
    CHECK (min_age IS NULL OR max_age IS NULL OR min_age <= max_age)
);

CREATE TABLE referrals (
    id                      uuid PRIMARY KEY,
    version                 integer NOT NULL CHECK (version > 0),
    patient_id              uuid NOT NULL,
    service_code            text NOT NULL REFERENCES services (code),
    priority                smallint NOT NULL CHECK (priority BETWEEN 1 AND 3),
    status                  text NOT NULL CHECK (status IN ('awaiting-triage', 'awaiting-booking', 'booked', 'rejected',
                                'returned', 'redirected', 'awaiting-information', 'cancelled', 'completed')),
    referrer_organisation   text NOT NULL,
    referrer_clinician      text NOT NULL,
    source                  text NOT NULL,
    reason                  text NOT NULL,
    information             text[] NOT NULL DEFAULT '{}',
    received_at             timestamptz NOT NULL,
    -- The RTT clock.
    clock_code              smallint NOT NULL CHECK (clock_code IN (10, 11, 12, 20, 21, 30, 31, 32, 33, 34, 35, 36)),
    clock_state             text NOT NULL CHECK (clock_state IN ('running', 'stopped', 'nullified')),
    clock_started           date NOT NULL,
    clock_ended             date,
    -- Worklists sort by the breach date; clocks that are not running sort last.
    worklist_date           date NOT NULL GENERATED ALWAYS AS
                                (CASE WHEN clock_state = 'running' THEN clock_started + 126 ELSE DATE '9999-12-31' END) STORED,
    -- Appointments booked for it (scheduling service ids), oldest first, and the live one.
    appointment_ids         uuid[] NOT NULL DEFAULT '{}',
    current_appointment_id  uuid,
    rebook_reason           text CHECK (rebook_reason IN ('cancelled-by-provider', 'cancelled-by-patient', 'did-not-attend')),
    dna_follow_up           boolean NOT NULL DEFAULT false,
    -- Appointments the patient missed and attended (corrections move an id from one to the other).
    missed_appointment_ids  uuid[] NOT NULL DEFAULT '{}',
    attended_appointment_ids uuid[] NOT NULL DEFAULT '{}',
    triage_code             text NOT NULL DEFAULT '',
    triage_text             text NOT NULL DEFAULT '',
    redirected_to           uuid REFERENCES referrals (id),
    redirected_from         uuid REFERENCES referrals (id),
    status_since            timestamptz NOT NULL,
    -- When it counts as stuck in its status (its service's threshold); NULL when it never does.
    stuck_after             timestamptz,
    open_tasks              integer NOT NULL DEFAULT 0 CHECK (open_tasks >= 0),
    unassigned_tasks        integer NOT NULL DEFAULT 0 CHECK (unassigned_tasks >= 0 AND unassigned_tasks <= open_tasks),
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    CHECK ((status = 'booked') = (current_appointment_id IS NOT NULL)),
    CHECK ((clock_state = 'running') = (clock_ended IS NULL)),
    CHECK (status <> 'rejected' OR triage_code <> ''),
    CHECK (redirected_to IS DISTINCT FROM id AND redirected_from IS DISTINCT FROM id)
);

-- Worklists: referrals by status and priority (and service), soonest breach first.
CREATE INDEX referrals_worklist ON referrals (status, priority, worklist_date, id);
CREATE INDEX referrals_service_worklist ON referrals (service_code, status, priority, worklist_date, id);
-- The rarer worklists have small partial indexes of their own, in the same order.
CREATE INDEX referrals_dna_follow_up ON referrals (status, priority, worklist_date, id) WHERE dna_follow_up;
CREATE INDEX referrals_service_dna_follow_up ON referrals (service_code, status, priority, worklist_date, id) WHERE dna_follow_up;
CREATE INDEX referrals_unassigned_tasks ON referrals (status, priority, worklist_date, id) WHERE unassigned_tasks > 0;
CREATE INDEX referrals_service_unassigned_tasks ON referrals (service_code, status, priority, worklist_date, id)
    WHERE unassigned_tasks > 0;
-- Referrals with a stuck deadline (their service sets one for their status and priority).
CREATE INDEX referrals_stuck ON referrals (status, priority, worklist_date, id) WHERE stuck_after IS NOT NULL;
CREATE INDEX referrals_patient ON referrals (patient_id, worklist_date, id);
CREATE INDEX referrals_appointments ON referrals USING gin (appointment_ids);
CREATE UNIQUE INDEX referrals_current_appointment ON referrals (current_appointment_id) WHERE current_appointment_id IS NOT NULL;

-- Case notes and handover tasks. Clinical free text: never logged.
CREATE TABLE notes (
    id                  uuid PRIMARY KEY,
    referral_id         uuid NOT NULL REFERENCES referrals (id),
    task                boolean NOT NULL,
    text                text NOT NULL CHECK (length(text) BETWEEN 1 AND 4000),
    team                text NOT NULL DEFAULT '' CHECK (length(team) <= 100),
    due_date            date,
    completed_at        timestamptz,
    author_subject      text NOT NULL,
    author_role         text NOT NULL,
    author_organisation text NOT NULL,
    created_at          timestamptz NOT NULL,
    CHECK (task OR (team = '' AND due_date IS NULL AND completed_at IS NULL)),
    CHECK (NOT task OR due_date IS NOT NULL)
);
CREATE INDEX notes_of_referral ON notes (referral_id, created_at, id);

-- The referral's open and unassigned task counts follow its tasks.
CREATE FUNCTION count_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    open_delta integer := 0;
    unassigned_delta integer := 0;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.task AND OLD.completed_at IS NULL THEN
        open_delta := open_delta - 1;
        unassigned_delta := unassigned_delta - (OLD.team = '')::integer;
    END IF;
    IF NEW.task AND NEW.completed_at IS NULL THEN
        open_delta := open_delta + 1;
        unassigned_delta := unassigned_delta + (NEW.team = '')::integer;
    END IF;
    IF open_delta <> 0 OR unassigned_delta <> 0 THEN
        UPDATE referrals SET open_tasks = open_tasks + open_delta, unassigned_tasks = unassigned_tasks + unassigned_delta
         WHERE id = NEW.referral_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER notes_count_tasks AFTER INSERT OR UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION count_tasks();

-- The RTT clock's history: every code it took, and why.
CREATE TABLE clock_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    referral_id  uuid NOT NULL REFERENCES referrals (id),
    code         smallint NOT NULL,
    on_date      date NOT NULL,
    cause        text NOT NULL CHECK (cause IN ('received', 'recorded', 'appointment')),
    actor_subject text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clock_events_of_referral ON clock_events (referral_id, id);

-- Referrals moved between patient records by a merge, so that an unmerge moves exactly these back.
CREATE TABLE patient_moves (
    merge_id      uuid NOT NULL,
    referral_id   uuid NOT NULL REFERENCES referrals (id),
    from_patient  uuid NOT NULL,
    to_patient    uuid NOT NULL,
    undone        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (merge_id, referral_id)
);

-- Positions reached in other services' event streams, saved with the changes they caused.
CREATE TABLE consumed_streams (
    stream      text PRIMARY KEY,
    cursor      text NOT NULL,
    updated_at  timestamptz NOT NULL
);
