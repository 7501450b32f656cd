//! The records service's operations: each one a unit of database work that applies the domain's
//! rules, writes the change and its event together, and answers in the contract's terms.
//!
//! Every operation for a caller takes the caller's organisation scope (`Caller::scope`) down to the
//! SQL that reads or locks the patients, so a patient of another organisation is `NotFound` (by id,
//! by identifier, as a merge's survivor) and never a search hit or a match candidate.

use pac_platform::caller::{Caller, PERMISSION_RESTRICTED_READ};
use pac_platform::outbox::Outbox;
use pac_platform::write::{self, Claim, Write, Writes};
use pac_proto::records as pb;
use pac_proto::records::watch_events_response::Event;
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::convert::{self, CONTACT_FIELDS, Rules};
use crate::domain::matching::{self, Grade, MatchProfile, Thresholds};
use crate::domain::patient::{Demographics, PatientRecord};
use crate::error::RecordsError;
use crate::store::{self, MergeRecord, Registered, Registration, Scope, SearchCriteria};

/// A merge chain longer than this is a data fault, not a chain.
const MAX_MERGE_DEPTH: usize = 16;
/// Candidates fetched for duplicate scoring.
const CANDIDATE_LIMIT: i64 = 200;

#[derive(Clone)]
pub struct Records {
    pub pool: PgPool,
    pub outbox: Outbox,
    writes: Writes,
    thresholds: Thresholds,
    /// Whether the candidate query's plan may be cached yet (`store::PlanCache`).
    pub plans: store::PlanCache,
}

pub struct Register {
    pub demographics: Demographics,
    /// The organisation that will own the record (chosen by `Caller::owning_organisation`).
    pub organisation: String,
    pub write: Write,
    pub allow_possible_duplicate: bool,
    pub caller: Caller,
}

pub struct Update {
    pub id: Uuid,
    pub etag: String,
    pub input: pb::Patient,
    pub paths: Vec<String>,
    pub rules: Rules,
    pub caller: Caller,
}

pub struct Merge {
    pub survivor_id: Uuid,
    pub merged_id: Uuid,
    pub reason: String,
    pub write: Write,
    pub caller: Caller,
}

pub struct Unmerge {
    pub merged_id: Uuid,
    pub reason: String,
    pub write: Write,
    pub caller: Caller,
}

/// A scored existing record.
pub struct Candidate {
    pub record: PatientRecord,
    pub score: f64,
    pub grade: Grade,
    pub matched_on: Vec<&'static str>,
}

pub fn reveals_contact(caller: &Caller) -> bool {
    caller.may(PERMISSION_RESTRICTED_READ)
}

impl Records {
    pub fn new(pool: PgPool, outbox: Outbox, thresholds: Thresholds) -> Self {
        let writes = Writes::new(pool.clone(), outbox.clone(), crate::SCHEMA);
        Self { pool, outbox, writes, thresholds, plans: store::PlanCache::default() }
    }

    pub async fn register(&self, r: Register) -> Result<pb::RegisterPatientResponse, RecordsError> {
        // No look-up of the request id first: a retry either finds its own first attempt as a
        // duplicate (answered below) or meets the recorded id when it writes (`RequestIdTaken`).
        let result = self.register_new(&r).await;
        if let Err(RecordsError::NhsNumberExists { .. } | RecordsError::PossibleDuplicate(_)) = &result
            && let Some(response) = self.writes.recorded("RegisterPatient", &r.write).await?
        {
            return Ok(response);
        }
        result
    }

