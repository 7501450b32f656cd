//! Patient (UK Core) from the records service's patient: the NHS number with its verification
//! status extension, hospital numbers, name, gender, birth date, address, telecom, GP practice,
//! and the link to the record it replaced or was replaced by in a merge.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use pac_proto::records as pb;
use serde::{Deserialize, Serialize};

use super::outcome::Failure;
use super::rest::{
    checked_id, condition, count, date, entry, first, if_match, next_link, parameters, query, searchset, updated, with_etag, with_location,
};
use super::{Api, json};

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
    #[serde(skip_serializing_if = "Option::is_none")]
    managing_organization: Option<Reference>,
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
        .filter(|a| {
            !a.lines.is_empty() || !a.postcode.is_empty() || !a.locality.is_empty() || !a.district.is_empty() || !a.country.is_empty()
        })
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
        managing_organization: (!patient.organisation.is_empty()).then(|| ods(&patient.organisation)),
        link,
    }
}

fn reference(id: &str) -> Reference {
    Reference { reference: Some(format!("Patient/{id}")), identifier: None }
}

/// What `POST Patient` and `PUT Patient/{id}` read of a UK Core Patient. Elements the platform does
/// not keep are refused by name rather than dropped; `id`, `meta`, `text` and `link` (output only)
/// are read past.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatientInput {
    resource_type: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    #[allow(dead_code)]
    meta: serde::de::IgnoredAny,
    #[serde(default)]
    #[allow(dead_code)]
    text: serde::de::IgnoredAny,
    #[serde(default)]
    #[allow(dead_code)]
    link: serde::de::IgnoredAny,
    #[serde(default)]
    identifier: Vec<IdentifierInput>,
    #[serde(default)]
    name: Vec<NameInput>,
    #[serde(default)]
    gender: String,
    #[serde(default)]
    birth_date: String,
    #[serde(default)]
    address: Vec<AddressInput>,
    #[serde(default)]
    telecom: Vec<ContactPointInput>,
    #[serde(default)]
    general_practitioner: Vec<ReferenceInput>,
    #[serde(default)]
    managing_organization: Option<ReferenceInput>,
}

