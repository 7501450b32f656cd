//! Between the contract's messages and the domain: every request field is parsed into a domain value
//! or becomes a field violation naming it; every record becomes a message with restricted contact
//! details withheld from callers who may not see them.

use chrono::NaiveDate;
pub use pac_platform::convert::{actor, date, parse_id, parse_text, timestamp};
use pac_platform::error::FieldViolation;
use pac_proto::common::{Address as AddressMessage, ContactMethod, Date};
use pac_proto::records as pb;

use crate::domain::demographics::{
    Email, OdsCode, PersonName, Phone, Postcode, PostcodeFilter, name_key, parse_birth_date, parse_language,
};
use crate::domain::matching::MatchProfile;
use crate::domain::nhs_number::{NhsNumber, NhsNumberError};
use crate::domain::patient::{Address, ContactPreferences, Demographics, LocalIdentifier, NhsNumberStatus, PatientRecord, Sex};
use crate::store::{MergeRecord, SearchCriteria};

/// Patient fields a caller may set, by their update-mask path.
pub const SETTABLE_FIELDS: &[&str] = &[
    "nhs_number",
    "nhs_number_status",
    "local_identifiers",
    "given_name",
    "family_name",
    "birth_date",
    "sex",
    "address",
    "phone",
    "email",
    "gp_practice_code",
    "preferred_language",
    "interpreter_needed",
    "accessibility_needs",
    "contact_preferences",
    "restricted",
];

/// Patient fields only the service sets.
pub const OUTPUT_ONLY_FIELDS: &[&str] = &["id", "etag", "contact_withheld", "merged_into", "create_time", "update_time"];

/// Patient fields set on registration that never change afterwards.
pub const IMMUTABLE_FIELDS: &[&str] = &["organisation"];

/// Fields withheld from restricted records.
pub const CONTACT_FIELDS: &[&str] = &["address", "phone", "email"];

/// How requests are read.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub accept_test_nhs_numbers: bool,
    pub today: NaiveDate,
}

pub fn nhs_number_violation(field: &str, error: NhsNumberError) -> FieldViolation {
    let reason = match error {
        NhsNumberError::TestNumber => "NHS_NUMBER_TEST_RANGE",
        NhsNumberError::Placeholder => "NHS_NUMBER_PLACEHOLDER",
        _ => "NHS_NUMBER_INVALID",
    };
    FieldViolation::new(field, reason, error.description())
}

/// The longest name a search takes, as a person would type one: each word is matched against the
/// name vocabulary, so a longer one costs the database more for nothing.
pub const MAX_SEARCH_NAME_CHARS: usize = 100;
pub const MAX_SEARCH_NAME_WORDS: usize = 8;

/// Search criteria from a request (offset 0; the caller applies the page token). At least one
/// criterion is required.
pub fn search_criteria(request: &pb::SearchPatientsRequest, today: NaiveDate) -> Result<SearchCriteria, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let name_key = match name_key(&request.name) {
        _ if request.name.chars().count() > MAX_SEARCH_NAME_CHARS => {
            violations.push(FieldViolation::new("name", "NAME_TOO_LONG", format!("must be at most {MAX_SEARCH_NAME_CHARS} characters")));
            None
        }
        key if key.split(' ').count() > MAX_SEARCH_NAME_WORDS => {
            violations.push(FieldViolation::new("name", "NAME_TOO_MANY_WORDS", format!("must be at most {MAX_SEARCH_NAME_WORDS} words")));
            None
        }
        key if key.is_empty() => None,
        key if key.chars().filter(|c| c.is_alphabetic()).count() < 2 => {
            violations.push(FieldViolation::new("name", "NAME_TOO_SHORT", "needs at least two letters"));
            None
        }
        key => Some(key),
    };
    let birth_date = optional_date(request.birth_date.as_ref(), "birth_date", today, &mut violations);
    let (mut postcode, mut postcode_outward) = (None, None);
    match optional(&request.postcode, PostcodeFilter::parse, "postcode", "POSTCODE_INVALID", &mut violations) {
        Some(PostcodeFilter::Full(full)) => postcode = Some(full.as_str().to_string()),
        Some(PostcodeFilter::Outward(outward)) => postcode_outward = Some(outward),
        None => {}
    }
    let phone = optional(&request.phone, Phone::parse, "phone", "PHONE_INVALID", &mut violations).map(|p| p.as_str().to_string());
    let limit = pac_platform::paging::page_size(request.page_size, 20, 100).map_err(|v| violations.push(v)).unwrap_or(20);
    let criteria = SearchCriteria { name_key, birth_date, postcode, postcode_outward, phone, limit, offset: 0 };
    let no_criteria = criteria.name_key.is_none()
        && criteria.birth_date.is_none()
        && criteria.postcode.is_none()
        && criteria.postcode_outward.is_none()
        && criteria.phone.is_none();
    if violations.is_empty() && no_criteria {
        violations.push(FieldViolation::new("name", "CRITERIA_REQUIRED", "give a name, birth date, postcode or phone"));
    }
    if violations.is_empty() { Ok(criteria) } else { Err(violations) }
}

