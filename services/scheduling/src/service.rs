//! `pac.scheduling.v1.Scheduling` over gRPC: each handler reads the caller, validates the request
//! into domain values, runs the operation on its own task (see `pac_platform::db::detached`) and maps
//! the answer, naming the patients it touched for the audit trail (`pac_platform::audit`).
//!
//! The caller's organisation scope goes with every appointment, waitlist and offer operation into
//! its SQL (see `scheduling`), and into `WatchEvents`: a caller acting for organisations receives
//! only their appointments' and waitlist entries' events; the platform's own services (referrals
//! follows the feed) receive all.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use pac_platform::audit::with_patients;
use pac_platform::checks::{Checks, required};
use pac_platform::codes::parse_service_code;
use pac_platform::db::run;
use pac_platform::error::{ApiError, FieldViolation};
use pac_platform::outbox::{self, StoredEvent};
use pac_platform::{Caller, CallerVerifier, paging};
use pac_proto::scheduling as pb;
use pac_proto::scheduling::scheduling_server::Scheduling as SchedulingApi;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::convert::{self, parse_date, parse_id, parse_optional_id, parse_timestamp};
use crate::domain::appointment::Status as AppointmentStatus;
use crate::domain::cancellation::{CancelledBy, parse_reason_code};
use crate::model::{Clinic, Entry, Location, Target, Template};
use crate::scheduling::{Book, BookTarget, Cancel, Reschedule, Scheduling, StatusChange, Write, local_day_window, session_of};
use crate::store::{self, SlotKey, SlotTarget};

/// Furthest an offset-paged list can go.
const MAX_OFFSET: i64 = 10_000;

#[derive(Clone)]
pub struct SchedulingService {
    scheduling: Scheduling,
    verifier: CallerVerifier,
    poll_interval: StdDuration,
    shutdown: CancellationToken,
}

impl SchedulingService {
    pub fn new(scheduling: Scheduling, verifier: CallerVerifier, poll_interval: StdDuration, shutdown: CancellationToken) -> Self {
        Self { scheduling, verifier, poll_interval, shutdown }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        Ok(self.verifier.caller(request.metadata())?)
    }

    /// The caller and idempotency key of a write.
    fn write<T: Message>(&self, request: &Request<T>, request_id: &str) -> Result<Write, Status> {
        Ok(Write::new(&self.caller(request)?, request.get_ref(), request_id)?)
    }
}

/// The patient of an appointment in a response, for the audit trail.
fn patient_of(appointment: Option<&pb::Appointment>) -> Option<String> {
    appointment.map(|a| a.patient_id.clone())
}

fn slot_key_token(key: Option<SlotKey>, query: [u8; 8]) -> String {
    key.map(|(start, id)| paging::encode_position(start.timestamp_micros().to_be_bytes(), id, query)).unwrap_or_default()
}

fn parse_slot_key(token: &str, query: [u8; 8]) -> Result<Option<SlotKey>, Status> {
    let Some((micros, id)) = paging::decode_position(token, query)? else { return Ok(None) };
    let start = DateTime::<Utc>::from_timestamp_micros(i64::from_be_bytes(micros)).ok_or_else(paging::invalid_token)?;
    Ok(Some((start, id)))
}

