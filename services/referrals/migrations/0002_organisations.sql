-- Organisation scope. A service in the directory belongs to the organisation (ODS code) that
-- provides it, and each referral to the organisation of its service, copied when the referral is
-- made (a redirect makes a new referral of the new service's organisation). Callers acting for
-- organisations read and change only referrals whose organisation is one of theirs; rows made
-- before this migration, or by an unscoped caller without an organisation, belong to none (''),
-- which no scoped caller sees.
ALTER TABLE services ADD COLUMN organisation text NOT NULL DEFAULT '';
ALTER TABLE referrals ADD COLUMN organisation text NOT NULL DEFAULT '';

-- A scoped worklist reads, per organisation, status and priority, one ordered index range (as the
-- unscoped one does per status and priority), so a page costs the same however many referrals other
-- organisations hold. By patient and by service the existing indexes find few rows, or rows of one
-- organisation only (a service has one).
CREATE INDEX referrals_organisation_worklist ON referrals (organisation, status, priority, worklist_date, id);
