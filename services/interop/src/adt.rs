//! What an ADT message asks of the patient index, read from its segments (UK ITK ADT conventions, a
//! constraint on HL7 v2.4; 2.3 to 2.5 are read the same way).
//!
//! - A28, A04, A01, A05, A08, A31: create or update the patient in PID (and PD1).
//! - A40: merge the record MRG-1 names into the PID-3 patient.
//! - A47: change the local identifier MRG-1 names to the one in PID-3.
//! - Other ADT events: acknowledged, changing nothing.
//!
//! Field mapping: PID-3 repetitions with assigning authority `NHS` or type `NH` are the NHS number,
//! others local identifiers (issuer: the assigning authority, else the sending facility); PID-32
//! `NSTS01`..`NSTS08` the NHS number's verification status; PID-5 (the legal name, type `L`, else the
//! first), PID-7 birth date, PID-8 sex, PID-11 address (the home address, type `H`, else the first;
//! postcode from component 5), PID-13 phone and email, PID-15 language, PD1-3 GP practice.
//!
//! An empty field leaves what is stored unchanged (the field is not in the update); the HL7 null
//! `""` clears it. Nothing here logs a value.

use pac_proto::common::{Address, Date};
use pac_proto::records::{LocalIdentifier, Patient, Sex};

use crate::ack::{Location, Problem, code};
use crate::hl7::{Message, Segment, Value};

/// An identifier the PAS knows a patient by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identifier {
    Nhs(String),
    Local(LocalIdentifier),
}

/// The identifiers in a PID-3 (or MRG-1) list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identifiers {
    pub nhs_number: Option<String>,
    pub local: Vec<LocalIdentifier>,
}

impl Identifiers {
    /// What the patient is found by, in order: the NHS number when `verified`, then each local
    /// identifier.
    pub fn lookup_order(&self, verified: bool) -> Vec<Identifier> {
        let nhs = self.nhs_number.iter().filter(|_| verified).map(|n| Identifier::Nhs(n.clone()));
        nhs.chain(self.local.iter().cloned().map(Identifier::Local)).collect()
    }
}

/// The demographics a message carries: the patient's fields as sent, and the update-mask paths of
/// those the message sets or clears (an absent field is not among them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Demographics {
    pub patient: Patient,
    pub paths: Vec<&'static str>,
}

impl Demographics {
    fn set(&mut self, path: &'static str, apply: impl FnOnce(&mut Patient)) {
        apply(&mut self.patient);
        if !self.paths.contains(&path) {
            self.paths.push(path);
        }
    }
}

/// What a message asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Create the patient, or update the one already known by these identifiers.
    Upsert { identifiers: Identifiers, verified: bool, demographics: Demographics },
    /// Merge the record known by `merged` into the one known by `survivor`.
    Merge { survivor: Identifiers, survivor_verified: bool, merged: Identifiers },
    /// Replace the local identifier `old` with `new`.
    ChangeIdentifier { old: LocalIdentifier, new: LocalIdentifier },
    /// An event that changes nothing here (acknowledged and counted).
    Ignored,
}

/// The events that create or update a patient.
pub const UPSERT_EVENTS: &[&str] = &["A28", "A04", "A01", "A05", "A08", "A31"];

/// Visit and movement events: acknowledged, changing nothing here. Any other trigger (a patient
/// event this listener does not do, such as A29 or the 2.3 merges A34-A36) is AE 201, never a
/// silent AA.
pub const VISIT_EVENTS: &[&str] = &[
    "A02", "A03", "A06", "A07", "A09", "A10", "A11", "A12", "A13", "A14", "A15", "A16", "A17", "A20", "A21", "A22", "A23", "A24", "A25",
    "A26", "A27", "A32", "A33", "A38", "A52", "A53", "A54", "A55",
];