fn parse_template(input: &pb::SessionTemplate, checks: &mut Checks, id: Uuid) -> Option<Template> {
    let clinic_id = checks.check(parse_id("session_template.clinic_id", &input.clinic_id));
    let weekday = checks.check(match input.weekday {
        1..=7 => Ok(input.weekday as i16),
        _ => Err(FieldViolation::new("session_template.weekday", "WEEKDAY_INVALID", "must be 1 (Monday) to 7 (Sunday)")),
    });
    let start = checks.check(convert::parse_local_time("session_template.start", input.start.as_ref()));
    let end = checks.check(convert::parse_local_time("session_template.end", input.end.as_ref()));
    let valid_from = checks.check(match &input.valid_from {
        Some(d) => parse_date("session_template.valid_from", d),
        None => Err(FieldViolation::new("session_template.valid_from", "FIELD_REQUIRED", "is required")),
    });
    let valid_until = checks.check(input.valid_until.as_ref().map(|d| parse_date("session_template.valid_until", d)).transpose());
    let template = Template {
        id,
        clinic_id: clinic_id?,
        weekday: weekday?,
        start_time: start?,
        end_time: end?,
        slot_minutes: input.slot_minutes,
        capacity: input.capacity,
        valid_from: valid_from?,
        valid_until: valid_until?,
        generated_until: None,
    };
    if let Err(e) = session_of(&template).validate() {
        let field = match e {
            crate::domain::session::TemplateError::SlotLength => "session_template.slot_minutes",
            crate::domain::session::TemplateError::Capacity => "session_template.capacity",
            crate::domain::session::TemplateError::ValidUntilBeforeFrom => "session_template.valid_until",
            _ => "session_template.end",
        };
        checks.push(FieldViolation::new(field, "SESSION_INVALID", e.description()));
        return None;
    }
    Some(template)
}

type EventStream = outbox::EventStream<pb::WatchEventsResponse>;

#[tonic::async_trait]
impl SchedulingApi for SchedulingService {
    async fn create_location(&self, request: Request<pb::CreateLocationRequest>) -> Result<Response<pb::CreateLocationResponse>, Status> {
        let write = self.write(&request, &request.get_ref().request_id)?;
        let input = required("location", request.get_ref().location.as_ref())?;
        let mut checks = Checks::default();
        if !input.id.is_empty() {
            checks.push(FieldViolation::new("location.id", "OUTPUT_ONLY", "is assigned by the service; leave it empty"));
        }
        let address = input.address.clone().unwrap_or_default();
        let lines = checks.check(if address.lines.len() > 6 {
            Err(FieldViolation::new("location.address.lines", "TOO_MANY", "at most 6 lines"))
        } else {
            address.lines.iter().map(|l| convert::parse_optional_text("location.address.lines", l, 100)).collect()
        });
        let location = Location {
            id: Uuid::now_v7(),
            name: checks.check(convert::parse_name("location.name", &input.name, 200)).unwrap_or_default(),
            address_lines: lines.unwrap_or_default(),
            locality: checks.check(convert::parse_optional_text("location.address.locality", &address.locality, 100)).unwrap_or_default(),
            postcode: checks.check(convert::parse_optional_text("location.address.postcode", &address.postcode, 16)).unwrap_or_default(),
            directions: checks.check(convert::parse_optional_text("location.directions", &input.directions, 2000)).unwrap_or_default(),
            access_notes: checks.check(convert::parse_notes("location.access_notes", &input.access_notes)).unwrap_or_default(),
            parking: checks.check(convert::parse_optional_text("location.parking", &input.parking, 1000)).unwrap_or_default(),
        };
        checks.finish(())?;
        let scheduling = self.scheduling.clone();
        Ok(Response::new(run(async move { scheduling.create_location(location, write).await }).await?))
    }

    async fn create_clinic(&self, request: Request<pb::CreateClinicRequest>) -> Result<Response<pb::CreateClinicResponse>, Status> {
        let caller = self.caller(&request)?;
        let input = required("clinic", request.get_ref().clinic.as_ref())?;
        let organisation = caller.owning_organisation("clinic.organisation", &input.organisation)?;
        let write = Write::new(&caller, request.get_ref(), &request.get_ref().request_id)?;
        let mut checks = Checks::default();
        if !input.id.is_empty() {
            checks.push(FieldViolation::new("clinic.id", "OUTPUT_ONLY", "is assigned by the service; leave it empty"));
        }
        let location_id = checks.check(parse_id("clinic.location_id", &input.location_id));
        let time_zone =
            checks.check(input.time_zone.parse::<chrono_tz::Tz>().map(|z| z.name().to_string()).map_err(|_| {
                FieldViolation::new("clinic.time_zone", "TIME_ZONE_INVALID", "must be an IANA time zone such as Europe/London")
            }));
        let clinic = Clinic {
            id: Uuid::now_v7(),
            location_id: location_id.unwrap_or_default(),
            name: checks.check(convert::parse_name("clinic.name", &input.name, 200)).unwrap_or_default(),
            specialty: checks.check(convert::parse_optional_text("clinic.specialty", &input.specialty, 200)).unwrap_or_default(),
            service_code: checks.check(parse_service_code("clinic.service_code", &input.service_code)).unwrap_or_default(),
            time_zone: time_zone.unwrap_or_default(),
            what_to_bring: checks.check(convert::parse_notes("clinic.what_to_bring", &input.what_to_bring)).unwrap_or_default(),
            organisation,
        };
        checks.finish(())?;
        let scheduling = self.scheduling.clone();
        Ok(Response::new(run(async move { scheduling.create_clinic(clinic, write).await }).await?))
    }

