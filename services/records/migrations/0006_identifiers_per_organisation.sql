-- The same person may be treated by two trusts: each organisation keeps its own record, so an NHS
-- number, and a local identifier, is unique within an organisation's records only. A clash with
-- another organisation's record is then impossible, and no answer can reveal that another
-- organisation holds one.

DROP INDEX patients_nhs_number_key;
CREATE UNIQUE INDEX patients_nhs_number_key ON patients (organisation, nhs_number) WHERE nhs_number IS NOT NULL;
-- Look-ups by NHS number across the caller's organisations.
CREATE INDEX patients_nhs_number ON patients (nhs_number) WHERE nhs_number IS NOT NULL;

-- Each identifier carries its patient's organisation (which never changes), for the key.
ALTER TABLE local_identifiers ADD COLUMN organisation text;
UPDATE local_identifiers i SET organisation = p.organisation FROM patients p WHERE p.id = i.patient_id;
ALTER TABLE local_identifiers ALTER COLUMN organisation SET NOT NULL;
ALTER TABLE local_identifiers DROP CONSTRAINT local_identifiers_pkey;
ALTER TABLE local_identifiers ADD CONSTRAINT local_identifiers_pkey PRIMARY KEY (organisation, issuer, value);
CREATE INDEX local_identifiers_issuer_value ON local_identifiers (issuer, value);
