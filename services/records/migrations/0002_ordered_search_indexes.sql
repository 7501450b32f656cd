-- Postcode and district searches return patients in name order: these indexes hand rows over in that
-- order, so a page is read without sorting every patient in a district.
CREATE INDEX patients_postcode_by_name ON patients (postcode, family_name, given_name, id)
    WHERE merged_into IS NULL AND NOT restricted AND postcode <> '';
CREATE INDEX patients_outward_by_name ON patients (postcode_outward, family_name, given_name, id)
    WHERE merged_into IS NULL AND NOT restricted;
DROP INDEX patients_postcode;
DROP INDEX patients_postcode_outward;