    async fn get_clinic(&self, request: Request<pb::GetClinicRequest>) -> Result<Response<pb::GetClinicResponse>, Status> {
        self.caller(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let scheduling = self.scheduling.clone();
        Ok(Response::new(run(async move { scheduling.get_clinic(id).await }).await?))
    }

    async fn list_clinics(&self, request: Request<pb::ListClinicsRequest>) -> Result<Response<pb::ListClinicsResponse>, Status> {
        self.caller(&request)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let service_code =
            checks.check((!request.service_code.is_empty()).then(|| parse_service_code("service_code", &request.service_code)).transpose());
        let location_id = checks.check(parse_optional_id("location_id", &request.location_id));
        let limit = checks.check(paging::page_size(request.page_size, 20, 100));
        let (service_code, location_id, limit) = checks.finish((service_code, location_id, limit))?;
        let query = paging::fingerprint(&[service_code.as_deref().unwrap_or(""), &location_id.map(|l| l.to_string()).unwrap_or_default()]);
        let offset = paging::decode(&request.page_token, query)?;
        let pool = self.scheduling.pool.clone();
        let clinics = run(async move { store::list_clinics(&pool, service_code.as_deref(), location_id, limit, offset).await }).await?;
        let next = next_page(clinics.len(), limit, offset, query);
        Ok(Response::new(pb::ListClinicsResponse { clinics: clinics.iter().map(convert::clinic).collect(), next_page_token: next }))
    }

    async fn create_session_template(
        &self,
        request: Request<pb::CreateSessionTemplateRequest>,
    ) -> Result<Response<pb::CreateSessionTemplateResponse>, Status> {
        let write = self.write(&request, &request.get_ref().request_id)?;
        let input = required("session_template", request.get_ref().session_template.as_ref())?;
        let mut checks = Checks::default();
        if !input.id.is_empty() {
            checks.push(FieldViolation::new("session_template.id", "OUTPUT_ONLY", "is assigned by the service; leave it empty"));
        }
        let template = parse_template(input, &mut checks, Uuid::now_v7());
        let template = checks.finish(template)?;
        let scheduling = self.scheduling.clone();
        Ok(Response::new(run(async move { scheduling.create_template(template, write).await }).await?))
    }

    async fn update_session_template(
        &self,
        request: Request<pb::UpdateSessionTemplateRequest>,
    ) -> Result<Response<pb::UpdateSessionTemplateResponse>, Status> {
        let write = self.write(&request, &request.get_ref().request_id)?;
        let input = required("session_template", request.get_ref().session_template.as_ref())?;
        let mut checks = Checks::default();
        let id = checks.check(parse_id("session_template.id", &input.id));
        let template = parse_template(input, &mut checks, id.unwrap_or_default());
        let template = checks.finish(template)?;
        let scheduling = self.scheduling.clone();
        Ok(Response::new(run(async move { scheduling.update_template(template, write).await }).await?))
    }

    async fn list_slots(&self, request: Request<pb::ListSlotsRequest>) -> Result<Response<pb::ListSlotsResponse>, Status> {
        self.caller(&request)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let clinic_id = checks.check(parse_id("clinic_id", &request.clinic_id));
        let (from, until) = window(&mut checks, request.start_time.as_ref(), request.end_time.as_ref(), Utc::now(), Duration::days(7));
        let limit = checks.check(paging::page_size(request.page_size, 100, 500));
        let (clinic_id, limit) = checks.finish((clinic_id, limit))?;
        let query = paging::fingerprint(&[&clinic_id.to_string(), &requested(&request.start_time), &requested(&request.end_time)]);
        let after = parse_slot_key(&request.page_token, query)?;
        let pool = self.scheduling.pool.clone();
        let slots = run(async move { store::list_slots(&pool, clinic_id, from, until, after, limit).await }).await?;
        let next =
            if slots.len() as i64 == limit { slot_key_token(slots.last().map(|s| (s.start_time, s.id)), query) } else { String::new() };
        Ok(Response::new(pb::ListSlotsResponse { slots: slots.iter().map(convert::slot).collect(), next_page_token: next }))
    }

    async fn search_slots(&self, request: Request<pb::SearchSlotsRequest>) -> Result<Response<pb::SearchSlotsResponse>, Status> {
        use pb::search_slots_request::Target as T;
        self.caller(&request)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let target = checks.check(match &request.target {
            Some(T::ClinicId(id)) => parse_id("clinic_id", id).map(|id| (Some(id), None)),
            Some(T::ServiceCode(code)) => parse_service_code("service_code", code).map(|c| (None, Some(c))),
            None => Err(FieldViolation::new("target", "TARGET_REQUIRED", "set clinic_id or service_code")),
        });
        let now = pac_platform::now();
        let (from, until) = window(&mut checks, request.start_time.as_ref(), request.end_time.as_ref(), now, Duration::days(90));
        let location_id = checks.check(parse_optional_id("location_id", &request.location_id));
        let limit = checks.check(paging::page_size(request.page_size, 20, 100));
        let ((clinic_id, service_code), location_id, limit) = checks.finish((target, location_id, limit))?;
        // Only future slots: a window that starts in the past starts now.
        let from = from.max(now);
        let query = paging::fingerprint(&[
            &clinic_id.map(|c| c.to_string()).unwrap_or_default(),
            service_code.as_deref().unwrap_or(""),
            &location_id.map(|l| l.to_string()).unwrap_or_default(),
            &requested(&request.start_time),
            &requested(&request.end_time),
        ]);
        let after = parse_slot_key(&request.page_token, query)?;
        let pool = self.scheduling.pool.clone();
        let slots = run(async move {
            let target = match (&clinic_id, &service_code) {
                (Some(id), _) => SlotTarget::Clinic(*id),
                (None, Some(code)) => SlotTarget::Service(code),
                (None, None) => unreachable!("a target was checked"),
            };
            store::search_slots(&pool, target, location_id, from, until, after, limit).await
        })
        .await?;
        let next =
            if slots.len() as i64 == limit { slot_key_token(slots.last().map(|s| (s.start_time, s.id)), query) } else { String::new() };
        Ok(Response::new(pb::SearchSlotsResponse { slots: slots.iter().map(convert::slot).collect(), next_page_token: next }))
    }

    async fn hold_slot(&self, request: Request<pb::HoldSlotRequest>) -> Result<Response<pb::HoldSlotResponse>, Status> {
        let write = self.write(&request, &request.get_ref().request_id)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let slot_id = checks.check(parse_id("slot_id", &request.slot_id));
        let patient_id = checks.check(parse_id("patient_id", &request.patient_id));
        let ttl = checks.check(match request.ttl_seconds {
            0 => Ok(Duration::seconds(600)),
            s @ 30..=3600 => Ok(Duration::seconds(s.into())),
            _ => Err(FieldViolation::new("ttl_seconds", "TTL_INVALID", "must be 30 to 3600 seconds (0 means 600)")),
        });
        let (slot_id, patient_id, ttl) = checks.finish((slot_id, patient_id, ttl))?;
        let scheduling = self.scheduling.clone();
        let response = run(async move { scheduling.hold(slot_id, patient_id, ttl, write).await }).await?;
        let patient = patient_of(response.appointment.as_ref());
        Ok(with_patients(Response::new(response), patient))
    }

    async fn book_appointment(
        &self,
        request: Request<pb::BookAppointmentRequest>,
    ) -> Result<Response<pb::BookAppointmentResponse>, Status> {
        use pb::book_appointment_request::Target as T;
        let write = self.write(&request, &request.get_ref().request_id)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let target = checks.check(match &request.target {
            Some(T::SlotId(id)) => parse_id("slot_id", id).map(BookTarget::Slot),
            Some(T::HeldAppointmentId(id)) => parse_id("held_appointment_id", id).map(BookTarget::Hold),
            None => Err(FieldViolation::new("target", "TARGET_REQUIRED", "set slot_id or held_appointment_id")),
        });
        let patient_id = checks.check(match (&target, request.patient_id.is_empty()) {
            (Some(BookTarget::Slot(_)), true) => Err(FieldViolation::new("patient_id", "ID_REQUIRED", "is required")),
            _ => parse_optional_id("patient_id", &request.patient_id),
        });
        let referral_id = checks.check(parse_optional_id("referral_id", &request.referral_id));
        let (target, patient_id, referral_id) = checks.finish((target, patient_id, referral_id))?;
        let book = Book { target, patient_id, referral_id, write };
        let scheduling = self.scheduling.clone();
        let response = run(async move { scheduling.book(book).await }).await?;
        let patient = patient_of(response.appointment.as_ref());
        Ok(with_patients(Response::new(response), patient))
    }

    async fn reschedule_appointment(
        &self,
        request: Request<pb::RescheduleAppointmentRequest>,
    ) -> Result<Response<pb::RescheduleAppointmentResponse>, Status> {
        let write = self.write(&request, &request.get_ref().request_id)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let appointment_id = checks.check(parse_id("appointment_id", &request.appointment_id));
        let new_slot_id = checks.check(parse_id("new_slot_id", &request.new_slot_id));
        if request.etag.is_empty() {
            checks.push(FieldViolation::new("etag", "ETAG_REQUIRED", "is required: send the etag of the appointment you read"));
        }
        let reason = checks.check(convert::parse_optional_text("reason", &request.reason, 500));
        let (appointment_id, new_slot_id, reason) = checks.finish((appointment_id, new_slot_id, reason))?;
        let reschedule = Reschedule { appointment_id, new_slot_id, etag: request.etag, reason, write };
        let scheduling = self.scheduling.clone();
        let response = run(async move { scheduling.reschedule(reschedule).await }).await?;
        let patient = patient_of(response.appointment.as_ref());
        Ok(with_patients(Response::new(response), patient))
    }

    async fn cancel_appointment(
        &self,
        request: Request<pb::CancelAppointmentRequest>,
    ) -> Result<Response<pb::CancelAppointmentResponse>, Status> {
        let write = self.write(&request, &request.get_ref().request_id)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let appointment_id = checks.check(parse_id("appointment_id", &request.appointment_id));
        let reason_code =
            checks.check(parse_reason_code(&request.reason_code).map_err(|e| FieldViolation::new("reason_code", "REASON_CODE_INVALID", e)));
        let by = checks.check(
            CancelledBy::from_code(request.cancelled_by)
                .ok_or_else(|| FieldViolation::new("cancelled_by", "CANCELLED_BY_REQUIRED", "must be PATIENT, PROVIDER or SYSTEM")),
        );
        let (appointment_id, reason_code, by) = checks.finish((appointment_id, reason_code, by))?;
        let cancel = Cancel { appointment_id, reason_code, by, etag: (!request.etag.is_empty()).then_some(request.etag), write };
        let scheduling = self.scheduling.clone();
        let response = run(async move { scheduling.cancel(cancel).await }).await?;
        let patient = patient_of(response.appointment.as_ref());
        Ok(with_patients(Response::new(response), patient))
    }

    async fn update_appointment_status(
        &self,
        request: Request<pb::UpdateAppointmentStatusRequest>,
    ) -> Result<Response<pb::UpdateAppointmentStatusResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let appointment_id = checks.check(parse_id("appointment_id", &request.appointment_id));
        let to = checks.check(convert::parse_status("status", request.status).and_then(|s| match s {
            AppointmentStatus::Arrived
            | AppointmentStatus::CheckedIn
            | AppointmentStatus::Fulfilled
            | AppointmentStatus::Noshow
            | AppointmentStatus::EnteredInError => Ok(s),
            _ => Err(FieldViolation::new(
                "status",
                "STATUS_NOT_SETTABLE",
                "must be ARRIVED, CHECKED_IN, FULFILLED, NOSHOW or ENTERED_IN_ERROR; book, reschedule and cancel have their own calls",
            )),
        }));
        let reason = checks.check(convert::parse_optional_text("correction_reason", &request.correction_reason, 500));
        let (appointment_id, to, reason) = checks.finish((appointment_id, to, reason))?;
        let change = StatusChange {
            appointment_id,
            to,
            etag: (!request.etag.is_empty()).then_some(request.etag),
            correction_reason: Some(reason).filter(|r| !r.is_empty()),
            write: Write::unkeyed(&caller),
        };
        let scheduling = self.scheduling.clone();
        let appointment = run(async move { scheduling.change_status(change).await }).await?;
        let response = pb::UpdateAppointmentStatusResponse { appointment: Some(convert::appointment(&appointment)) };
        Ok(with_patients(Response::new(response), [appointment.patient_id.to_string()]))
    }

