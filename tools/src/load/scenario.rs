//! What the load does: the scenarios, the operations they are made of, and the data they need,
//! made through the API at the start of a run (so any deployment will do) or given by the caller.
//!
//! Every run works on data of its own, marked with a run tag: patients it registers, a clinic
//! directory and referral service `LOAD-<tag>` (or an existing service's clinics, `--service-code`),
//! referrals of its patients. Bookings take distinct free slots, and calls in flight at once are
//! for distinct patients.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{Datelike, Utc};
use clap::ValueEnum;
use futures::StreamExt;
use pac_proto::access as access_pb;
use pac_proto::common::Date;
use pac_proto::records as records_pb;
use pac_proto::referrals as referrals_pb;
use pac_proto::scheduling as sched;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::stats::Stats;
use super::target::Target;
use crate::credentials::Credential;
use crate::people::{self, Rng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// BookAppointment: each on a free slot of its own, calls in flight for distinct patients.
    Book,
    /// SearchPatients by name, name and birth date, phone or district.
    SearchPatients,
    /// GetPatient by id.
    GetPatient,
    /// RegisterPatient of new, distinct people.
    Register,
    /// SearchSlots by clinic or service code, first page.
    SearchSlots,
    /// ListReferrals: the coordinators' worklists.
    Worklist,
    /// GetPatientJourney (the gateway's composite view; through the gateway only).
    Journey,
    /// A patient access team's day, weighted: searches and look-ups, slot searches, bookings (some
    /// for referrals), reschedules, cancellations, registrations, new referrals, triage,
    /// worklists, notes.
    CoordinatorsDay,
}

impl Scenario {
    pub fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    }

    /// The operations and their weights.
    fn mix(self) -> Vec<(Op, u32)> {
        match self {
            Self::Book => vec![(Op::Book, 1)],
            Self::SearchPatients => vec![(Op::SearchPatients, 1)],
            Self::GetPatient => vec![(Op::GetPatient, 1)],
            Self::Register => vec![(Op::Register, 1)],
            Self::SearchSlots => vec![(Op::SearchSlots, 1)],
            Self::Worklist => vec![(Op::Worklist, 1)],
            Self::Journey => vec![(Op::Journey, 1)],
            Self::CoordinatorsDay => vec![
                (Op::SearchPatients, 16),
                (Op::GetPatient, 10),
                (Op::Journey, 8),
                (Op::SearchSlots, 14),
                (Op::Book, 7),
                (Op::BookReferral, 4),
                (Op::Reschedule, 3),
                (Op::Cancel, 2),
                (Op::GetAppointment, 4),
                (Op::Register, 5),
                (Op::Refer, 4),
                (Op::Triage, 4),
                (Op::Worklist, 12),
                (Op::AddNote, 3),
            ],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    SearchPatients,
    GetPatient,
    Journey,
    SearchSlots,
    Book,
    BookReferral,
    Reschedule,
    Cancel,
    GetAppointment,
    Register,
    Refer,
    Triage,
    Worklist,
    AddNote,
}

const REGISTER: &str = "/pac.records.v1.PatientRecords/RegisterPatient";
const GET_PATIENT: &str = "/pac.records.v1.PatientRecords/GetPatient";
const SEARCH_PATIENTS: &str = "/pac.records.v1.PatientRecords/SearchPatients";
const SEARCH_SLOTS: &str = "/pac.scheduling.v1.Scheduling/SearchSlots";
const BOOK: &str = "/pac.scheduling.v1.Scheduling/BookAppointment";
const RESCHEDULE: &str = "/pac.scheduling.v1.Scheduling/RescheduleAppointment";
const CANCEL: &str = "/pac.scheduling.v1.Scheduling/CancelAppointment";
const GET_APPOINTMENT: &str = "/pac.scheduling.v1.Scheduling/GetAppointment";
const LIST_REFERRALS: &str = "/pac.referrals.v1.Referrals/ListReferrals";
const CREATE_REFERRAL: &str = "/pac.referrals.v1.Referrals/CreateReferral";
const TRIAGE: &str = "/pac.referrals.v1.Referrals/TriageReferral";
const ADD_NOTE: &str = "/pac.referrals.v1.Referrals/AddNote";
const JOURNEY: &str = "/pac.access.v1.Access/GetPatientJourney";
const BOOK_REFERRAL: &str = "/pac.access.v1.Access/BookReferralAppointment";

/// How much data a run makes at its start.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Patients registered (the bookings' and searches' population).
    pub patients: usize,
    /// Free slots gathered for bookings and reschedules.
    pub slots: usize,
    /// Referrals made (half accepted when a clinician can triage).
    pub referrals: usize,
    /// Use the existing clinics (and referral service) of this code instead of making a directory.
    pub service_code: Option<String>,
    /// The organisation the directory and referral service are made for.
    pub organisation: String,
    /// Length of the made clinics' slots.
    pub slot_minutes: i32,
    /// Deadline of each call.
    pub timeout: Duration,
}