/// The demographics to match, from a MatchPatients request. A family name is required.
pub fn match_profile(input: &pb::Patient, today: NaiveDate) -> Result<MatchProfile, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if name_key(&input.family_name).is_empty() {
        violations.push(FieldViolation::new("patient.family_name", "NAME_INVALID", "is required for matching"));
    }
    for (field, name) in [("patient.family_name", &input.family_name), ("patient.given_name", &input.given_name)] {
        if name.chars().count() > MAX_SEARCH_NAME_CHARS || name_key(name).split(' ').count() > MAX_SEARCH_NAME_WORDS {
            let description = format!("must be at most {MAX_SEARCH_NAME_CHARS} characters and {MAX_SEARCH_NAME_WORDS} words");
            violations.push(FieldViolation::new(field, "NAME_TOO_LONG", description));
        }
    }
    let birth_date = optional_date(input.birth_date.as_ref(), "patient.birth_date", today, &mut violations);
    let nhs_number = match input.nhs_number.trim() {
        "" => None,
        value => NhsNumber::parse(value, true)
            .map(|n| n.as_str().to_string())
            .map_err(|e| violations.push(nhs_number_violation("patient.nhs_number", e)))
            .ok(),
    };
    let phone = optional(&input.phone, Phone::parse, "patient.phone", "PHONE_INVALID", &mut violations);
    let postcode = input
        .address
        .as_ref()
        .and_then(|address| optional(&address.postcode, Postcode::parse, "patient.address.postcode", "POSTCODE_INVALID", &mut violations));
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(MatchProfile::new(
        &input.given_name,
        &input.family_name,
        birth_date,
        Sex::from_code(input.sex).unwrap_or(Sex::Unknown),
        postcode.map(|p| p.as_str().to_string()),
        phone.map(|p| p.as_str().to_string()),
        nhs_number,
    ))
}

/// Parses an optional text field: empty is `None`, invalid is a violation.
fn optional<T>(
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, &'static str>,
    field: &str,
    reason: &'static str,
    violations: &mut Vec<FieldViolation>,
) -> Option<T> {
    match value.trim() {
        "" => None,
        value => parse(value).map_err(|e| violations.push(FieldViolation::new(field, reason, e))).ok(),
    }
}

fn optional_date(date: Option<&Date>, field: &str, today: NaiveDate, violations: &mut Vec<FieldViolation>) -> Option<NaiveDate> {
    let date = date?;
    parse_birth_date(date.year, date.month, date.day, today)
        .map_err(|e| violations.push(FieldViolation::new(field, "BIRTH_DATE_INVALID", e)))
        .ok()
}

