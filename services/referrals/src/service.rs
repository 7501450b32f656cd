//! `pac.referrals.v1.Referrals` over gRPC: each handler reads the caller, validates the request into
//! domain values (every field violation at once), runs the operation on its own task (see
//! `pac_platform::db::detached`) and maps the answer, naming the patients it touched for the audit
//! trail (`pac_platform::audit`).
//!
//! The caller's organisation scope goes with every referral operation into its SQL (see
//! `referrals`), and into `WatchEvents`: a caller acting for organisations receives only their
//! referrals' events; the platform's own services follow the whole feed.

use std::time::Duration as StdDuration;

use chrono::{Datelike, Duration, NaiveDate, Utc};
use pac_platform::audit::with_patients;
use pac_platform::checks::{Checks, required};
use pac_platform::codes::{parse_organisation, parse_service_code};
use pac_platform::convert::{parse_date, parse_id, parse_timestamp};
use pac_platform::db::run;
use pac_platform::error::{ApiError, FieldViolation};
use pac_platform::outbox::{self, StoredEvent};
use pac_platform::{Caller, CallerVerifier, paging};
use pac_proto::referrals as pb;
use pac_proto::referrals::referrals_server::Referrals as ReferralsApi;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::convert;
use crate::domain::eligibility::{Priority, Rules, Sex};
use crate::domain::referral::{self, Action, Status as ReferralStatus};
use crate::domain::rtt::{ClockEvent, Code, LaterDnaPolicy};
use crate::domain::worklist::Threshold;
use crate::model::{Note, ServiceEntry, Worklist, WorklistKey};
use crate::referrals::{Decision, NewReferral, ReferralFacts, Referrals, Write, today};

/// Permission to make triage decisions (accept, reject, return, redirect, ask for information).
pub const PERMISSION_TRIAGE: &str = "referral.triage";

#[derive(Clone)]
pub struct ReferralsService {
    referrals: Referrals,
    verifier: CallerVerifier,
    /// Unsigned calls are accepted (development): they may triage too.
    open_development: bool,
    poll_interval: StdDuration,
    shutdown: CancellationToken,
}

impl ReferralsService {
    pub fn new(
        referrals: Referrals,
        verifier: CallerVerifier,
        open_development: bool,
        poll_interval: StdDuration,
        shutdown: CancellationToken,
    ) -> Self {
        Self { referrals, verifier, open_development, poll_interval, shutdown }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        Ok(self.verifier.caller(request.metadata())?)
    }

    fn write<T: Message>(&self, request: &Request<T>, request_id: &str) -> Result<(Caller, Write), Status> {
        let caller = self.caller(request)?;
        let write = Write::new(&caller, request.get_ref(), request_id)?;
        Ok((caller, write))
    }

    fn may_triage(&self, caller: &Caller) -> bool {
        caller.may(PERMISSION_TRIAGE) || (self.open_development && *caller == Caller::anonymous())
    }
}

/// The patient of a referral in a response, for the audit trail.
fn patient_of(referral: Option<&pb::Referral>) -> Option<String> {
    referral.map(|r| r.patient_id.clone())
}

/// Free text (clinical or not) of at most `max` characters: line breaks allowed, other control
/// characters not; `required` refuses empty text.
fn text(field: &str, value: &str, max: usize, required: bool) -> Result<String, FieldViolation> {
    let value = value.trim();
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(FieldViolation::new(field, "TEXT_INVALID", "must not contain control characters"));
    }
    if value.chars().count() > max {
        return Err(FieldViolation::new(field, "TEXT_TOO_LONG", format!("must be at most {max} characters")));
    }
    if required && value.is_empty() {
        return Err(FieldViolation::new(field, "FIELD_REQUIRED", "is required"));
    }
    Ok(value.to_string())
}

/// A short upper-case code: service codes, referral sources, reason codes.
fn code(field: &str, value: &str, pattern: fn(u8) -> bool, reason: &'static str, what: &str) -> Result<String, FieldViolation> {
    let value = value.trim().to_uppercase();
    if value.is_empty() {
        return Err(FieldViolation::new(field, "FIELD_REQUIRED", "is required"));
    }
    let starts_well = value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !(2..=40).contains(&value.len()) || !starts_well || !value.bytes().all(pattern) {
        return Err(FieldViolation::new(field, reason, what.to_string()));
    }
    Ok(value)
}