/// A registered patient, as the searches look for them.
#[derive(Clone, Debug)]
pub struct Person {
    pub id: String,
    pub given: String,
    pub family: String,
    pub birth_date: Date,
    pub phone: String,
    pub postcode: String,
}

#[derive(Clone, Debug)]
struct Booked {
    appointment_id: String,
    etag: String,
}

/// The run's data and the state its operations share.
pub struct World {
    pub tag: String,
    mix: Vec<(Op, u32)>,
    pub patients: Vec<Person>,
    pub service_code: String,
    pub clinics: Vec<String>,
    free_slots: Mutex<VecDeque<String>>,
    booked: Mutex<VecDeque<Booked>>,
    awaiting_triage: Mutex<VecDeque<(String, String)>>,
    accepted: Mutex<VecDeque<(String, String)>>,
    referral_ids: Mutex<Vec<String>>,
    next_patient: AtomicUsize,
    next_person: AtomicU64,
    timeout: Duration,
}

/// Made at setup, for the report.
#[derive(Debug, Default, serde::Serialize)]
pub struct Made {
    pub tag: String,
    pub patients: usize,
    pub clinics: usize,
    pub free_slots: usize,
    pub referrals_awaiting_triage: usize,
    pub referrals_accepted: usize,
    pub service_code: String,
    pub seconds: f64,
}

impl World {
    /// A world over data given rather than made (the benchmark seeds its own).
    pub fn given(scenario: Scenario, tag: String, patients: Vec<Person>, slots: Vec<String>, timeout: Duration) -> Self {
        Self::empty(scenario, tag, patients, slots, timeout)
    }

    fn empty(scenario: Scenario, tag: String, patients: Vec<Person>, slots: Vec<String>, timeout: Duration) -> Self {
        Self {
            tag,
            mix: scenario.mix(),
            patients,
            service_code: String::new(),
            clinics: Vec::new(),
            free_slots: Mutex::new(slots.into()),
            booked: Mutex::default(),
            awaiting_triage: Mutex::default(),
            accepted: Mutex::default(),
            referral_ids: Mutex::default(),
            next_patient: AtomicUsize::new(0),
            next_person: AtomicU64::new(0),
            timeout,
        }
    }

    pub fn made(&self) -> Made {
        Made {
            tag: self.tag.clone(),
            patients: self.patients.len(),
            clinics: self.clinics.len(),
            free_slots: self.free_slots.lock().expect("slots").len(),
            referrals_awaiting_triage: self.awaiting_triage.lock().expect("referrals").len(),
            referrals_accepted: self.accepted.lock().expect("referrals").len(),
            service_code: self.service_code.clone(),
            seconds: 0.0,
        }
    }

    /// Makes what `scenario` needs through `target`'s APIs, as `plan` says.
    pub async fn make(scenario: Scenario, target: &Target, plan: &Plan) -> anyhow::Result<Self> {
        let tag = format!("{:06X}", (Utc::now().timestamp_micros() as u64).wrapping_mul(0x9e37_79b9) % 0xFF_FFFF);
        let needs_patients = !matches!(scenario, Scenario::Register | Scenario::SearchSlots);
        let needs_directory = matches!(scenario, Scenario::Book | Scenario::SearchSlots | Scenario::Worklist | Scenario::CoordinatorsDay);
        let needs_slots = matches!(scenario, Scenario::Book | Scenario::CoordinatorsDay);
        let needs_referrals = matches!(scenario, Scenario::Worklist | Scenario::CoordinatorsDay);
        if scenario == Scenario::Journey && !target.through_gateway {
            bail!("the journey scenario calls the gateway's own API: give --gateway");
        }
        if needs_patients && !target.has_records() {
            bail!("the {} scenario needs the records service: give --records (or --gateway)", scenario.name());
        }
        if needs_referrals && !target.has_referrals() {
            bail!("the {} scenario needs the referrals service: give --referrals (or --gateway)", scenario.name());
        }
        let mut world = Self::empty(scenario, tag.clone(), Vec::new(), Vec::new(), plan.timeout);
        if needs_patients {
            world.patients = register_patients(target, &tag, plan.patients.max(1), plan.timeout).await?;
            eprintln!("setup: {} patients registered", world.patients.len());
        }
        if needs_directory {
            let (code, clinics) = directory(target, &tag, plan).await?;
            world.service_code = code;
            world.clinics = clinics;
            eprintln!("setup: {} clinics of service {}", world.clinics.len(), world.service_code);
        }
        if needs_slots {
            let slots = gather_slots(target, &mut world, &tag, plan).await?;
            eprintln!("setup: {} free slots gathered", slots.len());
            *world.free_slots.lock().expect("slots") = slots.into();
        }
        if needs_referrals {
            make_referrals(target, &world, plan).await?;
            eprintln!(
                "setup: {} referrals awaiting triage, {} accepted",
                world.awaiting_triage.lock().expect("referrals").len(),
                world.accepted.lock().expect("referrals").len()
            );
        }
        // Leave out what this caller cannot do. (Straight to the services, a journey is a
        // GetPatient and a referral's booking a BookAppointment naming the referral.)
        world.mix.retain(|(op, _)| *op != Op::Triage || target.callers.clinician.is_some());
        Ok(world)
    }

