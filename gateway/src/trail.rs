//! `pac.audit.v1.AuditTrail`, served by the gateway itself: auditors read the trail by patient,
//! actor and time. The policy table lets only auditors in; an auditor reads the records of calls by
//! callers acting for its organisations (which are the only calls that can touch their patients),
//! a platform auditor every record. Reading is itself audited.

use chrono::{DateTime, Utc};
use pac_platform::CallerVerifier;
use pac_platform::convert::{parse_id, parse_timestamp, timestamp};
use pac_platform::error::{ApiError, FieldViolation};
use pac_platform::paging;
use pac_proto::audit as pb;
use pac_proto::audit::audit_trail_server::AuditTrail;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::audit::{self, Record};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 500;

pub struct AuditTrailService {
    pool: PgPool,
    callers: CallerVerifier,
}

impl AuditTrailService {
    /// `callers` verifies the caller context the gateway's door signed for the call.
    pub fn new(pool: PgPool, callers: CallerVerifier) -> Self {
        Self { pool, callers }
    }
}

fn event(record: Record) -> pb::AuditEvent {
    pb::AuditEvent {
        writer: record.writer,
        sequence: record.sequence,
        occur_time: Some(timestamp(record.occurred_at)),
        actor: Some(pac_proto::common::Actor { subject: record.subject, role: record.role, organisation: record.organisation }),
        action: record.action,
        patient_ids: record.patient_ids,
        outcome: record.outcome,
        reason: record.reason,
        request_id: record.request_id,
        trace_id: record.trace_id,
        previous_hash: record.previous_hash,
        hash: record.hash,
        detail: record.detail,
    }
}

/// The filters, checked: every problem at once.
fn query(request: &pb::ListAuditEventsRequest) -> Result<(audit::Query, [u8; 8]), ApiError> {
    let mut violations: Vec<FieldViolation> = Vec::new();
    let mut collect = |result: Result<Option<DateTime<Utc>>, FieldViolation>| {
        result.unwrap_or_else(|v| {
            violations.push(v);
            None
        })
    };
    let from = collect(request.start_time.as_ref().map(|t| parse_timestamp("start_time", t)).transpose());
    let before = collect(request.end_time.as_ref().map(|t| parse_timestamp("end_time", t)).transpose());
    if let (Some(from), Some(before)) = (from, before)
        && before <= from
    {
        violations.push(FieldViolation::new("end_time", "TIME_RANGE_INVALID", "must be after start_time"));
    }
    let patient_id = match request.patient_id.as_str() {
        "" => None,
        id => match parse_id("patient_id", id) {
            Ok(id) => Some(id.to_string()),
            Err(v) => {
                violations.push(v);
                None
            }
        },
    };
    if request.actor_subject.chars().count() > 256 {
        violations.push(FieldViolation::new("actor_subject", "TOO_LONG", "must be at most 256 characters"));
    }
    let limit = paging::page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)?;
    if !violations.is_empty() {
        return Err(ApiError::invalid(violations));
    }
    let fingerprint =
        paging::fingerprint(&[request.patient_id.as_str(), request.actor_subject.as_str(), &format!("{from:?}"), &format!("{before:?}")]);
    let after = paging::decode_key(&request.page_token, fingerprint)?.map(|key| decode_position(&key)).transpose()?;
    let subject = Some(request.actor_subject.clone()).filter(|s| !s.is_empty());
    Ok((audit::Query { patient_id, subject, from, before, after, limit, organisations: Some(Vec::new()) }, fingerprint))
}

/// A position in the newest-first order: time (micros), sequence, writer.
fn encode_position(record: &Record) -> Vec<u8> {
    let mut key = record.occurred_at.timestamp_micros().to_be_bytes().to_vec();
    key.extend_from_slice(&record.sequence.to_be_bytes());
    key.extend_from_slice(record.writer.as_bytes());
    key
}

fn decode_position(key: &[u8]) -> Result<(DateTime<Utc>, String, i64), ApiError> {
    if key.len() < 16 {
        return Err(paging::invalid_token());
    }
    let micros = i64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let sequence = i64::from_be_bytes(key[8..16].try_into().expect("8 bytes"));
    let writer = String::from_utf8(key[16..].to_vec()).map_err(|_| paging::invalid_token())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(paging::invalid_token)?;
    Ok((at, writer, sequence))
}

#[tonic::async_trait]
impl AuditTrail for AuditTrailService {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = self.callers.caller(request.metadata()).map_err(Status::from)?;
        let request = request.into_inner();
        let (mut query, fingerprint) = query(&request)?;
        query.organisations = match caller.may(crate::policy::PERMISSION_AUDIT_ALL) {
            true => None,
            false => Some(caller.organisations),
        };
        let limit = usize::try_from(query.limit).expect("a page size is positive");
        query.limit += 1;
        let pool = self.pool.clone();
        let filter = query.patient_id.clone();
        let mut records = pac_platform::db::detached(async move { audit::list(&pool, &query).await.map_err(ApiError::from) })
            .await
            .map_err(Status::from)?;
        let next_page_token = if records.len() > limit {
            records.truncate(limit);
            paging::encode_key(&encode_position(records.last().expect("a full page")), fingerprint)
        } else {
            String::new()
        };
        let response = pb::ListAuditEventsResponse { events: records.into_iter().map(event).collect(), next_page_token };
        // Reading a patient's trail is itself an access to that patient's record.
        Ok(pac_platform::audit::with_patients(Response::new(response), filter))
    }
}
