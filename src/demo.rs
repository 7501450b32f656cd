//! The demo data set `pac dev` loads: a handful of patients, registered through the public API with
//! fixed request ids, so loading again changes nothing.

use std::net::SocketAddr;

use pac_proto::common::{Address, Date};
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::records::{Patient, RegisterPatientRequest};

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

pub async fn load(records: SocketAddr) -> anyhow::Result<()> {
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
            ..Default::default()
        };
        let request =
            RegisterPatientRequest { patient: Some(patient), request_id: format!("demo-patient-{n}"), allow_possible_duplicate: true };
        client.register_patient(request).await?;
    }
    tracing::info!(patients = PATIENTS.len(), "demo data loaded");
    Ok(())
}