    fn request<T>(&self, credential: &Credential, message: T) -> Request<T> {
        let mut request = credential.request(message);
        request.set_timeout(self.timeout);
        request
    }

    fn take_slot(&self) -> Option<String> {
        self.free_slots.lock().expect("slots").pop_front()
    }

    /// The next patient in turn: consecutive operations (and so calls in flight at once) are for
    /// distinct patients, and a patient's slots come one clinic-round apart in time.
    fn next_patient(&self) -> &Person {
        &self.patients[self.next_patient.fetch_add(1, Ordering::Relaxed) % self.patients.len()]
    }

    fn patient(&self, n: u64) -> &Person {
        &self.patients[(Rng(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).next() % self.patients.len() as u64) as usize]
    }

    fn pick(&self, n: u64) -> Op {
        let total: u32 = self.mix.iter().map(|(_, w)| w).sum();
        let mut roll = (Rng(n.wrapping_add(0x5eed).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1).next() % u64::from(total.max(1))) as u32;
        for (op, weight) in &self.mix {
            if roll < *weight {
                return *op;
            }
            roll -= weight;
        }
        self.mix[0].0
    }

    /// Operation `n`, due at `due`: one call, chosen by the scenario's mix, recorded in `stats`.
    pub async fn operate(&self, target: &Target, stats: &Stats, n: u64, due: Instant) {
        let op = self.pick(n);
        self.perform(op, target, stats, n, due).await
    }