#[derive(Deserialize, Debug, Default)]
struct IdentifierInput {
    #[serde(default)]
    extension: Vec<ExtensionInput>,
    #[serde(default)]
    system: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct ExtensionInput {
    #[serde(default)]
    url: String,
    #[serde(default)]
    value_codeable_concept: Option<ConceptInput>,
}

#[derive(Deserialize, Debug)]
struct ConceptInput {
    #[serde(default)]
    coding: Vec<CodingInput>,
}

#[derive(Deserialize, Debug)]
struct CodingInput {
    #[serde(default)]
    system: String,
    #[serde(default)]
    code: String,
}

#[derive(Deserialize, Debug)]
struct NameInput {
    #[serde(default, rename = "use")]
    kind: String,
    #[serde(default)]
    family: String,
    #[serde(default)]
    given: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct AddressInput {
    #[serde(default, rename = "use")]
    kind: String,
    #[serde(default)]
    line: Vec<String>,
    #[serde(default)]
    city: String,
    #[serde(default)]
    district: String,
    #[serde(default)]
    postal_code: String,
    #[serde(default)]
    country: String,
}

#[derive(Deserialize, Debug)]
struct ContactPointInput {
    #[serde(default)]
    system: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize, Debug)]
struct ReferenceInput {
    #[serde(default)]
    identifier: Option<IdentifierInput>,
}

/// `body` read as a Patient.
pub fn input(body: &[u8]) -> Result<PatientInput, Failure> {
    let input: PatientInput = serde_json::from_slice(body)
        .map_err(|e| Failure::invalid(format!("the body is not a Patient this API takes: {e}"), Some("Patient")))?;
    if input.resource_type != "Patient" {
        return Err(Failure::invalid("the body is not a Patient", Some("Patient.resourceType")));
    }
    Ok(input)
}

/// An ODS code from a reference by identifier.
fn ods_code(reference: &ReferenceInput, field: &str) -> Result<String, Failure> {
    match &reference.identifier {
        Some(id) if id.system == ODS_SYSTEM && !id.value.trim().is_empty() => Ok(id.value.trim().to_string()),
        _ => Err(Failure::invalid(format!("{field} is named by an identifier of {ODS_SYSTEM}"), Some(field))),
    }
}

/// The platform's patient for `input`: what the records service validates further (NHS number
/// check digit, postcode, phone) is passed on as given.
pub fn to_record(input: &PatientInput) -> Result<pb::Patient, Failure> {
    let mut patient = pb::Patient::default();
    for identifier in &input.identifier {
        let value = identifier.value.trim().to_string();
        if identifier.system == NHS_NUMBER_SYSTEM {
            if !patient.nhs_number.is_empty() {
                return Err(Failure::invalid("one NHS number a patient", Some("Patient.identifier")));
            }
            patient.nhs_number = value;
            let status = identifier
                .extension
                .iter()
                .filter(|e| e.url == VERIFICATION_EXTENSION)
                .flat_map(|e| e.value_codeable_concept.iter().flat_map(|c| &c.coding))
                .find(|c| c.system == VERIFICATION_SYSTEM);
            if let Some(coding) = status {
                patient.nhs_number_status = coding.code.parse::<i32>().ok().filter(|n| (1..=8).contains(n)).ok_or_else(|| {
                    Failure::invalid("the NHS number verification status is a code 01 to 08", Some("Patient.identifier.extension"))
                })?;
            }
        } else if let Some(issuer) = identifier.system.strip_prefix(LOCAL_SYSTEM_PREFIX).filter(|i| !i.is_empty()) {
            patient.local_identifiers.push(pb::LocalIdentifier { issuer: issuer.to_string(), value });
        } else {
            return Err(Failure::invalid(
                format!("identifier system must be {NHS_NUMBER_SYSTEM} or {LOCAL_SYSTEM_PREFIX}<ODS code>"),
                Some("Patient.identifier"),
            ));
        }
    }
    if let Some(name) = input.name.iter().find(|n| n.kind == "official").or(input.name.first()) {
        patient.family_name = name.family.clone();
        patient.given_name = name.given.join(" ");
    }
    patient.sex = match input.gender.as_str() {
        "male" => pb::Sex::Male,
        "female" => pb::Sex::Female,
        "other" => pb::Sex::Other,
        "unknown" => pb::Sex::Unknown,
        "" => pb::Sex::Unspecified,
        _ => return Err(Failure::invalid("gender is male, female, other or unknown", Some("Patient.gender"))),
    } as i32;
    if !input.birth_date.is_empty() {
        patient.birth_date =
            Some(date(&input.birth_date).ok_or_else(|| Failure::invalid("birthDate is a date, YYYY-MM-DD", Some("Patient.birthDate")))?);
    }
    if let Some(address) = input.address.iter().find(|a| a.kind == "home").or(input.address.first()) {
        patient.address = Some(pac_proto::common::Address {
            lines: address.line.clone(),
            locality: address.city.clone(),
            district: address.district.clone(),
            postcode: address.postal_code.clone(),
            country: if address.country == "GB" { String::new() } else { address.country.clone() },
        });
    }
    for contact in &input.telecom {
        match contact.system.as_str() {
            "phone" | "sms" if patient.phone.is_empty() => patient.phone = contact.value.clone(),
            "email" if patient.email.is_empty() => patient.email = contact.value.clone(),
            "phone" | "sms" | "email" => {}
            _ => return Err(Failure::invalid("telecom is a phone number or an email address", Some("Patient.telecom"))),
        }
    }
    if let Some(gp) = input.general_practitioner.first() {
        patient.gp_practice_code = ods_code(gp, "Patient.generalPractitioner")?;
    }
    if let Some(organisation) = &input.managing_organization {
        patient.organisation = ods_code(organisation, "Patient.managingOrganization")?;
    }
    Ok(patient)
}

/// The fields of `patient` an update through FHIR may change: its contact details.
pub const CONTACT_FIELDS: [&str; 3] = ["address", "phone", "email"];

/// Whether `wanted` differs from `current` in anything but contact details (the only change
/// `PUT`/`PATCH Patient` makes), naming the first difference.
pub fn other_change(current: &pb::Patient, wanted: &pb::Patient) -> Option<&'static str> {
    // An unrecorded sex is read out as `unknown`.
    let known = |sex: i32| if sex == pb::Sex::Unspecified as i32 { pb::Sex::Unknown as i32 } else { sex };
    let mut current_locals = current.local_identifiers.clone();
    let mut wanted_locals = wanted.local_identifiers.clone();
    current_locals.sort_by(|a, b| (&a.issuer, &a.value).cmp(&(&b.issuer, &b.value)));
    wanted_locals.sort_by(|a, b| (&a.issuer, &a.value).cmp(&(&b.issuer, &b.value)));
    [
        (current.nhs_number != wanted.nhs_number, "identifier (NHS number)"),
        (current.nhs_number_status != wanted.nhs_number_status && wanted.nhs_number_status != 0, "identifier (verification status)"),
        (current_locals != wanted_locals, "identifier (hospital numbers)"),
        (current.family_name != wanted.family_name || current.given_name != wanted.given_name, "name"),
        (known(current.sex) != known(wanted.sex), "gender"),
        (current.birth_date != wanted.birth_date, "birthDate"),
        (current.gp_practice_code != wanted.gp_practice_code, "generalPractitioner"),
        (!wanted.organisation.is_empty() && current.organisation != wanted.organisation, "managingOrganization"),
    ]
    .into_iter()
    .find_map(|(differs, what)| differs.then_some(what))
}

