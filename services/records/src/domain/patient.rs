//! The patient as the records service holds it, and the rules that tie its fields together.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::demographics::{Email, OdsCode, PersonName, Phone, name_key};
use super::matching::MatchProfile;
use super::nhs_number::NhsNumber;

/// Administrative sex; the numbers are the contract's enum values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Male = 1,
    Female = 2,
    Other = 3,
    Unknown = 4,
}

impl Sex {
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::Male),
            2 => Some(Self::Female),
            3 => Some(Self::Other),
            4 => Some(Self::Unknown),
            _ => None,
        }
    }

    pub fn is_known(self) -> bool {
        matches!(self, Self::Male | Self::Female)
    }
}

/// NHS number verification status, national codes 01..08.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NhsNumberStatus(u8);

impl NhsNumberStatus {
    pub const VERIFIED: Self = Self(1);
    pub const NOT_TRACED: Self = Self(2);
    pub const TRACE_REQUIRED: Self = Self(3);
    pub const NOT_PRESENT: Self = Self(7);

    pub fn from_code(code: i32) -> Option<Self> {
        u8::try_from(code).ok().filter(|c| (1..=8).contains(c)).map(Self)
    }

    pub fn code(self) -> u8 {
        self.0
    }

    /// Statuses 01 and 02 say a number is present; 07 says none is.
    pub fn consistent_with(self, has_number: bool) -> Result<(), &'static str> {
        match (self.0, has_number) {
            (1 | 2, false) => Err("says an NHS number is present, but none was given"),
            (7, true) => Err("says no NHS number is present, but one was given"),
            _ => Ok(()),
        }
    }

    /// The status to assume when the caller gives none.
    pub fn default_for(has_number: bool) -> Self {
        if has_number { Self::NOT_TRACED } else { Self::TRACE_REQUIRED }
    }
}

/// An identifier issued by an organisation (a hospital number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIdentifier {
    pub issuer: OdsCode,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    pub lines: Vec<String>,
    pub locality: String,
    pub district: String,
    /// Normalised when the address is in the UK; as given otherwise; empty when unknown.
    pub postcode: String,
    /// ISO 3166-1 alpha-2; empty means GB.
    pub country: String,
}

impl Address {
    pub fn is_uk(&self) -> bool {
        self.country.is_empty() || self.country == "GB"
    }

    /// The outward code of a UK postcode.
    pub fn postcode_outward(&self) -> Option<&str> {
        (self.is_uk() && !self.postcode.is_empty()).then(|| self.postcode.split(' ').next().unwrap_or(""))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactPreferences {
    /// `pac.common.v1.ContactMethod` values.
    pub preferred: i32,
    pub consented: Vec<i32>,
}

/// Everything a caller can set on a patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demographics {
    pub nhs_number: Option<NhsNumber>,
    pub nhs_number_status: NhsNumberStatus,
    pub local_identifiers: Vec<LocalIdentifier>,
    pub given_name: PersonName,
    pub family_name: PersonName,
    pub birth_date: NaiveDate,
    pub sex: Sex,
    pub address: Address,
    pub phone: Option<Phone>,
    pub email: Option<Email>,
    pub gp_practice_code: Option<OdsCode>,
    pub preferred_language: Option<String>,
    pub interpreter_needed: bool,
    pub accessibility_needs: Vec<String>,
    pub contact_preferences: ContactPreferences,
    pub restricted: bool,
}

impl Demographics {
    /// Normalised name for fuzzy search: "given family".
    pub fn search_name(&self) -> String {
        format!("{} {}", name_key(self.given_name.as_str()), name_key(self.family_name.as_str()))
    }

    pub fn match_profile(&self) -> MatchProfile {
        MatchProfile::new(
            self.given_name.as_str(),
            self.family_name.as_str(),
            Some(self.birth_date),
            self.sex,
            (!self.address.postcode.is_empty()).then(|| self.address.postcode.clone()),
            self.phone.as_ref().map(|p| p.as_str().to_string()),
            self.nhs_number.as_ref().map(|n| n.as_str().to_string()),
        )
    }

    /// Identifiers that resolve to this record, as recorded when it is merged away.
    pub fn identifier_labels(&self) -> Vec<String> {
        self.nhs_number
            .iter()
            .map(|n| format!("nhs:{n}"))
            .chain(self.local_identifiers.iter().map(|l| format!("local:{}:{}", l.issuer.as_str(), l.value)))
            .collect()
    }
}

/// A stored patient record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientRecord {
    pub id: Uuid,
    pub version: i64,
    pub demographics: Demographics,
    /// The organisation that registered the patient and owns the record (`''`: none). Never changes.
    pub organisation: String,
    pub merged_into: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PatientRecord {
    pub fn etag(&self) -> String {
        self.version.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_number_status_must_agree_with_the_number() {
        assert!(NhsNumberStatus::VERIFIED.consistent_with(false).is_err());
        assert!(NhsNumberStatus::NOT_TRACED.consistent_with(false).is_err());
        assert!(NhsNumberStatus::NOT_PRESENT.consistent_with(true).is_err());
        assert!(NhsNumberStatus::VERIFIED.consistent_with(true).is_ok());
        assert!(NhsNumberStatus::TRACE_REQUIRED.consistent_with(false).is_ok());
        assert_eq!(NhsNumberStatus::default_for(true), NhsNumberStatus::NOT_TRACED);
        assert_eq!(NhsNumberStatus::default_for(false), NhsNumberStatus::TRACE_REQUIRED);
        assert!(NhsNumberStatus::from_code(0).is_none());
        assert!(NhsNumberStatus::from_code(9).is_none());
        assert_eq!(NhsNumberStatus::from_code(8).unwrap().code(), 8);
    }
}