    async fn perform(&self, op: Op, target: &Target, stats: &Stats, n: u64, due: Instant) {
        let coordinator = target.callers.coordinator_for(n);
        match op {
            Op::SearchPatients => {
                let person = self.patient(n);
                let request = match n % 4 {
                    0 => records_pb::SearchPatientsRequest { name: format!("{} {}", person.given, person.family), ..Default::default() },
                    1 => records_pb::SearchPatientsRequest {
                        name: person.family.clone(),
                        birth_date: Some(person.birth_date),
                        ..Default::default()
                    },
                    2 => records_pb::SearchPatientsRequest { phone: person.phone.clone(), ..Default::default() },
                    _ => records_pb::SearchPatientsRequest { postcode: person.postcode.clone(), page_size: 10, ..Default::default() },
                };
                timed(stats, SEARCH_PATIENTS, due, target.records().search_patients(self.request(coordinator, request))).await;
            }
            Op::GetPatient => {
                let request = records_pb::GetPatientRequest { id: self.patient(n).id.clone() };
                timed(stats, GET_PATIENT, due, target.records().get_patient(self.request(coordinator, request))).await;
            }
            Op::Journey => match target.access() {
                Some(mut access) => {
                    let request = access_pb::GetPatientJourneyRequest { patient_id: self.patient(n).id.clone() };
                    timed(stats, JOURNEY, due, access.get_patient_journey(self.request(coordinator, request))).await;
                }
                None => Box::pin(self.perform(Op::GetPatient, target, stats, n, due)).await,
            },
            Op::SearchSlots => {
                use sched::search_slots_request::Target as By;
                let by = if n.is_multiple_of(2) || self.clinics.is_empty() {
                    By::ServiceCode(self.service_code.clone())
                } else {
                    By::ClinicId(self.clinics[(n / 2) as usize % self.clinics.len()].clone())
                };
                let request = sched::SearchSlotsRequest { target: Some(by), page_size: 20, ..Default::default() };
                timed(stats, SEARCH_SLOTS, due, target.scheduling().search_slots(self.request(coordinator, request))).await;
            }
            Op::Book => {
                let Some(slot) = self.take_slot() else { return stats.not_sent("no free slot left (raise --slots)") };
                let request = sched::BookAppointmentRequest {
                    target: Some(sched::book_appointment_request::Target::SlotId(slot.clone())),
                    patient_id: self.next_patient().id.clone(),
                    referral_id: String::new(),
                    request_id: format!("load-{}-b{n}", self.tag),
                };
                let booked = timed_result(stats, BOOK, due, target.scheduling().book_appointment(self.request(coordinator, request))).await;
                self.booked_or_refused(booked.map(|b| b.appointment), slot);
            }
            Op::BookReferral => {
                let Some((referral_id, patient_id)) = self.accepted.lock().expect("referrals").pop_front() else {
                    return Box::pin(self.perform(Op::Book, target, stats, n, due)).await;
                };
                let Some(slot) = self.take_slot() else { return stats.not_sent("no free slot left (raise --slots)") };
                // The gateway's own API takes a UUID as request id.
                let request_id = uuid::Uuid::now_v7().to_string();
                let appointment = match target.access() {
                    Some(mut access) => {
                        let request = access_pb::BookReferralAppointmentRequest { referral_id, slot_id: slot.clone(), request_id };
                        timed_result(stats, BOOK_REFERRAL, due, access.book_referral_appointment(self.request(coordinator, request)))
                            .await
                            .map(|r| r.appointment)
                    }
                    None => {
                        let request = sched::BookAppointmentRequest {
                            target: Some(sched::book_appointment_request::Target::SlotId(slot.clone())),
                            patient_id,
                            referral_id,
                            request_id,
                        };
                        timed_result(stats, BOOK, due, target.scheduling().book_appointment(self.request(coordinator, request)))
                            .await
                            .map(|r| r.appointment)
                    }
                };
                self.booked_or_refused(appointment, slot);
            }
            Op::Reschedule => {
                let Some(booked) = self.booked.lock().expect("booked").pop_front() else {
                    return Box::pin(self.perform(Op::SearchSlots, target, stats, n, due)).await;
                };
                let Some(slot) = self.take_slot() else {
                    self.booked.lock().expect("booked").push_back(booked);
                    return stats.not_sent("no free slot left (raise --slots)");
                };
                let request = sched::RescheduleAppointmentRequest {
                    appointment_id: booked.appointment_id.clone(),
                    new_slot_id: slot,
                    etag: booked.etag.clone(),
                    reason: "The patient asked for another day".into(),
                    request_id: format!("load-{}-m{n}", self.tag),
                };
                let moved =
                    timed(stats, RESCHEDULE, due, target.scheduling().reschedule_appointment(self.request(coordinator, request))).await;
                match moved.and_then(|m| m.appointment) {
                    Some(appointment) => self.keep(Some(appointment)),
                    None => self.booked.lock().expect("booked").push_back(booked),
                }
            }
            Op::Cancel => {
                let Some(booked) = self.booked.lock().expect("booked").pop_front() else {
                    return Box::pin(self.perform(Op::SearchSlots, target, stats, n, due)).await;
                };
                let request = sched::CancelAppointmentRequest {
                    appointment_id: booked.appointment_id,
                    reason_code: "PATIENT_REQUEST".into(),
                    cancelled_by: sched::CancelledBy::Patient as i32,
                    etag: booked.etag,
                    request_id: format!("load-{}-c{n}", self.tag),
                };
                timed(stats, CANCEL, due, target.scheduling().cancel_appointment(self.request(coordinator, request))).await;
            }
            Op::GetAppointment => {
                let appointment = self.booked.lock().expect("booked").iter().nth((n % 64) as usize).map(|b| b.appointment_id.clone());
                let Some(id) = appointment else { return Box::pin(self.perform(Op::SearchSlots, target, stats, n, due)).await };
                let request = sched::GetAppointmentRequest { id };
                timed(stats, GET_APPOINTMENT, due, target.scheduling().get_appointment(self.request(coordinator, request))).await;
            }
            Op::Register => {
                let seq = self.next_person.fetch_add(1, Ordering::Relaxed);
                let request = records_pb::RegisterPatientRequest {
                    patient: Some(people::distinct_person(person_seq(&self.tag, 1 << 22 | seq))),
                    request_id: format!("load-{}-n{seq}", self.tag),
                    allow_possible_duplicate: true,
                };
                timed(stats, REGISTER, due, target.records().register_patient(self.request(coordinator, request))).await;
            }
            Op::Refer => {
                let person = self.patient(n);
                let request = referral_request(&person.id, &self.service_code, n);
                let made = timed(stats, CREATE_REFERRAL, due, target.referrals().create_referral(self.request(coordinator, request))).await;
                if let Some(referral) = made.and_then(|m| m.referral) {
                    self.referral_ids.lock().expect("referrals").push(referral.id.clone());
                    self.awaiting_triage.lock().expect("referrals").push_back((referral.id, referral.etag));
                }
            }
            Op::Triage => {
                let (Some(clinician), Some((id, etag))) =
                    (&target.callers.clinician, self.awaiting_triage.lock().expect("referrals").pop_front())
                else {
                    return Box::pin(self.perform(Op::Worklist, target, stats, n, due)).await;
                };
                let request = accept(id, etag);
                let triaged = timed(stats, TRIAGE, due, target.referrals().triage_referral(self.request(clinician, request))).await;
                if let Some(referral) = triaged.and_then(|t| t.referral) {
                    self.accepted.lock().expect("referrals").push_back((referral.id, referral.patient_id));
                }
            }
            Op::Worklist => {
                use referrals_pb::ReferralStatus as S;
                let request = match n % 4 {
                    0 => worklist(vec![S::AwaitingTriage], &self.service_code),
                    1 => worklist(vec![S::AwaitingBooking], &self.service_code),
                    2 => referrals_pb::ListReferralsRequest { breaching_within_days: Some(30), ..worklist(vec![], "") },
                    _ => worklist(vec![S::AwaitingBooking], ""),
                };
                timed(stats, LIST_REFERRALS, due, target.referrals().list_referrals(self.request(coordinator, request))).await;
            }
            Op::AddNote => {
                let referral = {
                    let ids = self.referral_ids.lock().expect("referrals");
                    (!ids.is_empty()).then(|| ids[(n % ids.len() as u64) as usize].clone())
                };
                let Some(referral_id) = referral else { return Box::pin(self.perform(Op::Worklist, target, stats, n, due)).await };
                let request = referrals_pb::AddNoteRequest {
                    referral_id,
                    note: Some(referrals_pb::Note { text: "Left a message for the patient to call back".into(), ..Default::default() }),
                    request_id: format!("load-{}-a{n}", self.tag),
                };
                timed(stats, ADD_NOTE, due, target.referrals().add_note(self.request(coordinator, request))).await;
            }
        }
    }

