//! Patient (UK Core) from the records service's patient: the NHS number with its verification
//! status extension, hospital numbers, name, gender, birth date, address, telecom, GP practice,
//! and the link to the record it replaced or was replaced by in a merge.

use pac_proto::records as pb;
use serde::Serialize;

pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const VERIFICATION_EXTENSION: &str = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus";
pub const VERIFICATION_SYSTEM: &str = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland";
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// Hospital numbers: one system per issuing organisation (its ODS code appended).
pub const LOCAL_SYSTEM_PREFIX: &str = "urn:pac:local-identifier:";

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    resource_type: &'static str,
    id: String,
    meta: Meta,
    identifier: Vec<Identifier>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    name: Vec<HumanName>,
    gender: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    birth_date: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    address: Vec<Address>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    telecom: Vec<ContactPoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    general_practitioner: Vec<Reference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    link: Vec<Link>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub version_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

#[derive(Serialize, Debug)]
struct Identifier {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extension: Vec<Extension>,
    system: String,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    assigner: Option<Box<Reference>>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Extension {
    url: &'static str,
    value_codeable_concept: CodeableConcept,
}

#[derive(Serialize, Debug)]
struct CodeableConcept {
    coding: Vec<Coding>,
}

#[derive(Serialize, Debug)]
struct Coding {
    system: &'static str,
    code: String,
    display: &'static str,
}

#[derive(Serialize, Debug)]
struct HumanName {
    #[serde(rename = "use")]
    kind: &'static str,
    family: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    given: Vec<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Address {
    #[serde(rename = "use")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    line: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    city: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    district: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    postal_code: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    country: String,
}

#[derive(Serialize, Debug)]
struct ContactPoint {
    system: &'static str,
    value: String,
    #[serde(rename = "use")]
    kind: &'static str,
}

#[derive(Serialize, Debug)]
pub struct Reference {
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identifier: Option<OdsIdentifier>,
}

#[derive(Serialize, Debug)]
struct OdsIdentifier {
    system: &'static str,
    value: String,
}

#[derive(Serialize, Debug)]
struct Link {
    other: Reference,
    #[serde(rename = "type")]
    kind: &'static str,
}

fn ods(code: &str) -> Reference {
    Reference { reference: None, identifier: Some(OdsIdentifier { system: ODS_SYSTEM, value: code.to_string() }) }
}

fn verification_display(code: i32) -> &'static str {
    match code {
        1 => "Number present and verified",
        2 => "Number present but not traced",
        3 => "Trace required",
        4 => "Trace attempted - No match or multiple match found",
        5 => "Trace needs to be resolved - (NHS number or patient detail conflict)",
        6 => "Trace in progress",
        7 => "Number not present and trace not required",
        _ => "Trace postponed (baby under six weeks old)",
    }
}

/// The FHIR Patient for `patient`; `replaces` is the id of a record merged into it that was asked
/// for (a read by a merged-away id answers with the surviving record).
pub fn from_record(patient: &pb::Patient, replaces: &str) -> Patient {
    let mut identifier = Vec::new();
    if !patient.nhs_number.is_empty() {
        let extension = (1..=8).contains(&patient.nhs_number_status).then(|| Extension {
            url: VERIFICATION_EXTENSION,
            value_codeable_concept: CodeableConcept {
                coding: vec![Coding {
                    system: VERIFICATION_SYSTEM,
                    code: format!("{:02}", patient.nhs_number_status),
                    display: verification_display(patient.nhs_number_status),
                }],
            },
        });
        identifier.push(Identifier {
            extension: extension.into_iter().collect(),
            system: NHS_NUMBER_SYSTEM.into(),
            value: patient.nhs_number.clone(),
            assigner: None,
        });
    }
    for local in &patient.local_identifiers {
        identifier.push(Identifier {
            extension: Vec::new(),
            system: format!("{LOCAL_SYSTEM_PREFIX}{}", local.issuer),
            value: local.value.clone(),
            assigner: Some(Box::new(ods(&local.issuer))),
        });
    }
    let given: Vec<String> = patient.given_name.split_whitespace().map(str::to_string).collect();
    let name = (!patient.family_name.is_empty() || !given.is_empty())
        .then(|| HumanName { kind: "official", family: patient.family_name.clone(), given })
        .into_iter()
        .collect();
    let gender = match patient.sex() {
        pb::Sex::Male => "male",
        pb::Sex::Female => "female",
        pb::Sex::Other => "other",
        _ => "unknown",
    };
    let address = patient
        .address
        .as_ref()
        .filter(|a| !a.lines.is_empty() || !a.postcode.is_empty() || !a.locality.is_empty())
        .map(|a| Address {
            kind: "home",
            line: a.lines.clone(),
            city: a.locality.clone(),
            district: a.district.clone(),
            postal_code: a.postcode.clone(),
            country: if a.country.is_empty() { "GB".into() } else { a.country.clone() },
        })
        .into_iter()
        .collect();
    let mut telecom = Vec::new();
    if !patient.phone.is_empty() {
        telecom.push(ContactPoint { system: "phone", value: patient.phone.clone(), kind: "home" });
    }
    if !patient.email.is_empty() {
        telecom.push(ContactPoint { system: "email", value: patient.email.clone(), kind: "home" });
    }
    let mut link = Vec::new();
    if !patient.merged_into.is_empty() {
        link.push(Link { other: reference(&patient.merged_into), kind: "replaced-by" });
    }
    if !replaces.is_empty() {
        link.push(Link { other: reference(replaces), kind: "replaces" });
    }
    Patient {
        resource_type: "Patient",
        id: patient.id.clone(),
        meta: Meta { version_id: patient.etag.clone(), last_updated: patient.update_time.as_ref().and_then(super::instant) },
        identifier,
        name,
        gender,
        birth_date: patient.birth_date.as_ref().map(|d| format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)),
        address,
        telecom,
        general_practitioner: (!patient.gp_practice_code.is_empty()).then(|| ods(&patient.gp_practice_code)).into_iter().collect(),
        link,
    }
}

fn reference(id: &str) -> Reference {
    Reference { reference: Some(format!("Patient/{id}")), identifier: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uk_core_patient() {
        let record = pb::Patient {
            id: "p1".into(),
            etag: "3".into(),
            nhs_number: "9434765919".into(),
            nhs_number_status: 1,
            local_identifiers: vec![pb::LocalIdentifier { issuer: "RR8".into(), value: "K1".into() }],
            given_name: "Seán Patrick".into(),
            family_name: "O'Brien".into(),
            birth_date: Some(pac_proto::common::Date { year: 1980, month: 1, day: 31 }),
            sex: pb::Sex::Male as i32,
            gp_practice_code: "B86001".into(),
            merged_into: "p0".into(),
            ..Default::default()
        };
        let json = serde_json::to_value(from_record(&record, "")).unwrap();
        assert_eq!(json["identifier"][0]["system"], NHS_NUMBER_SYSTEM);
        assert_eq!(json["identifier"][0]["extension"][0]["url"], VERIFICATION_EXTENSION);
        assert_eq!(json["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"], "01");
        assert_eq!(json["identifier"][1]["system"], "urn:pac:local-identifier:RR8");
        assert_eq!(json["name"][0]["given"], serde_json::json!(["Seán", "Patrick"]));
        assert_eq!((json["gender"].as_str(), json["birthDate"].as_str()), (Some("male"), Some("1980-01-31")));
        assert_eq!(json["generalPractitioner"][0]["identifier"]["value"], "B86001");
        assert_eq!(json["link"][0]["type"], "replaced-by");
        assert_eq!(json["meta"]["versionId"], "3");
    }
}