fn reason_code(field: &str, value: &str) -> Result<String, FieldViolation> {
    code(
        field,
        value,
        |b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_',
        "REASON_CODE_INVALID",
        "must be a code such as NOT_CLINICALLY_INDICATED",
    )
}

fn source(field: &str, value: &str) -> Result<String, FieldViolation> {
    code(
        field,
        value,
        |b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"&_- ".contains(&b),
        "SOURCE_INVALID",
        "must be a source such as GP or A&E",
    )
}

fn priority(field: &str, value: i32) -> Result<Priority, FieldViolation> {
    match value {
        0 => Err(FieldViolation::new(field, "FIELD_REQUIRED", "is required")),
        v => Priority::from_value(v).ok_or_else(|| FieldViolation::new(field, "PRIORITY_INVALID", "is not a priority")),
    }
}

fn items(field: &str, values: &[String], max_items: usize) -> Result<Vec<String>, FieldViolation> {
    if values.len() > max_items {
        return Err(FieldViolation::new(field, "TOO_MANY_ITEMS", format!("at most {max_items} items")));
    }
    values.iter().enumerate().map(|(i, v)| text(&format!("{field}[{i}]"), v, 200, true)).collect()
}

fn district(field: &str, value: &str) -> Result<String, FieldViolation> {
    let value = value.trim().to_uppercase();
    let bytes = value.as_bytes();
    let letters = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    let rest = &bytes[letters..];
    let valid = (1..=2).contains(&letters)
        && !rest.is_empty()
        && rest.len() <= 2
        && rest[0].is_ascii_digit()
        && rest[1..].iter().all(|b| b.is_ascii_alphanumeric());
    if valid { Ok(value) } else { Err(FieldViolation::new(field, "DISTRICT_INVALID", "must be a postcode district such as LS1 or SW1A")) }
}

fn age(field: &str, value: Option<i32>) -> Result<Option<u32>, FieldViolation> {
    match value {
        None => Ok(None),
        Some(v @ 0..=150) => Ok(Some(v as u32)),
        Some(_) => Err(FieldViolation::new(field, "AGE_INVALID", "must be 0 to 150")),
    }
}

/// A new service from a request, owned by `organisation`.
fn parse_service(input: &pb::Service, now: chrono::DateTime<Utc>, organisation: String) -> Result<ServiceEntry, Status> {
    let mut checks = Checks::default();
    let rules = input.rules.clone().unwrap_or_default();
    let code = checks.check(parse_service_code("service.code", &input.code));
    let name = checks.check(text("service.name", &input.name, 200, true));
    let specialty = checks.check(text("service.specialty", &input.specialty, 200, false));
    let min_age = checks.check(age("service.rules.min_age", rules.min_age));
    let max_age = checks.check(age("service.rules.max_age", rules.max_age));
    if let (Some(Some(min)), Some(Some(max))) = (min_age, max_age)
        && min > max
    {
        checks.push(FieldViolation::new("service.rules.min_age", "AGE_RANGE_INVALID", "must not be above max_age"));
    }
    let sexes: Vec<Sex> = rules
        .sexes
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            checks.check(
                Sex::from_value(*s).ok_or_else(|| FieldViolation::new(format!("service.rules.sexes[{i}]"), "SEX_INVALID", "is not a sex")),
            )
        })
        .collect();
    let sources: Vec<String> =
        rules.sources.iter().enumerate().filter_map(|(i, s)| checks.check(source(&format!("service.rules.sources[{i}]"), s))).collect();
    let catchment: Vec<String> = rules
        .catchment_districts
        .iter()
        .enumerate()
        .filter_map(|(i, d)| checks.check(district(&format!("service.rules.catchment_districts[{i}]"), d)))
        .collect();
    let required_information = checks.check(items("service.rules.required_information", &rules.required_information, 20));
    let priorities: Vec<Priority> = input
        .accepted_priorities
        .iter()
        .enumerate()
        .filter_map(|(i, p)| checks.check(priority(&format!("service.accepted_priorities[{i}]"), *p)))
        .collect();
    if !(1..=730).contains(&input.target_wait_days) {
        checks.push(FieldViolation::new("service.target_wait_days", "TARGET_WAIT_INVALID", "must be 1 to 730 days"));
    }
    let thresholds: Vec<Threshold> = input
        .stuck_thresholds
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let field = format!("service.stuck_thresholds[{i}]");
            let status = checks.check(
                convert::parse_status(t.status)
                    .filter(|s| !s.is_terminal())
                    .ok_or_else(|| FieldViolation::new(format!("{field}.status"), "STATUS_INVALID", "must be an open status")),
            );
            let priority = checks.check(match t.priority {
                0 => Ok(0),
                p => priority(&format!("{field}.priority"), p).map(|p| p.value()),
            });
            let days = checks.check(match t.working_days {
                d @ 1..=60 => Ok(d as u32),
                _ => Err(FieldViolation::new(format!("{field}.working_days"), "WORKING_DAYS_INVALID", "must be 1 to 60")),
            });
            Some(Threshold { status: status?.code().to_string(), priority: priority?, working_days: days? })
        })
        .collect();
    let later_dna = checks.check(match pb::LaterDnaPolicy::try_from(input.later_dna_policy) {
        Ok(pb::LaterDnaPolicy::Unspecified | pb::LaterDnaPolicy::Rebook) => Ok(LaterDnaPolicy::Rebook),
        Ok(pb::LaterDnaPolicy::Discharge) => Ok(LaterDnaPolicy::Discharge),
        Err(_) => Err(FieldViolation::new("service.later_dna_policy", "POLICY_INVALID", "is not a policy")),
    });
    let (code, name, specialty, min_age, max_age, required_information, later_dna) =
        checks.finish((code, name, specialty, min_age, max_age, required_information, later_dna))?;
    Ok(ServiceEntry {
        code,
        name,
        specialty,
        rules: Rules { min_age, max_age, sexes, sources, priorities, catchment, required_information },
        target_wait_days: input.target_wait_days,
        thresholds,
        later_dna,
        created_at: now,
        organisation,
    })
}

