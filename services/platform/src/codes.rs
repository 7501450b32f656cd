//! Codes more than one service reads from requests: organisation (ODS) codes and service codes.

use crate::error::FieldViolation;

/// An organisation code (ODS), e.g. `RR8` or `B86001`: 3 to 10 letters and digits, upper-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OdsCode(String);

impl OdsCode {
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        let value = input.trim().to_uppercase();
        if !(3..=10).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return Err("is not an ODS organisation code (3-10 letters and digits, e.g. \"RR8\" or \"B86001\")");
        }
        Ok(Self(value))
    }

    /// A code read back from the database, where only parsed codes are written.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A required organisation code in `field` (`ORGANISATION_INVALID` when it is not one).
pub fn parse_organisation(field: &str, value: &str) -> Result<String, FieldViolation> {
    if value.trim().is_empty() {
        return Err(FieldViolation::new(field, "FIELD_REQUIRED", "is required"));
    }
    OdsCode::parse(value)
        .map(OdsCode::into_string)
        .map_err(|_| FieldViolation::new(field, "ORGANISATION_INVALID", "must be an ODS code such as B86001"))
}

/// A required service code in `field`, e.g. `TO-FRACTURE`: 2 to 40 letters, digits, `-` or `_`,
/// starting with a letter or digit, upper-cased. Clinics (scheduling) and referral services
/// (referrals) name the same services with it.
pub fn parse_service_code(field: &str, value: &str) -> Result<String, FieldViolation> {
    let code = value.trim().to_ascii_uppercase();
    if code.is_empty() {
        return Err(FieldViolation::new(field, "FIELD_REQUIRED", "is required"));
    }
    let valid = (2..=40).contains(&code.len())
        && code.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(code)
    } else {
        Err(FieldViolation::new(field, "SERVICE_CODE_INVALID", "must be 2-40 letters, digits, '_' or '-', e.g. TO-FRACTURE"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ods_codes() {
        assert_eq!(OdsCode::parse(" rr8 ").unwrap().as_str(), "RR8");
        assert_eq!(OdsCode::parse("B86001").unwrap().as_str(), "B86001");
        assert!(OdsCode::parse("R8").is_err());
        assert!(OdsCode::parse("RR-8").is_err());
        assert!(OdsCode::parse("ÉRR8").is_err());
        assert_eq!(parse_organisation("o", "").unwrap_err().reason, "FIELD_REQUIRED");
        assert_eq!(parse_organisation("o", "x").unwrap_err().reason, "ORGANISATION_INVALID");
    }

    #[test]
    fn service_codes() {
        assert_eq!(parse_service_code("s", " to-fracture ").unwrap(), "TO-FRACTURE");
        assert_eq!(parse_service_code("s", "ENT_2WW").unwrap(), "ENT_2WW");
        assert_eq!(parse_service_code("s", "").unwrap_err().reason, "FIELD_REQUIRED");
        for bad in ["X", "no spaces", "-KNEE", &"A".repeat(41)] {
            assert_eq!(parse_service_code("s", bad).unwrap_err().reason, "SERVICE_CODE_INVALID", "{bad}");
        }
    }
}