    /// A booking's outcome: the appointment kept; or, refused for anything but the slot itself
    /// (a limit, a deadline), the slot given back for a later booking.
    fn booked_or_refused(&self, outcome: Result<Option<sched::Appointment>, tonic::Code>, slot: String) {
        match outcome {
            Ok(appointment) => self.keep(appointment),
            Err(tonic::Code::FailedPrecondition) => {}
            Err(_) => self.free_slots.lock().expect("slots").push_back(slot),
        }
    }

    /// A new or moved appointment, for later reschedules, cancellations and look-ups.
    fn keep(&self, appointment: Option<sched::Appointment>) {
        if let Some(appointment) = appointment {
            let mut booked = self.booked.lock().expect("booked");
            booked.push_back(Booked { appointment_id: appointment.id, etag: appointment.etag });
            // Enough to draw on; the rest stay booked.
            if booked.len() > 10_000 {
                booked.pop_front();
            }
        }
    }
}

/// One call, timed from `due`, recorded in `stats`; its answer when it succeeded.
async fn timed<T>(stats: &Stats, rpc: &'static str, due: Instant, call: impl Future<Output = Result<Response<T>, Status>>) -> Option<T> {
    let result = call.await;
    stats.record(rpc, &result, due.elapsed());
    result.ok().map(Response::into_inner)
}