/// A new patient from a registration request. Output-only fields must be empty.
pub fn new_demographics(input: &pb::Patient, rules: Rules) -> Result<Demographics, Vec<FieldViolation>> {
    let mut violations = output_only_violations(input);
    let mut demographics = blank();
    for field in SETTABLE_FIELDS {
        if let Err(violation) = set_field(&mut demographics, input, field, rules) {
            violations.push(violation);
        }
    }
    if input.nhs_number_status == 0 {
        demographics.nhs_number_status = NhsNumberStatus::default_for(demographics.nhs_number.is_some());
    }
    finish(demographics, violations)
}

/// `current` with the fields named in `paths` taken from `input`. Returns the new demographics and
/// the paths whose values changed.
pub fn apply_update(
    current: &Demographics,
    input: &pb::Patient,
    paths: &[String],
    rules: Rules,
) -> Result<(Demographics, Vec<String>), Vec<FieldViolation>> {
    let mut violations = Vec::new();
    if paths.is_empty() {
        violations.push(FieldViolation::new("update_mask", "UPDATE_MASK_REQUIRED", "must name at least one field"));
    }
    let mut updated = current.clone();
    for path in paths {
        if OUTPUT_ONLY_FIELDS.contains(&path.as_str()) {
            violations.push(FieldViolation::new(
                "update_mask",
                "FIELD_OUTPUT_ONLY",
                format!("{path} is set by the service, not by callers"),
            ));
        } else if IMMUTABLE_FIELDS.contains(&path.as_str()) {
            violations.push(FieldViolation::new(
                "update_mask",
                "FIELD_IMMUTABLE",
                format!("{path} is set on registration and never changes"),
            ));
        } else if !SETTABLE_FIELDS.contains(&path.as_str()) {
            violations.push(FieldViolation::new(
                "update_mask",
                "FIELD_UNKNOWN",
                format!("{path} is not a patient field that can be updated (one of: {})", SETTABLE_FIELDS.join(", ")),
            ));
        } else if let Err(violation) = set_field(&mut updated, input, path, rules) {
            violations.push(violation);
        }
    }
    if paths.iter().any(|p| p == "nhs_number_status") && input.nhs_number_status == 0 {
        updated.nhs_number_status = NhsNumberStatus::default_for(updated.nhs_number.is_some());
    }
    let updated = finish(updated, violations)?;
    let changed = SETTABLE_FIELDS
        .iter()
        .filter(|field| paths.iter().any(|p| p == *field) && field_differs(current, &updated, field))
        .map(|field| field.to_string())
        .collect();
    Ok((updated, changed))
}

fn finish(demographics: Demographics, mut violations: Vec<FieldViolation>) -> Result<Demographics, Vec<FieldViolation>> {
    if violations.is_empty()
        && let Err(description) = demographics.nhs_number_status.consistent_with(demographics.nhs_number.is_some())
    {
        violations.push(FieldViolation::new("patient.nhs_number_status", "NHS_NUMBER_STATUS_INCONSISTENT", description));
    }
    if violations.is_empty() { Ok(demographics) } else { Err(violations) }
}

fn output_only_violations(input: &pb::Patient) -> Vec<FieldViolation> {
    let set = [
        ("id", !input.id.is_empty()),
        ("etag", !input.etag.is_empty()),
        ("contact_withheld", input.contact_withheld),
        ("merged_into", !input.merged_into.is_empty()),
        ("create_time", input.create_time.is_some()),
        ("update_time", input.update_time.is_some()),
    ];
    set.into_iter()
        .filter(|(_, is_set)| *is_set)
        .map(|(field, _)| FieldViolation::new(format!("patient.{field}"), "FIELD_OUTPUT_ONLY", "is set by the service; leave it empty"))
        .collect()
}

