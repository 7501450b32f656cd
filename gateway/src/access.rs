//! `pac.access.v1.Access`, served by the gateway itself: answers composed from the services. Each
//! call to a service carries the caller's own signed context (so the services scope what it sees to
//! its organisations), the time left of the caller's deadline, and the trace.

use std::time::{Duration, Instant};

use chrono::Utc;
use pac_platform::caller::CALLER_HEADER;
use pac_platform::convert::parse_id;
use pac_platform::error::{ApiError, FieldViolation};
use pac_proto::access as pb;
use pac_proto::access::access_server::Access;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::referrals::referrals_client::ReferralsClient;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use pac_proto::{records, referrals as refs, scheduling as sched};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::guide;
use pac_platform::balance::Balanced;
use pac_platform::grpc::parse_grpc_timeout;

/// Past appointments a journey shows.
const PAST_SHOWN: usize = 20;
/// Appointments a journey reads at most (pages of 100).
const APPOINTMENT_PAGES: usize = 5;

#[derive(Clone)]
pub struct AccessService {
    records: PatientRecordsClient<Balanced>,
    scheduling: SchedulingClient<Balanced>,
    referrals: ReferralsClient<Balanced>,
    /// How long a booking waits for the referral to list its new appointment.
    link_wait: Duration,
}

/// What a call to a service carries from the caller's call.
struct Onward {
    caller: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    deadline: Option<Instant>,
}

impl Onward {
    fn of(metadata: &MetadataMap) -> Self {
        let timeout = metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        Self { caller: metadata.get(CALLER_HEADER).cloned(), deadline: timeout.map(|t| Instant::now() + t) }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(caller) = &self.caller {
            request.metadata_mut().insert(CALLER_HEADER, caller.clone());
        }
        if let Some(deadline) = self.deadline {
            request.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
        }
        pac_platform::telemetry::inject_context(request.metadata_mut());
        request
    }
}

impl AccessService {
    pub fn new(records: Balanced, scheduling: Balanced, referrals: Balanced, link_wait: Duration) -> Self {
        Self {
            records: PatientRecordsClient::new(records),
            scheduling: SchedulingClient::new(scheduling),
            referrals: ReferralsClient::new(referrals),
            link_wait,
        }
    }

    async fn referral(&self, onward: &Onward, id: &str) -> Result<refs::Referral, Status> {
        let response = self.referrals.clone().get_referral(onward.request(refs::GetReferralRequest { id: id.into() })).await?;
        response.into_inner().referral.ok_or_else(|| Status::internal("the referrals service answered without a referral"))
    }

    async fn appointments(&self, onward: &Onward, patient_id: &str) -> Result<Vec<sched::Appointment>, Status> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        for _ in 0..APPOINTMENT_PAGES {
            let request =
                sched::ListAppointmentsRequest { patient_id: patient_id.into(), page_size: 100, page_token, ..Default::default() };
            let page = self.scheduling.clone().list_appointments(onward.request(request)).await?.into_inner();
            all.extend(page.appointments);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        Ok(all)
    }

    async fn open_referrals(&self, onward: &Onward, patient_id: &str) -> Result<Vec<refs::Referral>, Status> {
        use refs::ReferralStatus as S;
        let request = refs::ListReferralsRequest {
            patient_id: patient_id.into(),
            statuses: [S::AwaitingTriage, S::AwaitingInformation, S::AwaitingBooking, S::Booked].map(|s| s as i32).to_vec(),
            page_size: 200,
            ..Default::default()
        };
        Ok(self.referrals.clone().list_referrals(onward.request(request)).await?.into_inner().referrals)
    }
}

fn id(field: &str, value: &str) -> Result<String, FieldViolation> {
    parse_id(field, value).map(|id| id.to_string())
}

fn invalid(violations: Vec<FieldViolation>) -> Status {
    ApiError::invalid(violations).into()
}

