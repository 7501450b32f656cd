-- Events written before events carried their owner: each is about a referral.
UPDATE outbox o SET organisation = r.organisation, patient_ids = ARRAY[r.patient_id]
FROM referrals r
WHERE o.aggregate_id = r.id AND o.patient_ids = '{}';