fn blank() -> Demographics {
    Demographics {
        nhs_number: None,
        nhs_number_status: NhsNumberStatus::TRACE_REQUIRED,
        local_identifiers: Vec::new(),
        given_name: PersonName::from_stored(String::new()),
        family_name: PersonName::from_stored(String::new()),
        birth_date: NaiveDate::MIN,
        sex: Sex::Unknown,
        address: Address::default(),
        phone: None,
        email: None,
        gp_practice_code: None,
        preferred_language: None,
        interpreter_needed: false,
        accessibility_needs: Vec::new(),
        contact_preferences: ContactPreferences::default(),
        restricted: false,
    }
}

/// Sets one field of `target` from `input`, or says why it cannot.
fn set_field(target: &mut Demographics, input: &pb::Patient, field: &str, rules: Rules) -> Result<(), FieldViolation> {
    let path = format!("patient.{field}");
    let invalid = |reason: &'static str, description: &str| FieldViolation::new(path.clone(), reason, description);
    match field {
        "nhs_number" => {
            target.nhs_number = match input.nhs_number.trim() {
                "" => None,
                value => Some(NhsNumber::parse(value, rules.accept_test_nhs_numbers).map_err(|e| nhs_number_violation(&path, e))?),
            };
        }
        "nhs_number_status" => {
            if input.nhs_number_status != 0 {
                target.nhs_number_status = NhsNumberStatus::from_code(input.nhs_number_status)
                    .ok_or_else(|| invalid("NHS_NUMBER_STATUS_INVALID", "is not a verification status (1-8)"))?;
            }
        }
        "local_identifiers" => {
            let mut identifiers: Vec<LocalIdentifier> = Vec::new();
            if input.local_identifiers.len() > 20 {
                return Err(invalid("TOO_MANY", "at most 20 local identifiers"));
            }
            for (i, identifier) in input.local_identifiers.iter().enumerate() {
                let at = |sub: &str, reason: &'static str, description: &str| {
                    FieldViolation::new(format!("{path}[{i}].{sub}"), reason, description)
                };
                let issuer = OdsCode::parse(&identifier.issuer).map_err(|d| at("issuer", "ISSUER_INVALID", d))?;
                let value = identifier.value.trim();
                if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(at("value", "IDENTIFIER_INVALID", "must be 1-64 printable characters without spaces"));
                }
                if identifiers.iter().any(|l| l.issuer == issuer && l.value == value) {
                    return Err(at("value", "IDENTIFIER_DUPLICATED", "is listed twice"));
                }
                identifiers.push(LocalIdentifier { issuer, value: value.to_string() });
            }
            target.local_identifiers = identifiers;
        }
        "given_name" => target.given_name = PersonName::parse(&input.given_name).map_err(|d| invalid("NAME_INVALID", d))?,
        "family_name" => target.family_name = PersonName::parse(&input.family_name).map_err(|d| invalid("NAME_INVALID", d))?,
        "birth_date" => {
            let date = input.birth_date.as_ref().ok_or_else(|| invalid("BIRTH_DATE_REQUIRED", "is required"))?;
            target.birth_date =
                parse_birth_date(date.year, date.month, date.day, rules.today).map_err(|d| invalid("BIRTH_DATE_INVALID", d))?;
        }
        "sex" => {
            target.sex = Sex::from_code(input.sex).ok_or_else(|| invalid("SEX_REQUIRED", "is required (SEX_UNKNOWN when not known)"))?;
        }
        "address" => target.address = parse_address(input.address.as_ref(), &path)?,
        "phone" => {
            target.phone = match input.phone.trim() {
                "" => None,
                value => Some(Phone::parse(value).map_err(|d| invalid("PHONE_INVALID", d))?),
            };
        }
        "email" => {
            target.email = match input.email.trim() {
                "" => None,
                value => Some(Email::parse(value).map_err(|d| invalid("EMAIL_INVALID", d))?),
            };
        }
        "gp_practice_code" => {
            target.gp_practice_code = match input.gp_practice_code.trim() {
                "" => None,
                value => Some(OdsCode::parse(value).map_err(|d| invalid("ODS_CODE_INVALID", d))?),
            };
        }
        "preferred_language" => {
            target.preferred_language = match input.preferred_language.trim() {
                "" => None,
                value => Some(parse_language(value).map_err(|d| invalid("LANGUAGE_INVALID", d))?),
            };
        }
        "interpreter_needed" => target.interpreter_needed = input.interpreter_needed,
        "accessibility_needs" => {
            if input.accessibility_needs.len() > 20 {
                return Err(invalid("TOO_MANY", "at most 20 accessibility needs"));
            }
            target.accessibility_needs = input
                .accessibility_needs
                .iter()
                .map(|need| match parse_text(need, 200) {
                    Ok(text) if !text.is_empty() => Ok(text),
                    Ok(_) => Err(invalid("TEXT_INVALID", "entries must not be empty")),
                    Err(d) => Err(invalid("TEXT_INVALID", d)),
                })
                .collect::<Result<_, _>>()?;
        }
        "contact_preferences" => target.contact_preferences = parse_contact_preferences(input.contact_preferences.as_ref(), &path)?,
        "restricted" => target.restricted = input.restricted,
        other => unreachable!("set_field called with unknown field {other}"),
    }
    Ok(())
}