fn is_upcoming(appointment: &sched::Appointment) -> bool {
    use sched::AppointmentStatus as S;
    matches!(S::try_from(appointment.status), Ok(S::Proposed | S::Pending | S::Booked | S::CheckedIn | S::Arrived | S::Waitlist))
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn get_patient_journey(
        &self,
        request: Request<pb::GetPatientJourneyRequest>,
    ) -> Result<Response<pb::GetPatientJourneyResponse>, Status> {
        let onward = Onward::of(request.metadata());
        let patient_id = id("patient_id", &request.get_ref().patient_id).map_err(|v| invalid(vec![v]))?;
        let found = self.records.clone().get_patient(onward.request(records::GetPatientRequest { id: patient_id })).await?.into_inner();
        let patient = found.patient.ok_or_else(|| Status::internal("the records service answered without a patient"))?;
        let (referrals, appointments) =
            tokio::try_join!(self.open_referrals(&onward, &patient.id), self.appointments(&onward, &patient.id))?;
        let today = Utc::now();
        let referrals = referrals
            .into_iter()
            .map(|referral| pb::ReferralJourney { next_step: guide::next_step(&referral), referral: Some(referral) })
            .collect();
        let (upcoming, mut past): (Vec<_>, Vec<_>) = appointments
            .into_iter()
            .partition(|a| is_upcoming(a) && a.end_time.as_ref().is_none_or(|end| end.seconds >= today.timestamp()));
        past.reverse();
        past.truncate(PAST_SHOWN);
        let mut patients = vec![patient.id.clone()];
        patients.extend(Some(found.merged_from.clone()).filter(|m| !m.is_empty()));
        let response = pb::GetPatientJourneyResponse {
            patient: Some(patient),
            merged_from: found.merged_from,
            referrals,
            upcoming_appointments: upcoming,
            past_appointments: past,
        };
        Ok(pac_platform::audit::with_patients(Response::new(response), patients))
    }

    async fn book_referral_appointment(
        &self,
        request: Request<pb::BookReferralAppointmentRequest>,
    ) -> Result<Response<pb::BookReferralAppointmentResponse>, Status> {
        let onward = Onward::of(request.metadata());
        let request = request.into_inner();
        let checked = [id("referral_id", &request.referral_id), id("slot_id", &request.slot_id), id("request_id", &request.request_id)];
        let violations: Vec<FieldViolation> = checked.iter().filter_map(|c| c.clone().err()).collect();
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let [referral_id, slot_id, request_id] = checked.map(|c| c.expect("checked"));

        // The referral, as the caller may see it (another organisation's is NOT_FOUND), gives the
        // booking its patient. The scheduling service checks the rest before it books, in the
        // transaction that takes the place (`pac_platform::links`): the referral must be awaiting
        // booking or booked (else REFERRAL_NOT_BOOKABLE) and the slot a clinic of its service and
        // organisation (else REFERRAL_SERVICE_MISMATCH); nothing is written when it does not fit.
        let referral = self.referral(&onward, &referral_id).await?;
        // The booking names the referral: should the link below not be seen in time, the referrals
        // service still links it from scheduling's event stream (and cancels it, should the referral
        // have closed meanwhile), so a booking is never left beside an orphaned referral.
        let book = sched::BookAppointmentRequest {
            target: Some(sched::book_appointment_request::Target::SlotId(slot_id)),
            patient_id: referral.patient_id.clone(),
            referral_id: referral_id.clone(),
            request_id,
        };
        let appointment = self
            .scheduling
            .clone()
            .book_appointment(onward.request(book))
            .await?
            .into_inner()
            .appointment
            .ok_or_else(|| Status::internal("the scheduling service answered without an appointment"))?;

        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        let mut current = referral;
        let linked = loop {
            if current.appointment_ids.contains(&appointment.id) {
                break true;
            }
            if started.elapsed() >= self.link_wait {
                break false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
            current = self.referral(&onward, &referral_id).await?;
        };
        let patient = current.patient_id.clone();
        let response = pb::BookReferralAppointmentResponse { appointment: Some(appointment), referral: Some(current), linked };
        Ok(pac_platform::audit::with_patients(Response::new(response), [patient]))
    }

    async fn get_appointment_guide(
        &self,
        request: Request<pb::GetAppointmentGuideRequest>,
    ) -> Result<Response<pb::GetAppointmentGuideResponse>, Status> {
        let onward = Onward::of(request.metadata());
        let appointment_id = id("appointment_id", &request.get_ref().appointment_id).map_err(|v| invalid(vec![v]))?;
        let appointment = self
            .scheduling
            .clone()
            .get_appointment(onward.request(sched::GetAppointmentRequest { id: appointment_id }))
            .await?
            .into_inner()
            .appointment
            .ok_or_else(|| Status::internal("the scheduling service answered without an appointment"))?;
        let clinic = self
            .scheduling
            .clone()
            .get_clinic(onward.request(sched::GetClinicRequest { id: appointment.clinic_id.clone() }))
            .await?
            .into_inner();
        let guide = guide::appointment_guide(&appointment, clinic.clinic.as_ref(), clinic.location.as_ref(), Utc::now());
        let patient = appointment.patient_id.clone();
        let response = pb::GetAppointmentGuideResponse { appointment: Some(appointment), guide: Some(guide) };
        Ok(pac_platform::audit::with_patients(Response::new(response), [patient]))
    }
}
