-- Runs in schema `records` as role pac_records. Extensions live in schema pac_ext.

CREATE TABLE patients (
    id                  uuid        PRIMARY KEY,
    version             bigint      NOT NULL DEFAULT 1 CHECK (version > 0),
    nhs_number          text        CHECK (nhs_number ~ '^[0-9]{10}$'),
    nhs_number_status   smallint    NOT NULL CHECK (nhs_number_status BETWEEN 1 AND 8),
    given_name          text        NOT NULL CHECK (length(given_name) BETWEEN 1 AND 100),
    family_name         text        NOT NULL CHECK (length(family_name) BETWEEN 1 AND 100),
    birth_date          date        NOT NULL,
    sex                 smallint    NOT NULL CHECK (sex BETWEEN 1 AND 4),
    address_lines       text[]      NOT NULL DEFAULT '{}',
    locality            text        NOT NULL DEFAULT '',
    district            text        NOT NULL DEFAULT '',
    postcode            text        NOT NULL DEFAULT '',
    -- Outward code of a UK postcode, for district searches; NULL when not a UK postcode.
    postcode_outward    text,
    country             text        NOT NULL DEFAULT '' CHECK (country ~ '^([A-Z]{2})?$'),
    phone               text        CHECK (phone ~ '^\+[1-9][0-9]{7,14}$'),
    email               text,
    gp_practice_code    text,
    preferred_language  text,
    interpreter_needed  boolean     NOT NULL DEFAULT false,
    accessibility_needs text[]      NOT NULL DEFAULT '{}',
    preferred_contact_method  smallint   NOT NULL DEFAULT 0,
    consented_contact_methods smallint[] NOT NULL DEFAULT '{}',
    restricted          boolean     NOT NULL DEFAULT false,
    merged_into         uuid        REFERENCES patients (id),
    -- Search keys, derived from the names by the service (accents folded, lower case).
    search_name         text        NOT NULL,
    family_phonetic     text        NOT NULL,
    -- Candidates that were overridden when this record was registered as a possible duplicate.
    duplicate_override  jsonb,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    CONSTRAINT patients_not_merged_into_self CHECK (merged_into IS DISTINCT FROM id),
    CONSTRAINT patients_nhs_status_agrees CHECK (
        (nhs_number IS NULL AND nhs_number_status NOT IN (1, 2))
        OR (nhs_number IS NOT NULL AND nhs_number_status <> 7))
);

-- One record per NHS number (a merged-away record keeps its number: it resolves to the survivor).
CREATE UNIQUE INDEX patients_nhs_number_key ON patients (nhs_number) WHERE nhs_number IS NOT NULL;
-- Duplicate candidates: same birth date, same phone, or same family phonetic code near the birth date.
CREATE INDEX patients_birth_date ON patients (birth_date) WHERE merged_into IS NULL;
CREATE INDEX patients_phone ON patients (phone) WHERE merged_into IS NULL AND phone IS NOT NULL;
CREATE INDEX patients_family_phonetic ON patients (family_phonetic, birth_date) WHERE merged_into IS NULL;
-- Searches: ranked fuzzy name (trigram nearest-neighbour), postcode and district filters.
CREATE INDEX patients_search_name ON patients USING gist (search_name pac_ext.gist_trgm_ops(siglen = 64))
    WHERE merged_into IS NULL;
CREATE INDEX patients_postcode ON patients (postcode) WHERE merged_into IS NULL AND NOT restricted AND postcode <> '';
CREATE INDEX patients_postcode_outward ON patients (postcode_outward) WHERE merged_into IS NULL AND NOT restricted;
CREATE INDEX patients_merged_into ON patients (merged_into) WHERE merged_into IS NOT NULL;

-- Hospital numbers and other local identifiers: unique per issuing organisation.
CREATE TABLE local_identifiers (
    issuer     text NOT NULL CHECK (issuer ~ '^[A-Z0-9]{3,10}$'),
    value      text NOT NULL CHECK (length(value) BETWEEN 1 AND 64),
    patient_id uuid NOT NULL REFERENCES patients (id),
    PRIMARY KEY (issuer, value)
);
CREATE INDEX local_identifiers_patient ON local_identifiers (patient_id);

-- Every merge, and its reversal: who, when, why, and what moved.
CREATE TABLE merges (
    id                 uuid        PRIMARY KEY,
    survivor_id        uuid        NOT NULL REFERENCES patients (id),
    merged_id          uuid        NOT NULL REFERENCES patients (id),
    reason             text        NOT NULL,
    moved_identifiers  text[]      NOT NULL,
    -- Both records as they were just before the merge (encoded pac.records.v1.Patient).
    survivor_snapshot  bytea       NOT NULL,
    merged_snapshot    bytea       NOT NULL,
    merged_by_subject      text    NOT NULL,
    merged_by_role         text    NOT NULL,
    merged_by_organisation text    NOT NULL,
    merged_at          timestamptz NOT NULL,
    unmerge_reason     text,
    unmerged_by_subject      text,
    unmerged_by_role         text,
    unmerged_by_organisation text,
    unmerged_at        timestamptz,
    CONSTRAINT merges_distinct_records CHECK (survivor_id <> merged_id),
    CONSTRAINT merges_unmerge_complete CHECK ((unmerged_at IS NULL) = (unmerged_by_subject IS NULL))
);
-- A record is merged away at most once at a time.
CREATE UNIQUE INDEX merges_active_merged_id ON merges (merged_id) WHERE unmerged_at IS NULL;
