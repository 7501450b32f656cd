-- The organisation (ODS code) that registered each patient and owns the record. Callers acting for
-- organisations see only their patients: every read, search and change of a patient carries the
-- predicate `organisation = ANY(<the caller's organisations>)`. Records registered before this
-- migration, or by an unscoped caller (a service, development) without an organisation, belong to
-- none (''), which no scoped caller sees.
ALTER TABLE patients ADD COLUMN organisation text NOT NULL DEFAULT '';

-- A scoped name search fetches the patients of each near name, in id order, of the caller's
-- organisations only.
CREATE INDEX patients_organisation_search_name ON patients (organisation, search_name, id) WHERE merged_into IS NULL;