    async fn register_new(&self, r: &Register) -> Result<pb::RegisterPatientResponse, RecordsError> {
        // Only the caller's own records are candidates: another organisation's duplicate cannot be
        // shown to them, so it cannot be overridden either (an NHS number clash is still refused).
        let candidates = self.candidates(&r.demographics.match_profile(), CANDIDATE_LIMIT as usize, r.caller.scope()).await?;
        if let Some(same) = candidates.iter().find(|c| c.matched_on == ["nhs_number"]) {
            return Err(RecordsError::NhsNumberExists { existing: Some(same.record.id) });
        }
        if !candidates.is_empty() && !r.allow_possible_duplicate {
            return Err(RecordsError::PossibleDuplicate(candidates.iter().take(10).map(|c| (c.record.id, c.score, c.grade)).collect()));
        }
        let now = pac_platform::now();
        let record = PatientRecord {
            id: Uuid::now_v7(),
            version: 1,
            demographics: r.demographics.clone(),
            organisation: r.organisation.clone(),
            merged_into: None,
            created_at: now,
            updated_at: now,
        };
        let reveal = reveals_contact(&r.caller);
        let response = pb::RegisterPatientResponse {
            patient: Some(convert::patient(&record, reveal)),
            overridden_candidates: candidates.iter().map(|c| candidate_message(c, reveal)).collect(),
        };
        let duplicate_override = (!candidates.is_empty()).then(|| {
            serde_json::json!({
                "by": r.caller.actor.subject,
                "candidates": candidates.iter().map(|c| serde_json::json!({"id": c.record.id, "score": c.score})).collect::<Vec<_>>(),
            })
        });
        let event = Event::PatientRegistered(pb::PatientRegistered { patient: Some(convert::patient(&record, true)) });
        let registration = Registration {
            record: &record,
            duplicate_override,
            request_id: r.write.request_id(),
            request_hash: &r.write.request_hash,
            response: response.encode_to_vec(),
            event_id: Uuid::now_v7(),
            event_payload: event_payload(event),
            actor: &r.write.actor,
            trace_id: pac_platform::telemetry::current_trace_id(),
            scope: r.caller.scope(),
        };
        match store::insert_registration(&self.pool, registration).await? {
            Registered::Created => {
                self.writes.committed();
                tracing::info!(patient_id = %record.id, overridden_candidates = candidates.len(), "patient registered");
                Ok(response)
            }
            Registered::RequestIdTaken => self.writes.recorded("RegisterPatient", &r.write).await?.ok_or(RecordsError::Conflict),
        }
    }

    /// Existing active records in `scope` that may be the person in `profile`, best first.
    /// Candidates are scored from their matching fields; only graded ones are read in full.
    pub async fn candidates(&self, profile: &MatchProfile, max: usize, scope: Scope<'_>) -> Result<Vec<Candidate>, RecordsError> {
        let mut graded: Vec<(Uuid, matching::Score, Grade)> =
            store::candidates(&self.pool, profile, CANDIDATE_LIMIT, scope, self.plans.ready())
                .await?
                .into_iter()
                .filter_map(|(id, candidate)| {
                    let score = matching::score(profile, &candidate);
                    let grade = self.thresholds.grade(score.value)?;
                    Some((id, score, grade))
                })
                .collect();
        if graded.is_empty() {
            return Ok(Vec::new());
        }
        graded.sort_by(|a, b| b.1.value.total_cmp(&a.1.value).then(a.0.cmp(&b.0)));
        graded.truncate(max);
        let ids: Vec<Uuid> = graded.iter().map(|(id, _, _)| *id).collect();
        let mut records = store::find_many(&self.pool, &ids, scope).await?;
        Ok(graded
            .into_iter()
            .filter_map(|(id, score, grade)| {
                let at = records.iter().position(|r| r.id == id)?;
                Some(Candidate { record: records.swap_remove(at), score: score.value, grade, matched_on: score.matched_on })
            })
            .collect())
    }

    /// The record with `id`, or the survivor it was merged into (with `id` as the second value).
    pub async fn get(&self, id: Uuid, scope: Scope<'_>) -> Result<(PatientRecord, Option<Uuid>), RecordsError> {
        let record = store::find(&self.pool, id, scope).await?.ok_or(RecordsError::NotFound(id))?;
        self.resolve(record, scope).await
    }

    pub async fn lookup_nhs_number(&self, nhs_number: &str, scope: Scope<'_>) -> Result<(PatientRecord, Option<Uuid>), RecordsError> {
        let record = store::find_by_nhs_number(&self.pool, nhs_number, scope).await?.ok_or(RecordsError::IdentifierNotFound)?;
        self.resolve(record, scope).await.map_err(not_found_by_identifier)
    }

    pub async fn lookup_local_identifier(
        &self,
        issuer: &str,
        value: &str,
        scope: Scope<'_>,
    ) -> Result<(PatientRecord, Option<Uuid>), RecordsError> {
        let record = store::find_by_local_identifier(&self.pool, issuer, value, scope).await?.ok_or(RecordsError::IdentifierNotFound)?;
        self.resolve(record, scope).await.map_err(not_found_by_identifier)
    }

