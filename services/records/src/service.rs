//! `pac.records.v1.PatientRecords` over gRPC: each handler reads the caller, validates the request
//! into domain values, runs the operation on its own task (see `pac_platform::db::detached`) and maps
//! the answer, naming the patients it touched for the audit trail (`pac_platform::audit`).
//!
//! The caller's organisation scope goes with every operation into its SQL (see `records`); a new
//! patient belongs to the organisation `Caller::owning_organisation` picks from `patient.organisation`.
//! `WatchEvents` is scoped too: a caller acting for organisations receives only their events (the
//! gateway lets only integration accounts call it, and audits each stream); the platform's own
//! services follow the whole feed.

use std::time::Duration;

use chrono::Utc;
use pac_platform::audit::with_patients;
use pac_platform::checks::Checks;
use pac_platform::db::run;
use pac_platform::error::{ApiError, FieldViolation};
use pac_platform::outbox::{self, StoredEvent};
use pac_platform::write::Write;
use pac_platform::{Caller, CallerVerifier, paging};
use pac_proto::records as pb;
use pac_proto::records::patient_records_server::PatientRecords;
use pac_proto::records::watch_events_response::Event;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::convert::{self, Rules, nhs_number_violation, parse_id};
use crate::domain::nhs_number::NhsNumber;
use crate::records::{self, Merge, Records, Register, Unmerge, Update, candidate_message, reveals_contact};

/// Furthest a search can page: fuzzy results this deep are not worth reading.
const MAX_SEARCH_OFFSET: i64 = 1000;

#[derive(Clone)]
pub struct RecordsService {
    records: Records,
    verifier: CallerVerifier,
    accept_test_nhs_numbers: bool,
    poll_interval: Duration,
    shutdown: CancellationToken,
}

impl RecordsService {
    pub fn new(
        records: Records,
        verifier: CallerVerifier,
        accept_test_nhs_numbers: bool,
        poll_interval: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self { records, verifier, accept_test_nhs_numbers, poll_interval, shutdown }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        Ok(self.verifier.caller(request.metadata())?)
    }

    fn rules(&self) -> Rules {
        Rules { accept_test_nhs_numbers: self.accept_test_nhs_numbers, today: Utc::now().date_naive() }
    }
}

fn invalid(violation: FieldViolation) -> Status {
    ApiError::invalid(vec![violation]).into()
}

type EventStream = outbox::EventStream<pb::WatchEventsResponse>;