    async fn get_appointment(&self, request: Request<pb::GetAppointmentRequest>) -> Result<Response<pb::GetAppointmentResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let scheduling = self.scheduling.clone();
        let appointment = run(async move { scheduling.appointment(id, caller.scope()).await }).await?;
        let response = pb::GetAppointmentResponse { appointment: Some(convert::appointment(&appointment)) };
        Ok(with_patients(Response::new(response), [appointment.patient_id.to_string()]))
    }

    async fn list_appointments(
        &self,
        request: Request<pb::ListAppointmentsRequest>,
    ) -> Result<Response<pb::ListAppointmentsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let patient_id = checks.check(parse_optional_id("patient_id", &request.patient_id));
        let clinic_id = checks.check(parse_optional_id("clinic_id", &request.clinic_id));
        let day = checks.check(request.day.as_ref().map(|d| parse_date("day", d)).transpose());
        let statuses: Vec<&'static str> = request
            .statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| checks.check(convert::parse_status(&format!("statuses[{i}]"), *s)).map(|s| s.code()))
            .collect();
        let limit = checks.check(paging::page_size(request.page_size, 20, 100));
        let by = match (patient_id.flatten(), clinic_id.flatten(), day.flatten()) {
            (Some(patient), None, None) => Some(ListBy::Patient(patient)),
            (None, Some(clinic), Some(day)) => Some(ListBy::ClinicDay(clinic, day)),
            _ => {
                checks.push(FieldViolation::new("patient_id", "FILTER_REQUIRED", "set patient_id, or clinic_id with day"));
                None
            }
        };
        let (by, limit) = checks.finish((by, limit))?;
        let query = paging::fingerprint(&[&format!("{by:?}"), &statuses.join(",")]);
        let offset = paging::decode(&request.page_token, query)?.min(MAX_OFFSET);
        let scheduling = self.scheduling.clone();
        let appointments = run(async move {
            let scope = caller.scope();
            match by {
                ListBy::Patient(patient) => {
                    store::appointments_of_patient(&scheduling.pool, patient, &statuses, limit, offset, scope).await
                }
                ListBy::ClinicDay(clinic_id, day) => {
                    let clinic = scheduling.clinic(clinic_id).await?;
                    let (from, until) = local_day_window(clinic.zone(), day);
                    store::appointments_of_clinic(&scheduling.pool, clinic_id, from, until, &statuses, limit, offset, scope).await
                }
            }
        })
        .await?;
        let next = next_page(appointments.len(), limit, offset, query);
        let response =
            pb::ListAppointmentsResponse { appointments: appointments.iter().map(convert::appointment).collect(), next_page_token: next };
        Ok(with_patients(Response::new(response), appointments.iter().map(|a| a.patient_id.to_string())))
    }

    async fn add_to_waitlist(&self, request: Request<pb::AddToWaitlistRequest>) -> Result<Response<pb::AddToWaitlistResponse>, Status> {
        use pb::waitlist_entry::Target as T;
        let caller = self.caller(&request)?;
        let input = required("entry", request.get_ref().entry.as_ref())?;
        // For a service code the caller chooses (one of theirs); for a clinic it is the clinic's.
        let (organisation, requested) = match &input.target {
            Some(T::ServiceCode(_)) => (caller.owning_organisation("entry.organisation", &input.organisation)?, String::new()),
            _ => (String::new(), input.organisation.trim().to_uppercase()),
        };
        let write = Write::new(&caller, request.get_ref(), &request.get_ref().request_id)?;
        let mut checks = Checks::default();
        if !input.id.is_empty() {
            checks.push(FieldViolation::new("entry.id", "OUTPUT_ONLY", "is assigned by the service; leave it empty"));
        }
        let patient_id = checks.check(parse_id("entry.patient_id", &input.patient_id));
        let target = checks.check(match &input.target {
            Some(T::ClinicId(id)) => parse_id("entry.clinic_id", id).map(Target::Clinic),
            Some(T::ServiceCode(code)) => parse_service_code("entry.service_code", code).map(Target::Service),
            None => Err(FieldViolation::new("entry.target", "TARGET_REQUIRED", "set clinic_id or service_code")),
        });
        let earliest = checks.check(input.earliest_date.as_ref().map(|d| parse_date("entry.earliest_date", d)).transpose());
        let latest = checks.check(input.latest_date.as_ref().map(|d| parse_date("entry.latest_date", d)).transpose());
        if let (Some(Some(e)), Some(Some(l))) = (earliest, latest)
            && l < e
        {
            checks.push(FieldViolation::new("entry.latest_date", "WINDOW_INVALID", "must not be before earliest_date"));
        }
        let priority = checks.check(convert::parse_priority("entry.priority", input.priority));
        let breach_date = checks.check(input.breach_date.as_ref().map(|d| parse_date("entry.breach_date", d)).transpose());
        let referral_id = checks.check(parse_optional_id("entry.referral_id", &input.referral_id));
        let (patient_id, target, earliest, latest, priority, breach_date, referral_id) =
            checks.finish((patient_id, target, earliest, latest, priority, breach_date, referral_id))?;
        let entry = Entry {
            id: Uuid::now_v7(),
            patient_id,
            target,
            earliest_date: earliest,
            latest_date: latest,
            priority,
            breach_date,
            referral_id,
            added_at: pac_platform::now(),
            closed_at: None,
            organisation,
        };
        let scheduling = self.scheduling.clone();
        let response = run(async move { scheduling.add_to_waitlist(entry, &requested, write).await }).await?;
        let patient = response.entry.as_ref().map(|e| e.patient_id.clone());
        Ok(with_patients(Response::new(response), patient))
    }

    async fn list_waitlist(&self, request: Request<pb::ListWaitlistRequest>) -> Result<Response<pb::ListWaitlistResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let mut checks = Checks::default();
        let clinic_id = checks.check(parse_optional_id("clinic_id", &request.clinic_id)).flatten();
        let service_code = checks
            .check((!request.service_code.is_empty()).then(|| parse_service_code("service_code", &request.service_code)).transpose())
            .flatten();
        if clinic_id.is_some() == service_code.is_some() {
            checks.push(FieldViolation::new("clinic_id", "TARGET_REQUIRED", "set exactly one of clinic_id or service_code"));
        }
        let limit = checks.check(paging::page_size(request.page_size, 20, 100));
        let limit = checks.finish(limit)?;
        let query = paging::fingerprint(&[
            &clinic_id.map(|c| c.to_string()).unwrap_or_default(),
            service_code.as_deref().unwrap_or(""),
            if request.include_closed { "closed" } else { "open" },
        ]);
        let offset = paging::decode(&request.page_token, query)?.min(MAX_OFFSET);
        let scheduling = self.scheduling.clone();
        let include_closed = request.include_closed;
        let entries =
            run(async move { scheduling.list_waitlist(clinic_id, service_code, include_closed, limit, offset, caller.scope()).await })
                .await?;
        let next = next_page(entries.len(), limit, offset, query);
        let patients: Vec<String> = entries.iter().map(|e| e.patient_id.clone()).collect();
        Ok(with_patients(Response::new(pb::ListWaitlistResponse { entries, next_page_token: next }), patients))
    }

    async fn respond_to_offer(&self, request: Request<pb::RespondToOfferRequest>) -> Result<Response<pb::RespondToOfferResponse>, Status> {
        let write = self.write(&request, &request.get_ref().request_id)?;
        let offer_id = parse_id("offer_id", &request.get_ref().offer_id)?;
        let accept = request.get_ref().accept;
        let scheduling = self.scheduling.clone();
        let response = run(async move { scheduling.respond_to_offer(offer_id, accept, write).await }).await?;
        let patient = response.entry.as_ref().map(|e| e.patient_id.clone());
        Ok(with_patients(Response::new(response), patient))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(&self, request: Request<pb::WatchEventsRequest>) -> Result<Response<Self::WatchEventsStream>, Status> {
        let scope = self.caller(&request)?.scope().map(<[String]>::to_vec);
        let (outbox, pool) = (&self.scheduling.outbox, self.scheduling.pool.clone());
        let after = &request.get_ref().after_cursor;
        Ok(Response::new(outbox.watch_messages(pool, after, scope, self.poll_interval, self.shutdown.clone(), event_message)?))
    }
}