fn worklist_token(key: Option<WorklistKey>, query: [u8; 8]) -> String {
    key.map(|(date, id)| paging::encode_position(date.num_days_from_ce().to_be_bytes(), id, query)).unwrap_or_default()
}

fn parse_worklist_token(token: &str, query: [u8; 8]) -> Result<Option<WorklistKey>, Status> {
    let Some((days, id)) = paging::decode_position(token, query)? else { return Ok(None) };
    let date = NaiveDate::from_num_days_from_ce_opt(i32::from_be_bytes(days)).ok_or_else(paging::invalid_token)?;
    Ok(Some((date, id)))
}

fn event_message(event: StoredEvent) -> Result<pb::WatchEventsResponse, ApiError> {
    let mut message: pb::WatchEventsResponse = outbox::stored_message(&event)?;
    message.envelope = Some(pac_platform::convert::envelope(&event));
    Ok(message)
}

fn clock_event(kind: i32) -> Result<ClockEvent, FieldViolation> {
    use pb::ClockEventKind as K;
    Ok(match K::try_from(kind) {
        Ok(K::Activity) => ClockEvent::Activity,
        Ok(K::Transfer) => ClockEvent::Transfer,
        Ok(K::FirstTreatment) => ClockEvent::Stop(Code::FirstTreatment),
        Ok(K::ActiveMonitoringPatient) => ClockEvent::Stop(Code::ActiveMonitoringPatient),
        Ok(K::ActiveMonitoringClinician) => ClockEvent::Stop(Code::ActiveMonitoringClinician),
        Ok(K::DecisionNotToTreat) => ClockEvent::Stop(Code::DecisionNotToTreat),
        Ok(K::PatientDeclined) => ClockEvent::Stop(Code::PatientDeclined),
        Ok(K::Died) => ClockEvent::Stop(Code::DiedBeforeTreatment),
        Ok(K::RestartAfterActiveMonitoring) => ClockEvent::Restart(Code::StartAfterActiveMonitoring),
        Ok(K::RestartNewCondition) => ClockEvent::Restart(Code::StartNewCondition),
        Ok(K::Unspecified) => return Err(FieldViolation::new("kind", "FIELD_REQUIRED", "is required")),
        Err(_) => return Err(FieldViolation::new("kind", "CLOCK_EVENT_INVALID", "is not a clock event")),
    })
}

type EventStream = outbox::EventStream<pb::WatchEventsResponse>;