#[tonic::async_trait]
impl PatientRecords for RecordsService {
    async fn register_patient(
        &self,
        request: Request<pb::RegisterPatientRequest>,
    ) -> Result<Response<pb::RegisterPatientResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let input = request.patient.as_ref().ok_or_else(|| invalid(FieldViolation::new("patient", "PATIENT_REQUIRED", "is required")))?;
        let demographics = convert::new_demographics(input, self.rules()).map_err(|v| Status::from(ApiError::invalid(v)))?;
        let organisation = caller.owning_organisation("patient.organisation", &input.organisation)?;
        let register = Register {
            demographics,
            organisation,
            write: Write::new(&caller, &request, &request.request_id)?,
            allow_possible_duplicate: request.allow_possible_duplicate,
            caller,
        };
        let records = self.records.clone();
        let response = run(async move { records.register(register).await }).await?;
        let id = response.patient.as_ref().map(|p| p.id.clone());
        Ok(with_patients(Response::new(response), id))
    }

    async fn get_patient(&self, request: Request<pb::GetPatientRequest>) -> Result<Response<pb::GetPatientResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let (records, scope) = (self.records.clone(), caller.clone());
        let (record, merged_from) = run(async move { records.get(id, scope.scope()).await }).await?;
        let touched = [Some(record.id), merged_from].into_iter().flatten().map(|id| id.to_string());
        let response = pb::GetPatientResponse {
            patient: Some(convert::patient(&record, reveals_contact(&caller))),
            merged_from: merged_from.map(|id| id.to_string()).unwrap_or_default(),
        };
        Ok(with_patients(Response::new(response), touched))
    }

    async fn lookup_patient(&self, request: Request<pb::LookupPatientRequest>) -> Result<Response<pb::LookupPatientResponse>, Status> {
        use pb::lookup_patient_request::Identifier;
        let caller = self.caller(&request)?;
        let (records, scope) = (self.records.clone(), caller.clone());
        let found = match request.into_inner().identifier {
            Some(Identifier::NhsNumber(value)) => {
                // Any syntactically valid number may be looked up, test range included.
                let nhs_number = NhsNumber::parse(&value, true).map_err(|e| invalid(nhs_number_violation("nhs_number", e)))?;
                run(async move { records.lookup_nhs_number(nhs_number.as_str(), scope.scope()).await }).await?
            }
            Some(Identifier::LocalIdentifier(identifier)) => {
                let issuer = identifier.issuer.trim().to_uppercase();
                let value = identifier.value.trim().to_string();
                if issuer.is_empty() || value.is_empty() {
                    return Err(invalid(FieldViolation::new("local_identifier", "IDENTIFIER_INVALID", "needs both issuer and value")));
                }
                run(async move { records.lookup_local_identifier(&issuer, &value, scope.scope()).await }).await?
            }
            None => {
                return Err(invalid(FieldViolation::new("identifier", "IDENTIFIER_REQUIRED", "set nhs_number or local_identifier")));
            }
        };
        let (record, merged_from) = found;
        let touched = [Some(record.id), merged_from].into_iter().flatten().map(|id| id.to_string());
        let response = pb::LookupPatientResponse {
            patient: Some(convert::patient(&record, reveals_contact(&caller))),
            merged_from: merged_from.map(|id| id.to_string()).unwrap_or_default(),
        };
        Ok(with_patients(Response::new(response), touched))
    }

    async fn update_patient(&self, request: Request<pb::UpdatePatientRequest>) -> Result<Response<pb::UpdatePatientResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let input = request.patient.ok_or_else(|| invalid(FieldViolation::new("patient", "PATIENT_REQUIRED", "is required")))?;
        let id = parse_id("patient.id", &input.id)?;
        if input.etag.is_empty() {
            return Err(invalid(FieldViolation::new(
                "patient.etag",
                "ETAG_REQUIRED",
                "is required: send the etag of the version you read",
            )));
        }
        let paths = request.update_mask.map(|mask| mask.paths).unwrap_or_default();
        let update = Update { id, etag: input.etag.clone(), input, paths, rules: self.rules(), caller: caller.clone() };
        let records = self.records.clone();
        let updated = run(async move { records.update(update).await }).await?;
        let response = pb::UpdatePatientResponse { patient: Some(convert::patient(&updated, reveals_contact(&caller))) };
        Ok(with_patients(Response::new(response), [updated.id.to_string()]))
    }

    async fn search_patients(&self, request: Request<pb::SearchPatientsRequest>) -> Result<Response<pb::SearchPatientsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let mut criteria = convert::search_criteria(&request, Utc::now().date_naive()).map_err(|v| Status::from(ApiError::invalid(v)))?;
        let query = paging::fingerprint(&[
            criteria.name_key.as_deref().unwrap_or(""),
            &criteria.birth_date.map(|d| d.to_string()).unwrap_or_default(),
            criteria.postcode.as_deref().or(criteria.postcode_outward.as_deref()).unwrap_or(""),
            criteria.phone.as_deref().unwrap_or(""),
            &criteria.limit.to_string(),
        ]);
        criteria.offset = paging::decode(&request.page_token, query)?;
        let (offset, limit) = (criteria.offset, criteria.limit);
        let (records, scope) = (self.records.clone(), caller.clone());
        let hits = if offset >= MAX_SEARCH_OFFSET {
            Vec::new()
        } else {
            run(async move { records.search(&criteria, scope.scope()).await }).await?
        };
        let next_offset = offset + limit;
        let full_page = hits.len() as i64 == limit && next_offset < MAX_SEARCH_OFFSET;
        let reveal = reveals_contact(&caller);
        let response = pb::SearchPatientsResponse {
            results: hits
                .iter()
                .map(|(record, score)| pb::PatientSearchResult { patient: Some(convert::patient(record, reveal)), score: *score })
                .collect(),
            next_page_token: if full_page { paging::encode(next_offset, query) } else { String::new() },
        };
        Ok(with_patients(Response::new(response), hits.iter().map(|(record, _)| record.id.to_string())))
    }

    async fn match_patients(&self, request: Request<pb::MatchPatientsRequest>) -> Result<Response<pb::MatchPatientsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let max = match request.max_candidates {
            0 => 10,
            n @ 1..=50 => n as usize,
            _ => return Err(invalid(FieldViolation::new("max_candidates", "MAX_CANDIDATES_INVALID", "must be between 1 and 50"))),
        };
        let input = request.patient.unwrap_or_default();
        let profile = convert::match_profile(&input, Utc::now().date_naive()).map_err(|v| Status::from(ApiError::invalid(v)))?;
        let (records, scope) = (self.records.clone(), caller.clone());
        let candidates = run(async move { records.candidates(&profile, max, scope.scope()).await }).await?;
        let reveal = reveals_contact(&caller);
        let response = pb::MatchPatientsResponse { candidates: candidates.iter().map(|c| candidate_message(c, reveal)).collect() };
        Ok(with_patients(Response::new(response), candidates.iter().map(|c| c.record.id.to_string())))
    }

    async fn merge_patients(&self, request: Request<pb::MergePatientsRequest>) -> Result<Response<pb::MergePatientsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let survivor_id = checks.check(parse_id("survivor_id", &request.survivor_id));
        let merged_id = checks.check(parse_id("merged_id", &request.merged_id));
        let reason = checks.check(reason_text(&request.reason));
        let write = checks.check_invalid(Write::new(&caller, &request, &request.request_id));
        let (survivor_id, merged_id, reason, write) = checks.finish((survivor_id, merged_id, reason, write))?;
        let merge = Merge { survivor_id, merged_id, reason, write, caller };
        let records = self.records.clone();
        let response = run(async move { records.merge(merge).await }).await?;
        Ok(with_patients(Response::new(response), [survivor_id.to_string(), merged_id.to_string()]))
    }

    async fn unmerge_patient(&self, request: Request<pb::UnmergePatientRequest>) -> Result<Response<pb::UnmergePatientResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let merged_id = checks.check(parse_id("merged_id", &request.merged_id));
        let reason = checks.check(reason_text(&request.reason));
        let write = checks.check_invalid(Write::new(&caller, &request, &request.request_id));
        let (merged_id, reason, write) = checks.finish((merged_id, reason, write))?;
        let unmerge = Unmerge { merged_id, reason, write, caller };
        let records = self.records.clone();
        let response = run(async move { records.unmerge(unmerge).await }).await?;
        let survivor = response.merge.as_ref().map(|m| m.survivor_id.clone());
        Ok(with_patients(Response::new(response), [Some(merged_id.to_string()), survivor].into_iter().flatten()))
    }

    type WatchEventsStream = EventStream;

    /// Not scoped by organisation (see the module docs): a merge event names only record ids, and
    /// the feed's consumers are system accounts that mirror the whole index.
    async fn watch_events(&self, request: Request<pb::WatchEventsRequest>) -> Result<Response<Self::WatchEventsStream>, Status> {
        let caller = self.caller(&request)?;
        let reveal = records::reveals_contact(&caller);
        let scope = caller.scope().map(<[String]>::to_vec);
        let (outbox, pool) = (&self.records.outbox, self.records.pool.clone());
        let after = &request.get_ref().after_cursor;
        let message = move |event| event_message(event, reveal);
        Ok(Response::new(outbox.watch_messages(pool, after, scope, self.poll_interval, self.shutdown.clone(), message)?))
    }
}

fn reason_text(value: &str) -> Result<String, FieldViolation> {
    match convert::parse_text(value, 500) {
        Ok(text) if !text.is_empty() => Ok(text),
        Ok(_) => Err(FieldViolation::new("reason", "REASON_REQUIRED", "is required")),
        Err(e) => Err(FieldViolation::new("reason", "REASON_INVALID", e)),
    }
}

/// A stored event as the stream's message, with restricted contact details withheld as on reads.
fn event_message(event: StoredEvent, reveal: bool) -> Result<pb::WatchEventsResponse, ApiError> {
    let mut message: pb::WatchEventsResponse = outbox::stored_message(&event)?;
    if !reveal {
        match &mut message.event {
            Some(Event::PatientRegistered(pb::PatientRegistered { patient: Some(patient) }))
            | Some(Event::PatientUpdated(pb::PatientUpdated { patient: Some(patient), .. })) => convert::withhold_contact(patient),
            _ => {}
        }
    }
    message.envelope = Some(pac_platform::convert::envelope(&event));
    Ok(message)
}
