-- Events written before events carried their owner: each is about an appointment, or (an offer) a
-- waitlist entry, and takes its organisation and patient.
UPDATE outbox o SET organisation = a.organisation, patient_ids = ARRAY[a.patient_id]
FROM appointments a
WHERE o.aggregate_id = a.id AND o.patient_ids = '{}';
UPDATE outbox o SET organisation = w.organisation, patient_ids = ARRAY[w.patient_id]
FROM waitlist_entries w
WHERE o.aggregate_id = w.id AND o.patient_ids = '{}';