// The interactions.

pub(super) async fn read(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    checked_id(&id, "Patient")?;
    let (gateway, call) = api.caller(&headers);
    let (record, merged_from) = gateway.read_patient(&id, &call).await?;
    Ok(with_etag(json(StatusCode::OK, &from_record(&record, &merged_from)), &record.etag))
}

/// The parameters Patient search takes; any other is refused (400), never ignored.
const SEARCH: &[&str] = &["identifier", "family", "given", "birthdate", "address-postalcode", "_count", "_page_token"];

pub(super) async fn search(State(api): State<Api>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Result<Response, Failure> {
    let pairs = parameters(query(raw)?, SEARCH, &[])?;
    let birth_date = match first(&pairs, "birthdate") {
        None => None,
        Some(text) => {
            Some(date(text).ok_or_else(|| Failure::invalid("birthdate must be a date, YYYY-MM-DD (equality only)", Some("birthdate")))?)
        }
    };
    let (gateway, call) = api.caller(&headers);
    let (found, next) = match first(&pairs, "identifier") {
        Some(token) => {
            count(&pairs)?;
            if first(&pairs, "_page_token").is_some() {
                return Err(Failure::invalid("a search by identifier finds one patient, in one page", Some("_page_token")));
            }
            let identifier = identifier(token)?;
            let found = gateway.lookup(&identifier, &call).await?.map(|(p, _)| p);
            // Combined with the other parameters: the one found must meet them too.
            (found.into_iter().filter(|p| meets(p, &pairs, birth_date.as_ref())).collect(), String::new())
        }
        None => {
            let name = [first(&pairs, "given"), first(&pairs, "family")].into_iter().flatten().collect::<Vec<_>>().join(" ");
            let postcode = first(&pairs, "address-postalcode").unwrap_or_default().to_string();
            if name.is_empty() && postcode.is_empty() && birth_date.is_none() {
                return Err(Failure::invalid("search by identifier, family, given, birthdate or address-postalcode", None));
            }
            let page_token = first(&pairs, "_page_token").unwrap_or_default().to_string();
            let request =
                pb::SearchPatientsRequest { name, birth_date, postcode, page_size: count(&pairs)?, page_token, ..Default::default() };
            gateway.search_patients(request, &call).await?
        }
    };
    let entries: Vec<serde_json::Value> =
        found.iter().map(|p| entry(serde_json::to_value(from_record(p, "")).unwrap_or_default(), "match")).collect();
    Ok(json(StatusCode::OK, &searchset(entries, next_link("Patient", &pairs, &next))))
}

/// `system|value` (or a bare value, taken as an NHS number).
pub(super) fn identifier(token: &str) -> Result<crate::adt::Identifier, Failure> {
    let (system, value) = token.split_once('|').unwrap_or((NHS_NUMBER_SYSTEM, token));
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(Failure::invalid("identifier needs a value", Some("identifier")));
    }
    if system == NHS_NUMBER_SYSTEM || system.is_empty() {
        return Ok(crate::adt::Identifier::Nhs(value));
    }
    match system.strip_prefix(LOCAL_SYSTEM_PREFIX) {
        Some(issuer) if !issuer.is_empty() => Ok(crate::adt::Identifier::Local(pb::LocalIdentifier { issuer: issuer.to_string(), value })),
        _ => Err(Failure::invalid(
            format!("identifier system must be {} or {}<ODS code>", NHS_NUMBER_SYSTEM, LOCAL_SYSTEM_PREFIX),
            Some("identifier"),
        )),
    }
}

/// Whether `patient` meets the name, birth date and postcode parameters.
fn meets(patient: &pb::Patient, pairs: &[(String, String)], birth_date: Option<&pac_proto::common::Date>) -> bool {
    let starts = |field: &str, wanted: Option<&str>| wanted.is_none_or(|w| field.to_lowercase().starts_with(&w.to_lowercase()));
    let postcode = patient.address.as_ref().map(|a| a.postcode.replace(' ', "").to_uppercase()).unwrap_or_default();
    starts(&patient.family_name, first(pairs, "family"))
        && starts(&patient.given_name, first(pairs, "given"))
        && birth_date.is_none_or(|d| patient.birth_date.as_ref() == Some(d))
        && first(pairs, "address-postalcode").is_none_or(|p| postcode.starts_with(&p.replace(' ', "").to_uppercase()))
}