/// What the ADT message `message` with trigger `trigger` asks for; `facility` is MSH-4, the issuer
/// of local identifiers that name none.
pub fn read(message: &Message<'_>, trigger: &str, facility: &str) -> Result<Request, Problem> {
    if VISIT_EVENTS.contains(&trigger) {
        return Ok(Request::Ignored);
    }
    if !UPSERT_EVENTS.contains(&trigger) && !matches!(trigger, "A40" | "A47") {
        return Err(Problem::content(code::UNSUPPORTED_EVENT, Some(Location::field("MSH", 9)), "this ADT event is not handled here"));
    }
    let pid = message
        .segment("PID")
        .ok_or_else(|| Problem::content(code::SEGMENT_SEQUENCE, Some(Location::field("PID", 0)), "the PID segment is missing"))?;
    let identifiers = identifiers(&pid, 3, facility);
    if identifiers.nhs_number.is_none() && identifiers.local.is_empty() {
        return Err(required("PID", 3, "PID-3 has no patient identifier"));
    }
    let status = nhs_number_status(&pid)?;
    let verified = status == Some(1);
    match trigger {
        "A40" => {
            let mrg = message.segment("MRG").ok_or_else(|| required("MRG", 0, "the MRG segment is missing"))?;
            let merged = identifiers_of(&mrg, 1, facility);
            if merged.nhs_number.is_none() && merged.local.is_empty() {
                return Err(required("MRG", 1, "MRG-1 has no patient identifier"));
            }
            Ok(Request::Merge { survivor: identifiers, survivor_verified: verified, merged })
        }
        "A47" => {
            let mrg = message.segment("MRG").ok_or_else(|| required("MRG", 0, "the MRG segment is missing"))?;
            let old = identifiers_of(&mrg, 1, facility).local.into_iter().next();
            let old = old.ok_or_else(|| required("MRG", 1, "MRG-1 has no local identifier"))?;
            let new = identifiers.local.iter().find(|l| l.issuer == old.issuer).cloned();
            let new = new.ok_or_else(|| required("PID", 3, "PID-3 has no local identifier of MRG-1's issuer"))?;
            Ok(Request::ChangeIdentifier { old, new })
        }
        _ => {
            let demographics = demographics(message, &pid, &identifiers, status)?;
            Ok(Request::Upsert { identifiers, verified, demographics })
        }
    }
}

fn required(segment: &'static str, field: u16, text: &str) -> Problem {
    Problem::content(code::REQUIRED_FIELD_MISSING, Some(Location::field(segment, field)), text)
}

fn invalid(segment: &'static str, field: u16, text: &str) -> Problem {
    Problem::content(code::DATA_TYPE, Some(Location::field(segment, field)), text)
}

fn identifiers(pid: &Segment<'_, '_>, field: usize, facility: &str) -> Identifiers {
    identifiers_of(pid, field, facility)
}

/// The CX repetitions of `field`: NHS (authority `NHS` or type `NH`) or local.
fn identifiers_of(segment: &Segment<'_, '_>, field: usize, facility: &str) -> Identifiers {
    let mut found = Identifiers::default();
    for repetition in 1..=segment.repetitions(field) {
        let Some(value) = segment.get(field, repetition, 1, 1).text().map(|v| v.trim().to_string()) else { continue };
        if value.is_empty() {
            continue;
        }
        let authority = segment.get(field, repetition, 4, 1).text().unwrap_or_default().trim().to_string();
        let kind = segment.get(field, repetition, 5, 1).text().unwrap_or_default().trim().to_ascii_uppercase();
        if authority.eq_ignore_ascii_case("NHS") || kind == "NH" {
            found.nhs_number.get_or_insert_with(|| value.replace(' ', ""));
        } else {
            let issuer = if authority.is_empty() { facility.to_string() } else { authority };
            let identifier = LocalIdentifier { issuer, value };
            if !found.local.contains(&identifier) {
                found.local.push(identifier);
            }
        }
    }
    found
}

/// PID-32's NSTS code (`NSTS01`..`NSTS08`, or the bare number) as the status number; `None` when
/// absent.
fn nhs_number_status(pid: &Segment<'_, '_>) -> Result<Option<i32>, Problem> {
    let Some(text) = pid.get(32, 1, 1, 1).text().map(str::trim).map(str::to_ascii_uppercase) else { return Ok(None) };
    let digits = text.strip_prefix("NSTS").unwrap_or(&text);
    match digits.parse::<i32>() {
        Ok(n) if (1..=8).contains(&n) => Ok(Some(n)),
        _ => Err(Problem::content(code::TABLE_VALUE_NOT_FOUND, Some(Location::field("PID", 32)), "PID-32 is not an NSTS code")),
    }
}

