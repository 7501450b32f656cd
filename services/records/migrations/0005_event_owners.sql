-- Events written before events carried their owner: each is about the patient it names.
UPDATE outbox o SET organisation = p.organisation, patient_ids = ARRAY[p.id]
FROM patients p
WHERE o.aggregate_id = p.id AND o.patient_ids = '{}';
