//! Loading many patients at once, for seeding a test, demonstration or benchmark database (`pac-load
//! seed patients`): each patient validated and stored as a registration stores it (the same parsing
//! of the demographics, the same search keys and name vocabulary), a thousand to a statement.
//!
//! What a registration does for its caller is left out: no duplicate check, no request id, and no
//! `PatientRegistered` event, so nothing that follows the records stream hears of a loaded patient
//! (the other services ask for a patient when they need it, as a booking's patient check does).
//! Records are loaded active: a merge is never loaded, only made by `MergePatients`.

use chrono::DateTime;
use pac_platform::error::FieldViolation;
use pac_proto::records as pb;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::convert::{self, Rules};
use crate::domain::demographics::{Email, OdsCode, Phone};
use crate::domain::nhs_number::NhsNumber;
use crate::domain::patient::PatientRecord;

/// Patients written by one statement (28 parameters each, well under Postgres's 65,535).
pub const PATIENTS_PER_STATEMENT: usize = 1_000;

/// The record a registration of `patient` for `organisation` would store, created `at`: the
/// demographics parsed and normalised as `RegisterPatient` parses them, a new id, version 1.
pub fn record(
    patient: &pb::Patient,
    organisation: &str,
    rules: Rules,
    at: DateTime<chrono::Utc>,
) -> Result<PatientRecord, Vec<FieldViolation>> {
    let demographics = convert::new_demographics(patient, rules)?;
    Ok(PatientRecord {
        id: Uuid::now_v7(),
        version: 1,
        demographics,
        organisation: organisation.to_string(),
        merged_into: None,
        created_at: at,
        updated_at: at,
    })
}

/// Stores `records` (with their local identifiers) in statements of [`PATIENTS_PER_STATEMENT`];
/// returns how many patients were stored. Each statement commits on its own, so a failure (an NHS
/// number or local identifier already held, a repeated id) leaves the statements before it loaded.
/// `pool`: the records service's own (`pac_records::connect`) or an administrator's.
pub async fn load_patients(pool: &PgPool, records: &[PatientRecord]) -> Result<u64, sqlx::Error> {
    let mut loaded = 0;
    for chunk in records.chunks(PATIENTS_PER_STATEMENT) {
        let mut statement = QueryBuilder::<Postgres>::new(
            "WITH patients AS (INSERT INTO records.patients (id, version, nhs_number, nhs_number_status, given_name, family_name, \
                 birth_date, sex, address_lines, locality, district, postcode, postcode_outward, country, phone, email, \
                 gp_practice_code, preferred_language, interpreter_needed, accessibility_needs, preferred_contact_method, \
                 consented_contact_methods, restricted, search_name, family_phonetic, created_at, updated_at, organisation) ",
        );
        statement.push_values(chunk, |mut row, record| {
            let d = &record.demographics;
            row.push_bind(record.id)
                .push_bind(record.version)
                .push_bind(d.nhs_number.as_ref().map(|n| NhsNumber::as_str(n).to_string()))
                .push_bind(i16::from(d.nhs_number_status.code()))
                .push_bind(d.given_name.as_str().to_string())
                .push_bind(d.family_name.as_str().to_string())
                .push_bind(d.birth_date)
                .push_bind(d.sex as i16)
                .push_bind(d.address.lines.clone())
                .push_bind(d.address.locality.clone())
                .push_bind(d.address.district.clone())
                .push_bind(d.address.postcode.clone())
                .push_bind(d.address.postcode_outward().map(str::to_string))
                .push_bind(d.address.country.clone())
                .push_bind(d.phone.as_ref().map(|p| Phone::as_str(p).to_string()))
                .push_bind(d.email.as_ref().map(|e| Email::as_str(e).to_string()))
                .push_bind(d.gp_practice_code.as_ref().map(|c| OdsCode::as_str(c).to_string()))
                .push_bind(d.preferred_language.clone())
                .push_bind(d.interpreter_needed)
                .push_bind(d.accessibility_needs.clone())
                .push_bind(d.contact_preferences.preferred as i16)
                .push_bind(d.contact_preferences.consented.iter().map(|m| *m as i16).collect::<Vec<_>>())
                .push_bind(d.restricted)
                .push_bind(d.search_name())
                .push_bind(d.match_profile().family_phonetic)
                .push_bind(record.created_at)
                .push_bind(record.updated_at)
                .push_bind(record.organisation.clone());
        });
        // The chunk's local identifiers in the same statement: a patient and its identifiers are
        // stored together or not at all.
        let (mut issuers, mut values, mut owners, mut organisations) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for record in chunk {
            for identifier in &record.demographics.local_identifiers {
                issuers.push(identifier.issuer.as_str().to_string());
                values.push(identifier.value.clone());
                owners.push(record.id);
                organisations.push(record.organisation.clone());
            }
        }
        statement
            .push(" RETURNING 1), identifiers AS (INSERT INTO records.local_identifiers (issuer, value, patient_id, organisation) SELECT * FROM unnest(")
            .push_bind(issuers)
            .push("::text[], ")
            .push_bind(values)
            .push("::text[], ")
            .push_bind(owners)
            .push("::uuid[], ")
            .push_bind(organisations)
            .push("::text[])) SELECT count(*) FROM patients");
        let stored: i64 = statement.build_query_scalar().fetch_one(pool).await?;
        loaded += stored as u64;
    }
    Ok(loaded)
}