fn demographics(
    message: &Message<'_>,
    pid: &Segment<'_, '_>,
    identifiers: &Identifiers,
    status: Option<i32>,
) -> Result<Demographics, Problem> {
    let mut d = Demographics::default();
    if let Some(nhs) = &identifiers.nhs_number {
        let nhs = nhs.clone();
        d.set("nhs_number", |p| p.nhs_number = nhs);
    }
    if let Some(status) = status {
        d.set("nhs_number_status", |p| p.nhs_number_status = status);
    }
    if !identifiers.local.is_empty() {
        let local = identifiers.local.clone();
        d.set("local_identifiers", |p| p.local_identifiers = local);
    }
    name(pid, &mut d);
    match pid.get(7, 1, 1, 1) {
        Value::Absent => {}
        // A birth date is required: the null leaves it as it is.
        Value::Null => {}
        Value::Text(text) => {
            let date = parse_date(&text).ok_or_else(|| invalid("PID", 7, "PID-7 is not a date (YYYYMMDD)"))?;
            d.set("birth_date", |p| p.birth_date = Some(date));
        }
    }
    match pid.get(8, 1, 1, 1) {
        Value::Absent => {}
        Value::Null => d.set("sex", |p| p.sex = Sex::Unknown as i32),
        Value::Text(text) => {
            let sex = match text.trim().to_ascii_uppercase().as_str() {
                "M" => Sex::Male,
                "F" => Sex::Female,
                "O" | "A" => Sex::Other,
                "U" | "N" => Sex::Unknown,
                _ => {
                    return Err(Problem::content(
                        code::TABLE_VALUE_NOT_FOUND,
                        Some(Location::field("PID", 8)),
                        "PID-8 is not M, F, O, A, U or N",
                    ));
                }
            };
            d.set("sex", |p| p.sex = sex as i32);
        }
    }
    address(pid, &mut d);
    telecom(pid, &mut d);
    match pid.get(15, 1, 1, 1) {
        Value::Absent => {}
        Value::Null => d.set("preferred_language", |p| p.preferred_language.clear()),
        // A two- or three-letter code (ISO 639, as the NHS data dictionary's spoken language codes
        // are); a local code the platform cannot read is left out rather than refuse the message.
        Value::Text(text) => {
            let code = text.trim().to_ascii_lowercase();
            if (2..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase()) {
                d.set("preferred_language", |p| p.preferred_language = code);
            }
        }
    }
    if let Some(pd1) = message.segment("PD1") {
        // PD1-3 XON: the practice's ODS code in component 3 (2.3-2.4) or 10 (2.5), else 1.
        let value = [3, 10, 1].into_iter().map(|c| pd1.get(3, 1, c, 1)).find(|v| *v != Value::Absent).unwrap_or(Value::Absent);
        match value {
            Value::Absent => {}
            Value::Null => d.set("gp_practice_code", |p| p.gp_practice_code.clear()),
            Value::Text(code) => d.set("gp_practice_code", |p| p.gp_practice_code = code.trim().to_string()),
        }
    }
    Ok(d)
}

/// PID-5: the legal name (type `L`), else the first. Family name from component 1, given names from
/// components 2 and 3 (first and middle names), title ignored.
fn name(pid: &Segment<'_, '_>, d: &mut Demographics) {
    if pid.get(5, 1, 1, 1) == Value::Null {
        // Names cannot be cleared (they are required): a null name is left as it is.
        return;
    }
    let count = pid.repetitions(5);
    let legal = (1..=count).find(|&r| pid.get(5, r, 7, 1).text().is_some_and(|t| t.eq_ignore_ascii_case("L"))).unwrap_or(1);
    if count == 0 {
        return;
    }
    if let Some(family) = pid.get(5, legal, 1, 1).text() {
        let family = family.trim().to_string();
        d.set("family_name", |p| p.family_name = family);
    }
    let given: Vec<String> = [2, 3].into_iter().filter_map(|c| pid.get(5, legal, c, 1).text().map(|t| t.trim().to_string())).collect();
    if !given.is_empty() {
        let given = given.join(" ");
        d.set("given_name", |p| p.given_name = given);
    }
}

/// PID-11: the home address (type `H`), else the first.
fn address(pid: &Segment<'_, '_>, d: &mut Demographics) {
    match pid.get(11, 1, 1, 1) {
        Value::Null if pid.repetitions(11) <= 1 => return d.set("address", |p| p.address = None),
        _ => {}
    }
    let count = pid.repetitions(11);
    if count == 0 {
        return;
    }
    let home = (1..=count).find(|&r| pid.get(11, r, 7, 1).text().is_some_and(|t| t.eq_ignore_ascii_case("H"))).unwrap_or(1);
    let part = |component: usize| pid.get(11, home, component, 1).text().map(|t| t.trim().to_string()).unwrap_or_default();
    let lines: Vec<String> = [part(1), part(2)].into_iter().filter(|l| !l.is_empty()).collect();
    let country = match part(6).to_ascii_uppercase().as_str() {
        "" | "GB" | "GBR" | "UK" => String::new(),
        other if other.len() == 2 => other.to_string(),
        // A three-letter or local country code: left for the coordinator, never guessed.
        _ => String::new(),
    };
    let address = Address { lines, locality: part(3), district: part(4), postcode: part(5), country };
    d.set("address", |p| p.address = Some(address));
}