fn parse_address(input: Option<&AddressMessage>, path: &str) -> Result<Address, FieldViolation> {
    let Some(input) = input else { return Ok(Address::default()) };
    let at = |sub: &str, reason: &'static str, description: &str| FieldViolation::new(format!("{path}.{sub}"), reason, description);
    if input.lines.len() > 5 {
        return Err(at("lines", "TOO_MANY", "at most 5 address lines"));
    }
    let lines = input
        .lines
        .iter()
        .map(|line| parse_text(line, 100).map_err(|d| at("lines", "TEXT_INVALID", d)))
        .filter(|line| !matches!(line, Ok(l) if l.is_empty()))
        .collect::<Result<Vec<_>, _>>()?;
    let country = input.country.trim().to_uppercase();
    if !(country.is_empty() || (country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()))) {
        return Err(at("country", "COUNTRY_INVALID", "is not an ISO 3166-1 alpha-2 country code (e.g. \"GB\")"));
    }
    let country = if country == "GB" { String::new() } else { country };
    let postcode = match input.postcode.trim() {
        "" => String::new(),
        value if country.is_empty() => Postcode::parse(value).map_err(|d| at("postcode", "POSTCODE_INVALID", d))?.as_str().to_string(),
        value => parse_text(value, 16).map_err(|d| at("postcode", "POSTCODE_INVALID", d))?,
    };
    Ok(Address {
        lines,
        locality: parse_text(&input.locality, 100).map_err(|d| at("locality", "TEXT_INVALID", d))?,
        district: parse_text(&input.district, 100).map_err(|d| at("district", "TEXT_INVALID", d))?,
        postcode,
        country,
    })
}

fn parse_contact_preferences(input: Option<&pb::ContactPreferences>, path: &str) -> Result<ContactPreferences, FieldViolation> {
    let Some(input) = input else { return Ok(ContactPreferences::default()) };
    let known = |m: i32| ContactMethod::try_from(m).is_ok_and(|m| m != ContactMethod::Unspecified);
    if input.preferred_method != 0 && !known(input.preferred_method) {
        return Err(FieldViolation::new(format!("{path}.preferred_method"), "CONTACT_METHOD_INVALID", "is not a contact method"));
    }
    let mut consented = Vec::new();
    for method in &input.consented_methods {
        if !known(*method) {
            return Err(FieldViolation::new(
                format!("{path}.consented_methods"),
                "CONTACT_METHOD_INVALID",
                "lists an unknown contact method",
            ));
        }
        if !consented.contains(method) {
            consented.push(*method);
        }
    }
    if input.preferred_method != 0 && !consented.is_empty() && !consented.contains(&input.preferred_method) {
        return Err(FieldViolation::new(
            format!("{path}.preferred_method"),
            "CONTACT_METHOD_NOT_CONSENTED",
            "must be one of the consented methods",
        ));
    }
    Ok(ContactPreferences { preferred: input.preferred_method, consented })
}