/// As [`timed`], with the failure's status code.
async fn timed_result<T>(
    stats: &Stats,
    rpc: &'static str,
    due: Instant,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, tonic::Code> {
    let result = call.await;
    stats.record(rpc, &result, due.elapsed());
    result.map(Response::into_inner).map_err(|status| status.code())
}

/// The sequence number `distinct_person` spells run `tag`'s person `n` from.
fn person_seq(tag: &str, n: u64) -> u64 {
    (u64::from_str_radix(tag, 16).unwrap_or(0) << 32) | n
}

fn worklist(statuses: Vec<referrals_pb::ReferralStatus>, service_code: &str) -> referrals_pb::ListReferralsRequest {
    referrals_pb::ListReferralsRequest {
        statuses: statuses.into_iter().map(|s| s as i32).collect(),
        service_code: service_code.to_string(),
        page_size: 50,
        ..Default::default()
    }
}

fn referral_request(patient_id: &str, service_code: &str, n: u64) -> referrals_pb::CreateReferralRequest {
    use referrals_pb::Priority as P;
    referrals_pb::CreateReferralRequest {
        patient_id: patient_id.to_string(),
        service_code: service_code.to_string(),
        priority: [P::Routine, P::Routine, P::Routine, P::Urgent, P::TwoWeekWait][(n % 5) as usize] as i32,
        referrer: Some(referrals_pb::Referrer { organisation: "B86001".into(), clinician: "Dr Load".into() }),
        source: "GP".into(),
        reason: "Referred for assessment".into(),
        ..Default::default()
    }
}

fn accept(referral_id: String, etag: String) -> referrals_pb::TriageReferralRequest {
    referrals_pb::TriageReferralRequest {
        referral_id,
        etag,
        decision: Some(referrals_pb::triage_referral_request::Decision::Accept(referrals_pb::Accept {})),
        request_id: String::new(),
    }
}

/// Up to this many setup calls at once.
const SETUP_IN_FLIGHT: usize = 16;

/// A setup call, made again while the gateway asks the caller to wait (its rate limit), after the
/// wait its `RetryInfo` gives, as a well-behaved client does; for up to a minute.
async fn patiently<T, F, Fut>(mut call: F) -> Result<Response<T>, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Response<T>, Status>>,
{
    use tonic_types::StatusExt;
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Err(status) if status.code() == tonic::Code::ResourceExhausted && Instant::now() < give_up => {
                let wait = status.get_error_details().retry_info().and_then(|r| r.retry_delay).unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
            }
            other => return other,
        }
    }
}

