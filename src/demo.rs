//! The demo data set `pac dev` loads: a handful of patients, registered through the public API with
//! fixed request ids, so loading again changes nothing.

use std::net::SocketAddr;

use pac_proto::common::{Address, Date};
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::records::{Patient, RegisterPatientRequest};
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;

struct DemoPatient {
    nhs_number: &'static str,
    given: &'static str,
    family: &'static str,
    birth: (i32, i32, i32),
    sex: i32,
    postcode: &'static str,
    phone: &'static str,
}

const PATIENTS: &[DemoPatient] = &[
    DemoPatient {
        nhs_number: "9434765919",
        given: "John",
        family: "Smith",
        birth: (1970, 3, 14),
        sex: 1,
        postcode: "LS1 4AP",
        phone: "07700 900001",
    },
    DemoPatient {
        nhs_number: "9000000009",
        given: "Amira",
        family: "Hassan",
        birth: (1988, 7, 2),
        sex: 2,
        postcode: "M1 1AE",
        phone: "07700 900002",
    },
    DemoPatient {
        nhs_number: "9449305552",
        given: "Gareth",
        family: "Evans",
        birth: (1956, 11, 30),
        sex: 1,
        postcode: "CF10 1EP",
        phone: "07700 900003",
    },
    DemoPatient {
        nhs_number: "9912003888",
        given: "Priya",
        family: "Patel",
        birth: (2001, 5, 5),
        sex: 2,
        postcode: "B33 8TH",
        phone: "07700 900004",
    },
    DemoPatient { nhs_number: "", given: "Joan", family: "Smyth", birth: (1949, 1, 20), sex: 2, postcode: "LS6 2AA", phone: "" },
];

/// Loads the demo patients, then (once) a hospital site with two clinics and their weekly sessions,
/// then the referral services and a referral for each of two patients.
pub async fn load(records: SocketAddr, scheduling: SocketAddr, referrals: SocketAddr) -> anyhow::Result<()> {
    let patients = load_patients(records).await?;
    load_clinics(scheduling).await?;
    load_referrals(referrals, &patients).await
}

/// Registers the demo patients; their ids, in order.
async fn load_patients(records: SocketAddr) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut client = PatientRecordsClient::connect(format!("http://{records}")).await?;
    for (n, p) in PATIENTS.iter().enumerate() {
        let patient = Patient {
            nhs_number: p.nhs_number.into(),
            given_name: p.given.into(),
            family_name: p.family.into(),
            birth_date: Some(Date { year: p.birth.0, month: p.birth.1, day: p.birth.2 }),
            sex: p.sex,
            address: Some(Address { postcode: p.postcode.into(), ..Default::default() }),
            phone: p.phone.into(),
            organisation: pac_gateway::DEVELOPMENT_ORGANISATION.into(),
            ..Default::default()
        };
        let request =
            RegisterPatientRequest { patient: Some(patient), request_id: format!("demo-patient-{n}"), allow_possible_duplicate: true };
        ids.push(client.register_patient(request).await?.into_inner().patient.unwrap_or_default().id);
    }
    tracing::info!(patients = PATIENTS.len(), "demo data loaded");
    Ok(ids)
}

/// (name, specialty, service code, weekdays, start hour, end hour, slot minutes, capacity)
type Clinic = (&'static str, &'static str, &'static str, &'static [i32], i32, i32, i32, i32);
const CLINICS: &[Clinic] = &[
    ("Fracture clinic", "Trauma and orthopaedics", "TO-FRACTURE", &[1, 3, 5], 9, 12, 20, 1),
    ("General dermatology", "Dermatology", "DERM-GENERAL", &[2, 4], 13, 17, 30, 2),
];

