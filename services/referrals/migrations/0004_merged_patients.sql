-- Patient records merged away in the records service, as followed from its events (merges followed
-- from this migration on): a referral whose patient check ran before a merge and that is written
-- after this service followed it is made for the survivor (see `pac_platform::merges`).
CREATE TABLE merged_patients (
    merged_id   uuid PRIMARY KEY,
    survivor_id uuid NOT NULL,
    merge_id    uuid NOT NULL UNIQUE
);