/// PID-13: the first phone number (equipment type PH, CP or none) and the first email address (use
/// NET or equipment Internet, component 4).
fn telecom(pid: &Segment<'_, '_>, d: &mut Demographics) {
    if pid.get(13, 1, 1, 1) == Value::Null && pid.repetitions(13) <= 1 {
        d.set("phone", |p| p.phone.clear());
        d.set("email", |p| p.email.clear());
        return;
    }
    let mut phone = None;
    let mut email = None;
    for r in 1..=pid.repetitions(13) {
        let text = |c: usize| pid.get(13, r, c, 1).text().map(|t| t.trim().to_string()).unwrap_or_default();
        let (number, use_code, equipment, address) = (text(1), text(2).to_ascii_uppercase(), text(3).to_ascii_uppercase(), text(4));
        if use_code == "NET" || equipment == "INTERNET" || equipment == "X.400" {
            let value = if address.is_empty() { number } else { address };
            if email.is_none() && !value.is_empty() {
                email = Some(value);
            }
        } else if phone.is_none() && !number.is_empty() && matches!(equipment.as_str(), "" | "PH" | "CP" | "MD") {
            phone = Some(number);
        }
    }
    if let Some(phone) = phone {
        d.set("phone", |p| p.phone = phone);
    }
    if let Some(email) = email {
        d.set("email", |p| p.email = email);
    }
}

/// `YYYYMMDD`, optionally followed by a time (ignored).
fn parse_date(text: &str) -> Option<Date> {
    let text = text.trim();
    if text.len() < 8 || !text.as_bytes()[..8].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text[range].parse::<i32>().ok();
    let date = Date { year: number(0..4)?, month: number(4..6)?, day: number(6..8)? };
    chrono::NaiveDate::from_ymd_opt(date.year, date.month as u32, date.day as u32).map(|_| date)
}