async fn load_clinics(scheduling: SocketAddr) -> anyhow::Result<()> {
    let mut client = SchedulingClient::connect(format!("http://{scheduling}")).await?;
    let existing = client.list_clinics(sched::ListClinicsRequest { service_code: "TO-FRACTURE".into(), ..Default::default() }).await?;
    if !existing.into_inner().clinics.is_empty() {
        return Ok(());
    }
    let location = client
        .create_location(sched::CreateLocationRequest {
            location: Some(sched::Location {
                name: "Leeds General Infirmary".into(),
                address: Some(Address {
                    lines: vec!["Great George Street".into()],
                    locality: "Leeds".into(),
                    postcode: "LS1 3EX".into(),
                    ..Default::default()
                }),
                directions: "Enter by the Jubilee Wing on Calverley Street; outpatients is on the ground floor, follow the yellow signs."
                    .into(),
                access_notes: vec!["Step-free access from Calverley Street".into(), "Hearing loop at outpatients reception".into()],
                parking: "Multi-storey car park on Clarendon Way; blue badge bays by the Jubilee Wing entrance.".into(),
                ..Default::default()
            }),
            request_id: "demo-location-0".into(),
        })
        .await?
        .into_inner()
        .location
        .unwrap_or_default();
    let today = chrono::Utc::now().date_naive();
    for (n, (name, specialty, code, days, start, end, minutes, capacity)) in CLINICS.iter().enumerate() {
        let clinic = client
            .create_clinic(sched::CreateClinicRequest {
                clinic: Some(sched::Clinic {
                    organisation: pac_gateway::DEVELOPMENT_ORGANISATION.into(),
                    location_id: location.id.clone(),
                    name: name.to_string(),
                    specialty: specialty.to_string(),
                    service_code: code.to_string(),
                    time_zone: "Europe/London".into(),
                    what_to_bring: vec!["A list of the medicines you take".into(), "Your appointment letter".into()],
                    ..Default::default()
                }),
                request_id: format!("demo-clinic-{n}"),
            })
            .await?
            .into_inner()
            .clinic
            .unwrap_or_default();
        for day in *days {
            client
                .create_session_template(sched::CreateSessionTemplateRequest {
                    session_template: Some(sched::SessionTemplate {
                        clinic_id: clinic.id.clone(),
                        weekday: *day,
                        start: Some(sched::LocalTime { hours: *start, minutes: 0 }),
                        end: Some(sched::LocalTime { hours: *end, minutes: 0 }),
                        slot_minutes: *minutes,
                        capacity: *capacity,
                        valid_from: Some(Date {
                            year: chrono::Datelike::year(&today),
                            month: chrono::Datelike::month(&today) as i32,
                            day: chrono::Datelike::day(&today) as i32,
                        }),
                        ..Default::default()
                    }),
                    request_id: format!("demo-session-{n}-{day}"),
                })
                .await?;
        }
    }
    tracing::info!(clinics = CLINICS.len(), "demo clinics loaded");
    Ok(())
}

async fn load_referrals(referrals: SocketAddr, patients: &[String]) -> anyhow::Result<()> {
    use pac_proto::referrals as refs;
    let mut client = refs::referrals_client::ReferralsClient::connect(format!("http://{referrals}")).await?;
    let any_triage = |status: refs::ReferralStatus, days| refs::StuckThreshold { status: status as i32, priority: 0, working_days: days };
    let services = [
        refs::Service {
            organisation: pac_gateway::DEVELOPMENT_ORGANISATION.into(),
            code: "TO-FRACTURE".into(),
            name: "Fracture clinic".into(),
            specialty: "Trauma and orthopaedics".into(),
            rules: Some(refs::EligibilityRules {
                min_age: Some(16),
                sources: vec!["GP".into(), "A&E".into(), "MIU".into()],
                required_information: vec!["X-ray report".into()],
                ..Default::default()
            }),
            accepted_priorities: vec![refs::Priority::Routine as i32, refs::Priority::Urgent as i32],
            target_wait_days: 14,
            stuck_thresholds: vec![
                any_triage(refs::ReferralStatus::AwaitingTriage, 2),
                any_triage(refs::ReferralStatus::AwaitingBooking, 5),
            ],
            later_dna_policy: refs::LaterDnaPolicy::Discharge as i32,
            ..Default::default()
        },
        refs::Service {
            organisation: pac_gateway::DEVELOPMENT_ORGANISATION.into(),
            code: "DERM-GENERAL".into(),
            name: "General dermatology".into(),
            specialty: "Dermatology".into(),
            rules: Some(refs::EligibilityRules { sources: vec!["GP".into()], ..Default::default() }),
            target_wait_days: 84,
            stuck_thresholds: vec![
                refs::StuckThreshold {
                    status: refs::ReferralStatus::AwaitingTriage as i32,
                    priority: refs::Priority::TwoWeekWait as i32,
                    working_days: 2,
                },
                any_triage(refs::ReferralStatus::AwaitingTriage, 10),
            ],
            later_dna_policy: refs::LaterDnaPolicy::Rebook as i32,
            ..Default::default()
        },
    ];
    for (n, service) in services.into_iter().enumerate() {
        match client.create_service(refs::CreateServiceRequest { service: Some(service), request_id: format!("demo-service-{n}") }).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) => return Err(status.into()),
        }
    }
    let referrer = refs::Referrer { organisation: "B86001".into(), clinician: "Dr A Jones".into() };
    let demo = [
        (0, "TO-FRACTURE", refs::Priority::Urgent, "A&E", "Suspected scaphoid fracture after a fall", vec!["X-ray report".to_string()]),
        (3, "DERM-GENERAL", refs::Priority::TwoWeekWait, "GP", "Changing pigmented lesion on the left forearm", vec![]),
    ];
    for (n, (patient, service, priority, source, reason, information)) in demo.into_iter().enumerate() {
        let Some(patient_id) = patients.get(patient) else { continue };
        client
            .create_referral(refs::CreateReferralRequest {
                patient_id: patient_id.clone(),
                service_code: service.into(),
                priority: priority as i32,
                referrer: Some(referrer.clone()),
                source: source.into(),
                reason: reason.into(),
                information,
                request_id: format!("demo-referral-{n}"),
                ..Default::default()
            })
            .await?;
    }
    tracing::info!("demo referral services and referrals loaded");
    Ok(())
}