    /// Follows merges to the active record. A survivor outside `scope` (a merge across
    /// organisations, made by an unscoped caller) is not found, as the record asked for would be.
    async fn resolve(&self, record: PatientRecord, scope: Scope<'_>) -> Result<(PatientRecord, Option<Uuid>), RecordsError> {
        let requested = record.id;
        let mut current = record;
        for _ in 0..MAX_MERGE_DEPTH {
            let Some(survivor) = current.merged_into else {
                let merged_from = (current.id != requested).then_some(requested);
                return Ok((current, merged_from));
            };
            current = store::find(&self.pool, survivor, scope).await?.ok_or(RecordsError::NotFound(requested))?;
        }
        Err(pac_platform::ApiError::internal(anyhow::anyhow!("merge chain of {requested} is too long")).into())
    }

    pub async fn update(&self, u: Update) -> Result<PatientRecord, RecordsError> {
        let mut tx = self.writes.begin().await?;
        let scope = u.caller.scope();
        let current = store::lock(&mut tx, &[u.id], scope).await?.pop().ok_or(RecordsError::NotFound(u.id))?;
        if let Some(survivor) = current.merged_into {
            return Err(RecordsError::Merged { id: u.id, survivor });
        }
        if current.etag() != u.etag {
            return Err(RecordsError::VersionMismatch { current_etag: current.etag() });
        }
        let (demographics, changed) =
            convert::apply_update(&current.demographics, &u.input, &u.paths, u.rules).map_err(RecordsError::Invalid)?;
        let touches_restricted = changed.iter().any(|f| CONTACT_FIELDS.contains(&f.as_str()) || f == "restricted");
        if current.demographics.restricted && touches_restricted && !reveals_contact(&u.caller) {
            return Err(RecordsError::RestrictedContact);
        }
        if changed.is_empty() {
            return Ok(current);
        }
        let updated = PatientRecord { version: current.version + 1, updated_at: pac_platform::now(), demographics, ..current };
        store::update(&mut tx, &self.pool, &updated, changed.iter().any(|f| f == "local_identifiers"), scope).await?;
        let event =
            Event::PatientUpdated(pb::PatientUpdated { patient: Some(convert::patient(&updated, true)), changed_fields: changed.clone() });
        self.writes.append(&mut tx, &Write::unkeyed(&u.caller), event_about("PatientUpdated", &updated, &[updated.id], event)).await?;
        tx.commit_unanswered().await?;
        tracing::info!(patient_id = %updated.id, changed_fields = ?changed, "patient updated");
        Ok(updated)
    }

    pub async fn search(&self, criteria: &SearchCriteria, scope: Scope<'_>) -> Result<Vec<(PatientRecord, f64)>, RecordsError> {
        Ok(store::search(&self.pool, criteria, scope).await?)
    }

    pub async fn merge(&self, m: Merge) -> Result<pb::MergePatientsResponse, RecordsError> {
        if m.survivor_id == m.merged_id {
            return Err(RecordsError::SameRecord);
        }
        let mut tx = match self.writes.claim("MergePatients", &m.write).await? {
            Claim::Replay(response) => return Ok(response),
            Claim::Fresh(tx) => tx,
        };
        // Both records must be the caller's: a merge never reaches into another organisation.
        let locked = store::lock(&mut tx, &[m.survivor_id, m.merged_id], m.caller.scope()).await?;
        let find = |id: Uuid| locked.iter().find(|r| r.id == id).cloned().ok_or(RecordsError::NotFound(id));
        let (survivor, merged) = (find(m.survivor_id)?, find(m.merged_id)?);
        if let Some(into) = survivor.merged_into {
            return Err(RecordsError::Merged { id: survivor.id, survivor: into });
        }
        if let Some(into) = merged.merged_into {
            return Err(RecordsError::AlreadyMerged { id: merged.id, survivor: into });
        }
        let now = pac_platform::now();
        let merge = MergeRecord {
            id: Uuid::now_v7(),
            survivor_id: survivor.id,
            merged_id: merged.id,
            reason: m.reason.clone(),
            moved_identifiers: merged.demographics.identifier_labels(),
            merged_by: m.caller.actor.clone(),
            merged_at: now,
            unmerged_by: None,
            unmerged_at: None,
        };
        let snapshot = |record: &PatientRecord| convert::patient(record, true).encode_to_vec();
        store::insert_merge(&mut tx, &merge, snapshot(&survivor), snapshot(&merged)).await?;
        store::set_merged_into(&mut tx, merged.id, Some(survivor.id), now).await?;
        let event = Event::PatientMerged(pb::PatientMerged { merge: Some(convert::merge(&merge)) });
        let patients = [merged.id, survivor.id];
        self.writes.append(&mut tx, &m.write, event_about("PatientMerged", &merged, &patients, event)).await?;
        let response = pb::MergePatientsResponse {
            survivor: Some(convert::patient(&survivor, reveals_contact(&m.caller))),
            merge: Some(convert::merge(&merge)),
        };
        tx.commit(&response).await?;
        tracing::info!(merge_id = %merge.id, survivor_id = %survivor.id, merged_id = %merged.id, "patients merged");
        Ok(response)
    }