#[tonic::async_trait]
impl ReferralsApi for ReferralsService {
    async fn create_service(&self, request: Request<pb::CreateServiceRequest>) -> Result<Response<pb::CreateServiceResponse>, Status> {
        let (caller, write) = self.write(&request, &request.get_ref().request_id)?;
        let input = required("service", request.get_ref().service.as_ref())?;
        let organisation = caller.owning_organisation("service.organisation", &input.organisation)?;
        let service = parse_service(input, pac_platform::now(), organisation)?;
        let referrals = self.referrals.clone();
        Ok(Response::new(run(async move { referrals.create_service(service, write).await }).await?))
    }

    async fn list_services(&self, request: Request<pb::ListServicesRequest>) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.caller(&request)?;
        let limit = paging::page_size(request.get_ref().page_size, 50, 200)?;
        let query = paging::fingerprint(&["ListServices"]);
        let after = match paging::decode_key(&request.get_ref().page_token, query)? {
            Some(bytes) => String::from_utf8(bytes)
                .ok()
                .filter(|code| parse_service_code("page_token", code).is_ok())
                .ok_or_else(|| Status::from(paging::invalid_token()))?,
            None => String::new(),
        };
        let referrals = self.referrals.clone();
        let mut services = run(async move { referrals.list_services(&after, limit + 1).await }).await?;
        let more = services.len() as i64 > limit;
        services.truncate(limit as usize);
        let next_page_token = match services.last() {
            Some(last) if more => paging::encode_key(last.code.as_bytes(), query),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListServicesResponse { services: services.iter().map(convert::service).collect(), next_page_token }))
    }

    async fn check_eligibility(
        &self,
        request: Request<pb::CheckEligibilityRequest>,
    ) -> Result<Response<pb::CheckEligibilityResponse>, Status> {
        let caller = self.caller(&request)?;
        let requested = request.get_ref().patient_id.clone();
        let r = request.into_inner();
        let mut checks = Checks::default();
        let patient_id = checks.check(parse_id("patient_id", &r.patient_id));
        let code = checks.check(parse_service_code("service_code", &r.service_code));
        let source = checks.check(if r.source.trim().is_empty() { Ok(None) } else { source("source", &r.source).map(Some) });
        let priority = checks.check(if r.priority == 0 { Ok(None) } else { priority("priority", r.priority).map(Some) });
        let information = checks.check(items("information", &r.information, 50));
        let (patient_id, code, source, priority, information) = checks.finish((patient_id, code, source, priority, information))?;
        let facts = ReferralFacts { source, priority, information: (!information.is_empty()).then_some(information) };
        let referrals = self.referrals.clone();
        let (patient, reasons) = run(async move {
            let service = referrals.service(&code).await?;
            referrals.check_eligibility(patient_id, &service, facts, caller.scope()).await
        })
        .await?;
        let response = pb::CheckEligibilityResponse {
            eligible: reasons.is_empty(),
            reasons: reasons.into_iter().map(|r| pb::EligibilityReason { code: r.code.to_string(), message: r.message }).collect(),
        };
        // The patient asked about, and the surviving record it resolved to if it was merged away.
        Ok(with_patients(Response::new(response), [requested, patient.id.to_string()]))
    }

    async fn create_referral(&self, request: Request<pb::CreateReferralRequest>) -> Result<Response<pb::CreateReferralResponse>, Status> {
        let (_, write) = self.write(&request, &request.get_ref().request_id)?;
        let r = request.get_ref();
        let now = pac_platform::now();
        let mut checks = Checks::default();
        let patient_id = checks.check(parse_id("patient_id", &r.patient_id));
        let code = checks.check(parse_service_code("service_code", &r.service_code));
        let priority = checks.check(priority("priority", r.priority));
        let referrer = r.referrer.clone().unwrap_or_default();
        let organisation = checks.check(parse_organisation("referrer.organisation", &referrer.organisation));
        let clinician = checks.check(text("referrer.clinician", &referrer.clinician, 200, false));
        let source = checks.check(source("source", &r.source));
        let reason = checks.check(text("reason", &r.reason, 4000, true));
        let information = checks.check(items("information", &r.information, 50));
        let received_at = checks.check(match &r.receive_time {
            None => Ok(now),
            Some(t) => parse_timestamp("receive_time", t).and_then(|at| {
                if at > now + Duration::minutes(5) {
                    Err(FieldViolation::new("receive_time", "RECEIVE_TIME_IN_FUTURE", "must not be in the future"))
                } else if at < now - Duration::days(3 * 365) {
                    Err(FieldViolation::new("receive_time", "RECEIVE_TIME_TOO_OLD", "must be within the last three years"))
                } else {
                    Ok(at.min(now))
                }
            }),
        });
        let (patient_id, service_code, priority, referrer_organisation, referrer_clinician, source, reason, information, received_at) =
            checks.finish((patient_id, code, priority, organisation, clinician, source, reason, information, received_at))?;
        let new = NewReferral {
            patient_id,
            service_code,
            priority,
            referrer_organisation,
            referrer_clinician,
            source,
            reason,
            information,
            received_at,
        };
        let referrals = self.referrals.clone();
        let response = run(async move { referrals.create_referral(new, write).await }).await?;
        let patient = patient_of(response.referral.as_ref());
        Ok(with_patients(Response::new(response), patient))
    }

    async fn triage_referral(&self, request: Request<pb::TriageReferralRequest>) -> Result<Response<pb::TriageReferralResponse>, Status> {
        use pb::triage_referral_request::Decision as D;
        let (caller, write) = self.write(&request, &request.get_ref().request_id)?;
        let r = request.into_inner();
        let mut checks = Checks::default();
        let id = checks.check(parse_id("referral_id", &r.referral_id));
        let etag = checks.check(text("etag", &r.etag, 20, true));
        let decision = checks.check(match r.decision {
            None => Err(FieldViolation::new(
                "decision",
                "DECISION_REQUIRED",
                "set one of accept, reject, return_to_referrer, redirect, request_information, information_received",
            )),
            Some(D::Accept(_)) => Ok(Decision::Accept),
            Some(D::Reject(reject)) => {
                if reject.reason_code.trim().is_empty() {
                    Err(FieldViolation::new("reject.reason_code", "REASON_REQUIRED", "a rejection needs a coded reason"))
                } else {
                    reason_code("reject.reason_code", &reject.reason_code).and_then(|code| {
                        Ok(Decision::Reject { reason_code: code, comment: text("reject.comment", &reject.comment, 2000, false)? })
                    })
                }
            }
            Some(D::ReturnToReferrer(back)) => {
                text("return_to_referrer.advice", &back.advice, 4000, true).map(|advice| Decision::ReturnToReferrer { advice })
            }
            Some(D::Redirect(redirect)) => parse_service_code("redirect.service_code", &redirect.service_code).and_then(|service_code| {
                Ok(Decision::Redirect { service_code, comment: text("redirect.comment", &redirect.comment, 2000, false)? })
            }),
            Some(D::RequestInformation(ask)) => {
                text("request_information.question", &ask.question, 4000, true).map(|question| Decision::RequestInformation { question })
            }
            Some(D::InformationReceived(given)) => match items("information_received.information", &given.information, 50) {
                Ok(information) if information.is_empty() => {
                    Err(FieldViolation::new("information_received.information", "FIELD_REQUIRED", "name the information received"))
                }
                other => other.map(|information| Decision::InformationReceived { information }),
            },
        });
        let (id, etag, decision) = checks.finish((id, etag, decision))?;
        if matches!(
            decision,
            Decision::Accept
                | Decision::Reject { .. }
                | Decision::ReturnToReferrer { .. }
                | Decision::Redirect { .. }
                | Decision::RequestInformation { .. }
        ) && !self.may_triage(&caller)
        {
            return Err(ApiError::permission_denied(
                "TRIAGE_NOT_PERMITTED",
                format!("triage decisions need the {PERMISSION_TRIAGE} permission"),
            )
            .into());
        }
        let referrals = self.referrals.clone();
        let response = run(async move { referrals.triage(id, &etag, decision, write).await }).await?;
        let patient = patient_of(response.referral.as_ref());
        Ok(with_patients(Response::new(response), patient))
    }

    async fn cancel_referral(&self, request: Request<pb::CancelReferralRequest>) -> Result<Response<pb::CancelReferralResponse>, Status> {
        let (_, write) = self.write(&request, &request.get_ref().request_id)?;
        let r = request.into_inner();
        let mut checks = Checks::default();
        let id = checks.check(parse_id("referral_id", &r.referral_id));
        let etag = checks.check(text("etag", &r.etag, 20, true));
        let reason = checks.check(text("reason", &r.reason, 500, true));
        let (id, etag, reason) = checks.finish((id, etag, reason))?;
        let referrals = self.referrals.clone();
        let response = run(async move { referrals.cancel(id, &etag, reason, write).await }).await?;
        let patient = patient_of(response.referral.as_ref());
        Ok(with_patients(Response::new(response), patient))
    }

    async fn get_referral(&self, request: Request<pb::GetReferralRequest>) -> Result<Response<pb::GetReferralResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let referrals = self.referrals.clone();
        let (referral, notes) = run(async move { referrals.get(id, caller.scope()).await }).await?;
        let response = pb::GetReferralResponse {
            referral: Some(convert::referral(&referral, Utc::now())),
            notes: notes.iter().map(convert::note).collect(),
        };
        Ok(with_patients(Response::new(response), [referral.patient_id.to_string()]))
    }

    async fn list_referrals(&self, request: Request<pb::ListReferralsRequest>) -> Result<Response<pb::ListReferralsResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.get_ref();
        let mut checks = Checks::default();
        let limit = checks.check(paging::page_size(r.page_size, 50, 200));
        let mut statuses: Vec<ReferralStatus> = r
            .statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                checks.check(
                    convert::parse_status(*s)
                        .ok_or_else(|| FieldViolation::new(format!("statuses[{i}]"), "STATUS_INVALID", "is not a referral status")),
                )
            })
            .collect();
        statuses.sort_by_key(|s| s.code());
        statuses.dedup();
        let mut priorities: Vec<Priority> =
            r.priorities.iter().enumerate().filter_map(|(i, p)| checks.check(priority(&format!("priorities[{i}]"), *p))).collect();
        priorities.sort();
        priorities.dedup();
        let service_code = checks.check(if r.service_code.trim().is_empty() {
            Ok(None)
        } else {
            parse_service_code("service_code", &r.service_code).map(Some)
        });
        let patient_id = checks.check(if r.patient_id.is_empty() { Ok(None) } else { parse_id("patient_id", &r.patient_id).map(Some) });
        let breaching_by = checks.check(match r.breaching_within_days {
            None => Ok(None),
            Some(days @ 0..=3650) => Ok(Some(today() + Duration::days(i64::from(days)))),
            Some(_) => Err(FieldViolation::new("breaching_within_days", "DAYS_INVALID", "must be 0 to 3650")),
        });
        let (limit, service_code, patient_id, breaching_by) = checks.finish((limit, service_code, patient_id, breaching_by))?;
        if statuses.is_empty() && patient_id.is_none() {
            statuses = referral::OPEN.to_vec();
        }
        let filter = Worklist {
            statuses,
            service_code,
            patient_id,
            priorities,
            breaching_by,
            dna_follow_up: r.dna_follow_up,
            unassigned_tasks: r.unassigned_tasks,
            stuck_at: r.stuck.then(Utc::now),
        };
        // The token is bound to the filters as sent (a relative breach window stays relative).
        let query = paging::fingerprint(&[
            "ListReferrals",
            &format!("{:?}", r.statuses),
            &r.service_code,
            &r.patient_id,
            &format!("{:?}", r.priorities),
            &format!("{:?}/{}/{}/{}", r.breaching_within_days, r.dna_follow_up, r.unassigned_tasks, r.stuck),
        ]);
        let after = parse_worklist_token(&r.page_token, query)?;
        let referrals = self.referrals.clone();
        let mut rows = run(async move { referrals.worklist(&filter, after, limit + 1, caller.scope()).await }).await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = if more { worklist_token(rows.last().map(|(_, key)| *key), query) } else { String::new() };
        let now = Utc::now();
        let response =
            pb::ListReferralsResponse { referrals: rows.iter().map(|(r, _)| convert::referral(r, now)).collect(), next_page_token };
        Ok(with_patients(Response::new(response), rows.iter().map(|(r, _)| r.patient_id.to_string())))
    }

    async fn get_allowed_actions(
        &self,
        request: Request<pb::GetAllowedActionsRequest>,
    ) -> Result<Response<pb::GetAllowedActionsResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = parse_id("referral_id", &request.get_ref().referral_id)?;
        let (referrals, scope) = (self.referrals.clone(), caller.scope().map(<[String]>::to_vec));
        let referral = run(async move { referrals.referral(id, scope.as_deref()).await }).await?;
        let actions = referral::allowed_actions(referral.status, self.may_triage(&caller));
        let response = pb::GetAllowedActionsResponse {
            actions: actions.into_iter().map(|a: Action| convert::action(a) as i32).collect(),
            etag: referral.etag(),
        };
        Ok(with_patients(Response::new(response), [referral.patient_id.to_string()]))
    }

    async fn add_note(&self, request: Request<pb::AddNoteRequest>) -> Result<Response<pb::AddNoteResponse>, Status> {
        let (_, write) = self.write(&request, &request.get_ref().request_id)?;
        let r = request.into_inner();
        let input = r.note.unwrap_or_default();
        let mut checks = Checks::default();
        let referral_id = checks.check(parse_id("referral_id", &r.referral_id));
        let body = checks.check(text("note.text", &input.text, 4000, true));
        let team = checks.check(text("note.team", &input.team, 100, false));
        let due_date = checks.check(match (&input.due_date, input.task) {
            (Some(d), true) => parse_date("note.due_date", d).map(Some),
            (None, true) => Err(FieldViolation::new("note.due_date", "FIELD_REQUIRED", "a task needs a due date")),
            (Some(_), false) => Err(FieldViolation::new("note.due_date", "NOT_A_TASK", "only a task has a due date")),
            (None, false) => Ok(None),
        });
        if !input.task && !input.team.trim().is_empty() {
            checks.push(FieldViolation::new("note.team", "NOT_A_TASK", "only a task is assigned to a team"));
        }
        let (referral_id, text, team, due_date) = checks.finish((referral_id, body, team, due_date))?;
        let now = pac_platform::now();
        let note = Note {
            id: Uuid::now_v7(),
            referral_id,
            task: input.task,
            text,
            team,
            due_date,
            completed_at: None,
            author: write.actor.clone(),
            created_at: now,
        };
        let referrals = self.referrals.clone();
        let (response, patient) = run(async move { referrals.add_note(note, write).await }).await?;
        Ok(with_patients(Response::new(response), [patient.to_string()]))
    }

    async fn complete_task(&self, request: Request<pb::CompleteTaskRequest>) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let caller = self.caller(&request)?;
        let mut checks = Checks::default();
        let referral_id = checks.check(parse_id("referral_id", &request.get_ref().referral_id));
        let task_id = checks.check(parse_id("task_id", &request.get_ref().task_id));
        let (referral_id, task_id) = checks.finish((referral_id, task_id))?;
        let referrals = self.referrals.clone();
        let (task, patient) = run(async move { referrals.complete_task(referral_id, task_id, caller.scope()).await }).await?;
        Ok(with_patients(Response::new(pb::CompleteTaskResponse { task: Some(convert::note(&task)) }), [patient.to_string()]))
    }

    async fn record_clock_event(
        &self,
        request: Request<pb::RecordClockEventRequest>,
    ) -> Result<Response<pb::RecordClockEventResponse>, Status> {
        let (_, write) = self.write(&request, &request.get_ref().request_id)?;
        let r = request.into_inner();
        let today = today();
        let mut checks = Checks::default();
        let id = checks.check(parse_id("referral_id", &r.referral_id));
        let etag = checks.check(text("etag", &r.etag, 20, true));
        let event = checks.check(clock_event(r.kind));
        let on = checks.check(match &r.date {
            None => Ok(today),
            Some(d) => parse_date("date", d).and_then(|d| {
                if d > today { Err(FieldViolation::new("date", "DATE_IN_FUTURE", "must not be in the future")) } else { Ok(d) }
            }),
        });
        let (id, etag, event, on) = checks.finish((id, etag, event, on))?;
        let referrals = self.referrals.clone();
        let response = run(async move { referrals.record_clock_event(id, &etag, event, on, write).await }).await?;
        let patient = patient_of(response.referral.as_ref());
        Ok(with_patients(Response::new(response), patient))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(&self, request: Request<pb::WatchEventsRequest>) -> Result<Response<Self::WatchEventsStream>, Status> {
        let scope = self.caller(&request)?.scope().map(<[String]>::to_vec);
        let (outbox, pool) = (&self.referrals.outbox, self.referrals.pool.clone());
        let after = &request.get_ref().after_cursor;
        Ok(Response::new(outbox.watch_messages(pool, after, scope, self.poll_interval, self.shutdown.clone(), event_message)?))
    }
}