#[derive(Debug)]
enum ListBy {
    Patient(Uuid),
    ClinicDay(Uuid, chrono::NaiveDate),
}

fn next_page(returned: usize, limit: i64, offset: i64, query: [u8; 8]) -> String {
    let next = offset + limit;
    if returned as i64 == limit && next < MAX_OFFSET { paging::encode(next, query) } else { String::new() }
}

/// A window bound as the caller sent it (not as defaulted), for binding page tokens to their query:
/// a defaulted window moves with the clock between pages, and keyset paging makes that harmless.
fn requested(bound: &Option<prost_types::Timestamp>) -> String {
    bound.as_ref().map(|t| format!("{}.{}", t.seconds, t.nanos)).unwrap_or_default()
}

/// A time window from a request: `start` defaults to `default_start`, `end` to start + `default_length`.
fn window(
    checks: &mut Checks,
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
    default_start: DateTime<Utc>,
    default_length: Duration,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let from = start.and_then(|t| checks.check(parse_timestamp("start_time", t))).unwrap_or(default_start);
    let until = end.and_then(|t| checks.check(parse_timestamp("end_time", t))).unwrap_or(from + default_length);
    if until <= from {
        checks.push(FieldViolation::new("end_time", "WINDOW_INVALID", "must be after start_time"));
    } else if until - from > Duration::days(366) {
        checks.push(FieldViolation::new("end_time", "WINDOW_TOO_LONG", "the window can be at most 366 days"));
    }
    (from, until)
}

fn event_message(event: StoredEvent) -> Result<pb::WatchEventsResponse, ApiError> {
    let mut message: pb::WatchEventsResponse = outbox::stored_message(&event)?;
    message.envelope = Some(pac_platform::convert::envelope(&event));
    Ok(message)
}