    pub async fn unmerge(&self, u: Unmerge) -> Result<pb::UnmergePatientResponse, RecordsError> {
        let mut tx = match self.writes.claim("UnmergePatient", &u.write).await? {
            Claim::Replay(response) => return Ok(response),
            Claim::Fresh(tx) => tx,
        };
        let merged = store::lock(&mut tx, &[u.merged_id], u.caller.scope()).await?.pop().ok_or(RecordsError::NotFound(u.merged_id))?;
        if merged.merged_into.is_none() {
            return Err(RecordsError::NotMerged(u.merged_id));
        }
        let now = pac_platform::now();
        let merge =
            store::close_merge(&mut tx, u.merged_id, &u.reason, &u.caller.actor, now).await?.ok_or(RecordsError::NotMerged(u.merged_id))?;
        store::set_merged_into(&mut tx, u.merged_id, None, now).await?;
        let restored = store::find(&mut *tx, u.merged_id, None).await?.ok_or(RecordsError::NotFound(u.merged_id))?;
        let event = Event::PatientUnmerged(pb::PatientUnmerged { merge: Some(convert::merge(&merge)) });
        let patients = [restored.id, merge.survivor_id];
        self.writes.append(&mut tx, &u.write, event_about("PatientUnmerged", &restored, &patients, event)).await?;
        let response = pb::UnmergePatientResponse {
            patient: Some(convert::patient(&restored, reveals_contact(&u.caller))),
            merge: Some(convert::merge(&merge)),
        };
        tx.commit(&response).await?;
        tracing::info!(merge_id = %merge.id, patient_id = %restored.id, "merge reversed");
        Ok(response)
    }
}

/// An event about `record` (owned by its organisation), naming `patients`.
fn event_about(event_type: &'static str, record: &PatientRecord, patients: &[Uuid], event: Event) -> write::Event {
    write::Event {
        event_type,
        aggregate_id: record.id,
        organisation: record.organisation.clone(),
        patient_ids: patients.to_vec(),
        payload: event_payload(event),
    }
}

/// A record found by identifier whose survivor is out of scope: the identifier is not found.
fn not_found_by_identifier(error: RecordsError) -> RecordsError {
    match error {
        RecordsError::NotFound(_) => RecordsError::IdentifierNotFound,
        other => other,
    }
}

/// Events are stored as a `WatchEventsResponse` without its envelope; the envelope is added on read.
fn event_payload(event: Event) -> Vec<u8> {
    pb::WatchEventsResponse { envelope: None, event: Some(event) }.encode_to_vec()
}

pub fn candidate_message(candidate: &Candidate, reveal: bool) -> pb::MatchCandidate {
    pb::MatchCandidate {
        patient: Some(convert::patient(&candidate.record, reveal)),
        score: candidate.score,
        grade: match candidate.grade {
            Grade::Match => pb::MatchGrade::Match as i32,
            Grade::PossibleMatch => pb::MatchGrade::PossibleMatch as i32,
        },
        matched_on: candidate.matched_on.iter().map(|s| s.to_string()).collect(),
    }
}