fn field_differs(a: &Demographics, b: &Demographics, field: &str) -> bool {
    match field {
        "nhs_number" => a.nhs_number != b.nhs_number,
        "nhs_number_status" => a.nhs_number_status != b.nhs_number_status,
        "local_identifiers" => a.local_identifiers != b.local_identifiers,
        "given_name" => a.given_name != b.given_name,
        "family_name" => a.family_name != b.family_name,
        "birth_date" => a.birth_date != b.birth_date,
        "sex" => a.sex != b.sex,
        "address" => a.address != b.address,
        "phone" => a.phone != b.phone,
        "email" => a.email != b.email,
        "gp_practice_code" => a.gp_practice_code != b.gp_practice_code,
        "preferred_language" => a.preferred_language != b.preferred_language,
        "interpreter_needed" => a.interpreter_needed != b.interpreter_needed,
        "accessibility_needs" => a.accessibility_needs != b.accessibility_needs,
        "contact_preferences" => a.contact_preferences != b.contact_preferences,
        "restricted" => a.restricted != b.restricted,
        _ => false,
    }
}

/// The record as a message. `reveal_contact` is false for a caller without the permission to see
/// restricted contact details; a restricted record then has them withheld.
pub fn patient(record: &PatientRecord, reveal_contact: bool) -> pb::Patient {
    let d = &record.demographics;
    let mut message = pb::Patient {
        id: record.id.to_string(),
        etag: record.etag(),
        nhs_number: d.nhs_number.as_ref().map(|n| n.as_str().to_string()).unwrap_or_default(),
        nhs_number_status: i32::from(d.nhs_number_status.code()),
        local_identifiers: d
            .local_identifiers
            .iter()
            .map(|l| pb::LocalIdentifier { issuer: l.issuer.as_str().to_string(), value: l.value.clone() })
            .collect(),
        given_name: d.given_name.as_str().to_string(),
        family_name: d.family_name.as_str().to_string(),
        birth_date: Some(date(d.birth_date)),
        sex: d.sex as i32,
        address: Some(AddressMessage {
            lines: d.address.lines.clone(),
            locality: d.address.locality.clone(),
            district: d.address.district.clone(),
            postcode: d.address.postcode.clone(),
            country: if d.address.country.is_empty() { "GB".into() } else { d.address.country.clone() },
        }),
        phone: d.phone.as_ref().map(|p| p.as_str().to_string()).unwrap_or_default(),
        email: d.email.as_ref().map(|e| e.as_str().to_string()).unwrap_or_default(),
        gp_practice_code: d.gp_practice_code.as_ref().map(|c| c.as_str().to_string()).unwrap_or_default(),
        preferred_language: d.preferred_language.clone().unwrap_or_default(),
        interpreter_needed: d.interpreter_needed,
        accessibility_needs: d.accessibility_needs.clone(),
        contact_preferences: Some(pb::ContactPreferences {
            preferred_method: d.contact_preferences.preferred,
            consented_methods: d.contact_preferences.consented.clone(),
        }),
        restricted: d.restricted,
        contact_withheld: false,
        merged_into: record.merged_into.map(|id| id.to_string()).unwrap_or_default(),
        create_time: Some(timestamp(record.created_at)),
        update_time: Some(timestamp(record.updated_at)),
        organisation: record.organisation.clone(),
    };
    if !reveal_contact {
        withhold_contact(&mut message);
    }
    message
}

/// Withholds address, phone and email of a restricted record, and says so.
pub fn withhold_contact(patient: &mut pb::Patient) {
    if patient.restricted {
        patient.address = None;
        patient.phone.clear();
        patient.email.clear();
        patient.contact_withheld = true;
    }
}