/// Registers `count` distinct patients of the run (the coordinator's organisation's).
async fn register_patients(target: &Target, tag: &str, count: usize, timeout: Duration) -> anyhow::Result<Vec<Person>> {
    let (family, given) = people::names();
    let registered = futures::stream::iter(0..count)
        .map(|i| {
            let (records, coordinator) = (target.records(), target.callers.coordinator_for(i as u64).clone());
            let mut rng = Rng((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from_str_radix(tag, 16).unwrap_or(1) | 1);
            let i = i as u64;
            // Common names (as real ones are), a birth date, a district and a phone of their own.
            let mut patient = people::searchable_person(i, &family, &given, &mut rng);
            patient.phone = format!("+447{:03}{:06}", person_seq(tag, 0) >> 32 & 0x3ff, i % 1_000_000);
            async move {
                let made = patiently(|| {
                    let mut request = coordinator.request(records_pb::RegisterPatientRequest {
                        patient: Some(patient.clone()),
                        request_id: format!("load-{tag}-p{i}"),
                        allow_possible_duplicate: true,
                    });
                    request.set_timeout(timeout);
                    let mut records = records.clone();
                    async move { records.register_patient(request).await }
                })
                .await
                .map_err(|s| anyhow::anyhow!("registering a patient: {}", describe(&s)))?;
                let id = made.into_inner().patient.map(|p| p.id).unwrap_or_default();
                Ok::<_, anyhow::Error>(Person {
                    id,
                    given: patient.given_name,
                    family: patient.family_name,
                    birth_date: patient.birth_date.unwrap_or_default(),
                    phone: patient.phone,
                    postcode: patient.address.map(|a| a.postcode.split(' ').next().unwrap_or("").to_string()).unwrap_or_default(),
                })
            }
        })
        .buffered(SETUP_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    registered.into_iter().collect()
}

fn describe(status: &Status) -> String {
    use tonic_types::StatusExt;
    let reason = status.get_error_details().error_info().map(|i| format!(" ({})", i.reason)).unwrap_or_default();
    format!("{}{reason}: {}", super::stats::code_name(status.code()), status.message())
}

fn admin(target: &Target, what: &str) -> anyhow::Result<Credential> {
    target.callers.admin.clone().with_context(|| {
        format!("{what} needs an administrator: give --admin-token (or --dev-tokens against a development gateway), or use existing clinics with --service-code")
    })
}

/// The clinics the load books in: `plan.service_code`'s existing ones, or a new clinic directory
/// and referral service `LOAD-<tag>` (more clinics are added while gathering slots, as needed).
async fn directory(target: &Target, tag: &str, plan: &Plan) -> anyhow::Result<(String, Vec<String>)> {
    if let Some(code) = &plan.service_code {
        let mut clinics = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = sched::ListClinicsRequest { service_code: code.clone(), page_size: 100, page_token, ..Default::default() };
            let page = target
                .scheduling()
                .list_clinics(target.callers.coordinator().request(request))
                .await
                .map_err(|s| anyhow::anyhow!("listing the clinics of {code}: {}", describe(&s)))?
                .into_inner();
            clinics.extend(page.clinics.into_iter().map(|c| c.id));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        anyhow::ensure!(!clinics.is_empty(), "no clinic offers service {code}");
        return Ok((code.clone(), clinics));
    }
    let code = format!("LOAD-{tag}");
    let admin = admin(target, "making a clinic directory")?;
    if target.has_referrals() {
        let service = referrals_pb::Service {
            code: code.clone(),
            name: format!("Load test service {tag}"),
            specialty: "General".into(),
            target_wait_days: 42,
            later_dna_policy: referrals_pb::LaterDnaPolicy::Rebook as i32,
            organisation: plan.organisation.clone(),
            ..Default::default()
        };
        let request = referrals_pb::CreateServiceRequest { service: Some(service), request_id: format!("load-{tag}-service") };
        target
            .referrals()
            .create_service(admin.request(request))
            .await
            .map_err(|s| anyhow::anyhow!("creating referral service {code}: {}", describe(&s)))?;
    }
    let location = sched::Location { name: format!("Load test site {tag}"), ..Default::default() };
    let request = sched::CreateLocationRequest { location: Some(location), request_id: format!("load-{tag}-location") };
    let location = target
        .scheduling()
        .create_location(admin.request(request))
        .await
        .map_err(|s| anyhow::anyhow!("creating a location: {}", describe(&s)))?
        .into_inner()
        .location
        .unwrap_or_default();
    let clinic = add_clinic(target, &admin, tag, &code, &location.id, 0, plan).await?;
    Ok((code, vec![clinic]))
}

/// A clinic of service `code` at `location`, open every day 07:00-21:00 in slots of
/// `plan.slot_minutes`, one place each, from today.
async fn add_clinic(
    target: &Target,
    admin: &Credential,
    tag: &str,
    code: &str,
    location: &str,
    n: usize,
    plan: &Plan,
) -> anyhow::Result<String> {
    let clinic = sched::Clinic {
        location_id: location.to_string(),
        name: format!("Load test clinic {tag}-{n}"),
        specialty: "General".into(),
        service_code: code.to_string(),
        time_zone: "Europe/London".into(),
        organisation: plan.organisation.clone(),
        ..Default::default()
    };
    let request = sched::CreateClinicRequest { clinic: Some(clinic), request_id: format!("load-{tag}-clinic-{n}") };
    let clinic = target
        .scheduling()
        .create_clinic(admin.request(request))
        .await
        .map_err(|s| anyhow::anyhow!("creating a clinic: {}", describe(&s)))?
        .into_inner()
        .clinic
        .unwrap_or_default();
    let today = Utc::now().date_naive();
    for weekday in 1..=7 {
        let template = sched::SessionTemplate {
            clinic_id: clinic.id.clone(),
            weekday,
            start: Some(sched::LocalTime { hours: 7, minutes: 0 }),
            end: Some(sched::LocalTime { hours: 21, minutes: 0 }),
            slot_minutes: plan.slot_minutes,
            capacity: 1,
            valid_from: Some(Date { year: today.year(), month: today.month() as i32, day: today.day() as i32 }),
            ..Default::default()
        };
        let request = sched::CreateSessionTemplateRequest {
            session_template: Some(template),
            request_id: format!("load-{tag}-clinic-{n}-day-{weekday}"),
        };
        target
            .scheduling()
            .create_session_template(admin.request(request))
            .await
            .map_err(|s| anyhow::anyhow!("creating a session: {}", describe(&s)))?;
    }
    Ok(clinic.id)
}

/// Free slots of the world's clinics, soonest first and clinics taking turns, until there are
/// `plan.slots`; adds clinics while there are too few (when the run made the directory).
async fn gather_slots(target: &Target, world: &mut World, tag: &str, plan: &Plan) -> anyhow::Result<Vec<String>> {
    let mut per_clinic: Vec<Vec<(i64, String)>> = Vec::new();
    let mut gathered = 0;
    let mut location = None;
    let mut checked = 0;
    loop {
        while checked < world.clinics.len() && gathered < plan.slots {
            let slots = free_slots_of(target, &world.clinics[checked], plan.slots - gathered).await?;
            gathered += slots.len();
            per_clinic.push(slots);
            checked += 1;
        }
        if gathered >= plan.slots || plan.service_code.is_some() || world.clinics.len() >= 500 {
            break;
        }
        // More places are needed: another clinic at the same site.
        let admin = admin(target, "adding a clinic")?;
        let site = match &location {
            Some(site) => site,
            None => {
                let request = sched::GetClinicRequest { id: world.clinics[0].clone() };
                let clinic = target.scheduling().get_clinic(admin.request(request)).await?.into_inner();
                location.insert(clinic.clinic.unwrap_or_default().location_id)
            }
        };
        let n = world.clinics.len();
        let clinic = add_clinic(target, &admin, tag, &world.service_code, site, n, plan).await?;
        world.clinics.push(clinic);
    }
    // Soonest first, clinics taking turns at the same time.
    let mut all: Vec<(i64, usize, String)> =
        per_clinic.into_iter().enumerate().flat_map(|(c, slots)| slots.into_iter().map(move |(at, id)| (at, c, id))).collect();
    all.sort();
    Ok(all.into_iter().map(|(_, _, id)| id).collect())
}

/// Up to `wanted` free slots of a clinic over the next year, soonest first, with their starts.
async fn free_slots_of(target: &Target, clinic: &str, wanted: usize) -> anyhow::Result<Vec<(i64, String)>> {
    let now = Utc::now();
    let mut slots = Vec::new();
    let mut page_token = String::new();
    while slots.len() < wanted {
        let request = sched::SearchSlotsRequest {
            target: Some(sched::search_slots_request::Target::ClinicId(clinic.to_string())),
            start_time: Some(pac_platform::convert::timestamp(now + chrono::Duration::minutes(10))),
            end_time: Some(pac_platform::convert::timestamp(now + chrono::Duration::days(365))),
            page_size: 100,
            page_token,
            ..Default::default()
        };
        let page = target
            .scheduling()
            .search_slots(target.callers.coordinator().request(request))
            .await
            .map_err(|s| anyhow::anyhow!("searching a clinic's slots: {}", describe(&s)))?
            .into_inner();
        slots.extend(page.slots.into_iter().map(|s| (s.start_time.map(|t| t.seconds).unwrap_or_default(), s.id)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    slots.truncate(wanted);
    Ok(slots)
}

/// `plan.referrals` referrals of the world's patients to its service; every other one accepted
/// when a clinician can triage.
async fn make_referrals(target: &Target, world: &World, plan: &Plan) -> anyhow::Result<()> {
    let clinician = target.callers.clinician.clone();
    let made = futures::stream::iter(0..plan.referrals)
        .map(|i| {
            let (referrals, coordinator, clinician) =
                (target.referrals(), target.callers.coordinator_for(i as u64).clone(), clinician.clone());
            let request = referral_request(&world.patients[i % world.patients.len()].id, &world.service_code, i as u64);
            async move {
                let referral = patiently(|| {
                    let (mut referrals, request) = (referrals.clone(), coordinator.request(request.clone()));
                    async move { referrals.create_referral(request).await }
                })
                .await
                .map_err(|s| anyhow::anyhow!("creating a referral: {}", describe(&s)))?
                .into_inner()
                .referral
                .unwrap_or_default();
                if let Some(clinician) = clinician.filter(|_| i % 2 == 0) {
                    let triaged = patiently(|| {
                        let (mut referrals, request) =
                            (referrals.clone(), clinician.request(accept(referral.id.clone(), referral.etag.clone())));
                        async move { referrals.triage_referral(request).await }
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("accepting a referral: {}", describe(&s)))?
                    .into_inner()
                    .referral
                    .unwrap_or_default();
                    return Ok::<_, anyhow::Error>((triaged, true));
                }
                Ok((referral, false))
            }
        })
        .buffered(SETUP_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    for result in made {
        let (referral, accepted) = result?;
        world.referral_ids.lock().expect("referrals").push(referral.id.clone());
        if accepted {
            world.accepted.lock().expect("referrals").push_back((referral.id, referral.patient_id));
        } else {
            world.awaiting_triage.lock().expect("referrals").push_back((referral.id, referral.etag));
        }
    }
    Ok(())
}
