-- An appointment carries its clinic's service code, as it carries its organisation: a referral it
-- names must be for that service (see `pac_platform::links`), and the referrals service checks the
-- same when it follows the booking. A slot never changes clinic, so the slot's code is the clinic's.
ALTER TABLE appointments ADD COLUMN service_code text;
UPDATE appointments a SET service_code = s.service_code FROM slots s WHERE s.id = a.slot_id;
ALTER TABLE appointments ALTER COLUMN service_code SET NOT NULL;