pub fn merge(merge: &MergeRecord) -> pb::Merge {
    pb::Merge {
        id: merge.id.to_string(),
        survivor_id: merge.survivor_id.to_string(),
        merged_id: merge.merged_id.to_string(),
        moved_identifiers: merge.moved_identifiers.clone(),
        merged_by: Some(actor(&merge.merged_by)),
        merge_time: Some(timestamp(merge.merged_at)),
        unmerged_by: merge.unmerged_by.as_ref().map(actor),
        unmerge_time: merge.unmerged_at.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn rules() -> Rules {
        Rules { accept_test_nhs_numbers: true, today: NaiveDate::from_ymd_opt(2026, 11, 25).unwrap() }
    }

    fn valid() -> pb::Patient {
        pb::Patient {
            nhs_number: "943 476 5919".into(),
            given_name: "Ada".into(),
            family_name: "Lovelace".into(),
            birth_date: Some(Date { year: 1990, month: 12, day: 10 }),
            sex: Sex::Female as i32,
            address: Some(AddressMessage { lines: vec!["1 Park Row".into()], postcode: "ls1 5ab".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_patient_is_normalised() {
        let d = new_demographics(&valid(), rules()).unwrap();
        assert_eq!(d.nhs_number.unwrap().as_str(), "9434765919");
        assert_eq!(d.nhs_number_status, NhsNumberStatus::NOT_TRACED);
        assert_eq!(d.address.postcode, "LS1 5AB");
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut input = valid();
        input.nhs_number = "9434765918".into();
        input.given_name = "".into();
        input.birth_date = Some(Date { year: 2030, month: 1, day: 1 });
        input.sex = 0;
        input.id = "x".into();
        let violations = new_demographics(&input, rules()).unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["patient.id", "patient.nhs_number", "patient.given_name", "patient.birth_date", "patient.sex"]);
        assert_eq!(violations[1].reason, "NHS_NUMBER_INVALID");
    }

    #[test]
    fn update_mask_rules() {
        let current = new_demographics(&valid(), rules()).unwrap();
        let mut input = valid();
        input.family_name = "King".into();
        let (updated, changed) = apply_update(&current, &input, &["family_name".into()], rules()).unwrap();
        assert_eq!(updated.family_name.as_str(), "King");
        assert_eq!(changed, ["family_name"]);

        for (paths, reason) in [
            (vec![], "UPDATE_MASK_REQUIRED"),
            (vec!["etag".to_string()], "FIELD_OUTPUT_ONLY"),
            (vec!["organisation".to_string()], "FIELD_IMMUTABLE"),
            (vec!["shoe_size".to_string()], "FIELD_UNKNOWN"),
        ] {
            let violations = apply_update(&current, &input, &paths, rules()).unwrap_err();
            assert_eq!(violations[0].reason, reason);
        }
        // Clearing the number while the status still says "verified" is refused.
        let mut verified = current.clone();
        verified.nhs_number_status = NhsNumberStatus::VERIFIED;
        input.nhs_number = String::new();
        let violations = apply_update(&verified, &input, &["nhs_number".into()], rules()).unwrap_err();
        assert_eq!(violations[0].reason, "NHS_NUMBER_STATUS_INCONSISTENT");
    }

    #[test]
    fn restricted_records_withhold_contact_details() {
        let mut d = new_demographics(&valid(), rules()).unwrap();
        d.restricted = true;
        d.phone = Some(Phone::parse("07700 900123").unwrap());
        let now = Utc::now();
        let record = PatientRecord {
            id: Uuid::now_v7(),
            version: 1,
            demographics: d,
            organisation: "RR8".into(),
            merged_into: None,
            created_at: now,
            updated_at: now,
        };
        let hidden = patient(&record, false);
        assert!(hidden.address.is_none() && hidden.phone.is_empty() && hidden.contact_withheld);
        let shown = patient(&record, true);
        assert!(shown.address.is_some() && !shown.phone.is_empty() && !shown.contact_withheld);
    }
}