/// Where a field the records service refused (`patient.<path>`) is in the message.
pub fn location_of(field_path: &str) -> Option<Location> {
    let path = field_path.strip_prefix("patient.").unwrap_or(field_path);
    let head = path.split(['.', '[']).next().unwrap_or_default();
    let (segment, field) = match head {
        "nhs_number" | "local_identifiers" => ("PID", 3),
        "given_name" | "family_name" => ("PID", 5),
        "birth_date" => ("PID", 7),
        "sex" => ("PID", 8),
        "address" => ("PID", 11),
        "phone" | "email" => ("PID", 13),
        "preferred_language" => ("PID", 15),
        "nhs_number_status" => ("PID", 32),
        "gp_practice_code" => ("PD1", 3),
        _ => return None,
    };
    Some(Location::field(segment, field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::Message;

    const A28: &str = "MSH|^~\\&|PAS|RR8|PAC|PAC|20261204101500||ADT^A28^ADT_A05|MSG0001|P|2.4|||AL|NE||8859/1\r\
        EVN|A28|20261204101500\r\
        PID|1||9434765919^^^NHS^NH~K123456^^^RR8^PI~X1^^^^MR||O'BRIEN^Seán^Patrick^^Mr^^L~OB^S^^^^^A||19800131|M|||\
        1 High St^Flat 2^Leeds^West Yorkshire^LS1 4AB^GBR^H||07700 900123^PRN^PH~^NET^Internet^sean@example.org||en|||||||||||||||||NSTS01\r\
        PD1|||Leeds Practice^^B86001\r\
        ZXX|ignored\r";

    #[test]
    fn an_itk_a28_maps_to_a_registration() {
        let message = Message::parse(A28).unwrap();
        let Request::Upsert { identifiers, verified, demographics } = read(&message, "A28", "RR8").unwrap() else { panic!() };
        assert!(verified);
        assert_eq!(identifiers.nhs_number.as_deref(), Some("9434765919"));
        assert_eq!(
            identifiers.local,
            vec![
                LocalIdentifier { issuer: "RR8".into(), value: "K123456".into() },
                LocalIdentifier { issuer: "RR8".into(), value: "X1".into() }
            ]
        );
        let p = &demographics.patient;
        assert_eq!((p.family_name.as_str(), p.given_name.as_str()), ("O'BRIEN", "Seán Patrick"));
        assert_eq!(p.birth_date, Some(Date { year: 1980, month: 1, day: 31 }));
        assert_eq!(p.sex, Sex::Male as i32);
        let address = p.address.as_ref().unwrap();
        assert_eq!((address.lines.len(), address.postcode.as_str(), address.country.as_str()), (2, "LS1 4AB", ""));
        assert_eq!((p.phone.as_str(), p.email.as_str()), ("07700 900123", "sean@example.org"));
        assert_eq!((p.preferred_language.as_str(), p.gp_practice_code.as_str(), p.nhs_number_status), ("en", "B86001", 1));
        assert_eq!(demographics.paths.len(), 12, "{:?}", demographics.paths);
    }

    #[test]
    fn empty_fields_are_left_out_and_nulls_clear() {
        let a08 = "MSH|^~\\&|PAS|RR8|PAC|PAC|20261204101500||ADT^A08|MSG0002|P|2.4\r\
            PID|1||K123456^^^RR8^PI||Smith^John||||||\"\"||\"\"\r";
        let message = Message::parse(a08).unwrap();
        let Request::Upsert { verified, demographics, .. } = read(&message, "A08", "RR8").unwrap() else { panic!() };
        assert!(!verified);
        assert_eq!(demographics.paths, vec!["local_identifiers", "family_name", "given_name", "address", "phone", "email"]);
        assert_eq!(demographics.patient.address, None);
    }

    #[test]
    fn merges_and_identifier_changes() {
        let a40 = "MSH|^~\\&|PAS|RR8|PAC|PAC|20261204101500||ADT^A40^ADT_A39|MSG0003|P|2.4\r\
            EVN|A40\rPID|1||K1^^^RR8^PI\rMRG|K2^^^RR8^PI\r";
        let message = Message::parse(a40).unwrap();
        let Request::Merge { survivor, merged, .. } = read(&message, "A40", "RR8").unwrap() else { panic!() };
        assert_eq!((survivor.local[0].value.as_str(), merged.local[0].value.as_str()), ("K1", "K2"));
        let a47 = a40.replace("A40^ADT_A39", "A47^ADT_A30").replace("EVN|A40", "EVN|A47");
        let message = Message::parse(&a47).unwrap();
        let Request::ChangeIdentifier { old, new } = read(&message, "A47", "RR8").unwrap() else { panic!() };
        assert_eq!((old.value.as_str(), new.value.as_str()), ("K2", "K1"));
        let no_mrg = "MSH|^~\\&|PAS|RR8|PAC|PAC|20261204101500||ADT^A40|MSG0004|P|2.4\rPID|1||K1^^^RR8^PI\r";
        let problem = read(&Message::parse(no_mrg).unwrap(), "A40", "RR8").unwrap_err();
        assert_eq!((problem.code, problem.location), (code::REQUIRED_FIELD_MISSING, Some(Location::field("MRG", 0))));
    }

    #[test]
    fn content_errors_name_their_field() {
        let bad = |pid: &str| {
            let text = format!("MSH|^~\\&|PAS|RR8|PAC|PAC|20261204101500||ADT^A28|M|P|2.4\r{pid}\r");
            read(&Message::parse(&text).unwrap(), "A28", "RR8").unwrap_err()
        };
        assert_eq!(bad("PID|1||K1^^^RR8||Smith^J||1980133").location, Some(Location::field("PID", 7)));
        assert_eq!(bad("PID|1||K1^^^RR8||Smith^J||19800101|Q").location, Some(Location::field("PID", 8)));
        assert_eq!(bad("PID|1||||Smith^J").code, code::REQUIRED_FIELD_MISSING);
        assert_eq!(bad("PV1|1").location, Some(Location::field("PID", 0)));
        let mut pid32 = "PID|1||K1^^^RR8||Smith^J".to_string();
        pid32.push_str(&"|".repeat(27));
        pid32.push_str("NSTS99");
        assert_eq!(bad(&pid32).location, Some(Location::field("PID", 32)));
        assert_eq!(location_of("patient.local_identifiers[0].issuer"), Some(Location::field("PID", 3)));
    }

    #[test]
    fn other_visit_events_change_nothing() {
        let a03 = "MSH|^~\\&|PAS|RR8|PAC|PAC|20261204101500||ADT^A03|MSG0005|P|2.4\rPV1|1|I\r";
        assert_eq!(read(&Message::parse(a03).unwrap(), "A03", "RR8").unwrap(), Request::Ignored);
    }
}