/// A new Patient, unless `If-None-Exist` (`identifier=<system>|<value>`) finds one: then that one
/// (200) and nothing is registered. Idempotent on `X-Request-Id`.
pub(super) async fn create(State(api): State<Api>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, Failure> {
    let input = input(&body)?;
    let record = to_record(&input)?;
    let (gateway, call) = api.caller(&headers);
    if let Some(condition) = condition(&headers, &["identifier"])? {
        let token = first(&condition, "identifier").unwrap_or_default();
        if let Some((found, _)) = gateway.lookup(&identifier(token)?, &call).await? {
            return Ok(with_etag(json(StatusCode::OK, &from_record(&found, "")), &found.etag));
        }
    }
    let registered = gateway.register(record, false, &call).await?;
    let response = with_etag(json(StatusCode::CREATED, &from_record(&registered, "")), &registered.etag);
    Ok(with_location(response, &format!("Patient/{}", registered.id)))
}

/// Contact details changed: the whole Patient (`PUT`) or a JSON Patch of it (`PATCH`), `If-Match`
/// its current version. Anything else changed is refused (422), never dropped.
pub(super) async fn update(
    State(api): State<Api>,
    method: Method,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    checked_id(&id, "Patient")?;
    let etag = if_match(&headers)?;
    let (gateway, call) = api.caller(&headers);
    let (current, _) = gateway.read_patient(&id, &call).await?;
    if current.id != id {
        return Err(Failure::unprocessable(format!("this record was merged into Patient/{}: change that one", current.id)));
    }
    let rendered = || serde_json::to_value(from_record(&current, "")).unwrap_or_default();
    let input = input(&updated(&method, &etag, &current.etag, rendered, &headers, &body)?)?;
    if !input.id.is_empty() && input.id != id {
        return Err(Failure::invalid("the body's id is not the Patient addressed", Some("Patient.id")));
    }
    let wanted = to_record(&input)?;
    if let Some(field) = other_change(&current, &wanted) {
        return Err(Failure::unprocessable(format!(
            "only contact details (address, telecom) are changed through this API; {field} differs from the record"
        )));
    }
    let change = pb::Patient { id, etag, address: wanted.address, phone: wanted.phone, email: wanted.email, ..Default::default() };
    let updated = gateway.update(change, CONTACT_FIELDS.map(String::from).to_vec(), &call).await?;
    Ok(with_etag(json(StatusCode::OK, &from_record(&updated, "")), &updated.etag))
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

    #[test]
    fn a_patient_read_back_in_is_the_same_record_and_only_contact_changes_pass() {
        let record = pb::Patient {
            id: "p1".into(),
            etag: "3".into(),
            nhs_number: "9434765919".into(),
            nhs_number_status: 2,
            local_identifiers: vec![pb::LocalIdentifier { issuer: "RR8".into(), value: "K1".into() }],
            given_name: "Seán Patrick".into(),
            family_name: "O'Brien".into(),
            birth_date: Some(pac_proto::common::Date { year: 1980, month: 1, day: 31 }),
            address: Some(pac_proto::common::Address { lines: vec!["1 Main St".into()], postcode: "LS1 4AP".into(), ..Default::default() }),
            phone: "+447700900123".into(),
            gp_practice_code: "B86001".into(),
            organisation: "RR8".into(),
            ..Default::default()
        };
        let body = serde_json::to_vec(&from_record(&record, "")).unwrap();
        let read = to_record(&input(&body).unwrap()).unwrap();
        assert_eq!(other_change(&record, &read), None);
        assert_eq!((read.address, read.phone), (record.address.clone(), record.phone.clone()));

        let mut json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        json["telecom"][0]["value"] = "+447700900999".into();
        let moved = to_record(&input(&serde_json::to_vec(&json).unwrap()).unwrap()).unwrap();
        assert_eq!((other_change(&record, &moved), moved.phone.as_str()), (None, "+447700900999"));
        json["name"][0]["family"] = "Brien".into();
        let renamed = to_record(&input(&serde_json::to_vec(&json).unwrap()).unwrap()).unwrap();
        assert_eq!(other_change(&record, &renamed), Some("name"));

        let unknown = serde_json::json!({ "resourceType": "Patient", "contact": [] });
        assert!(input(&serde_json::to_vec(&unknown).unwrap()).is_err(), "elements not kept are refused, not dropped");
    }
}
