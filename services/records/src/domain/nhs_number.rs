//! The NHS number: ten digits, modulus 11 check digit, issuing ranges, and placeholders that pass
//! the arithmetic but are not numbers anyone was given.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NhsNumber(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NhsNumberError {
    /// Not ten digits (spaces allowed between groups).
    Format,
    /// The modulus 11 check digit does not match (or the check value is 10).
    CheckDigit,
    /// All one digit, e.g. 0000000000 or 9999999999.
    Placeholder,
    /// Starts with a range no NHS number is issued from.
    Range,
    /// A 900-999 test number in a production deployment.
    TestNumber,
}

impl NhsNumberError {
    pub fn description(self) -> &'static str {
        match self {
            Self::Format => "must be 10 digits (spaces between groups are allowed)",
            Self::CheckDigit => "is not a valid NHS number: the check digit does not match",
            Self::Placeholder => "is a placeholder, not a real NHS number",
            Self::Range => "is not in a range NHS numbers are issued from",
            Self::TestNumber => "is a test number (900-999 range), not accepted in production",
        }
    }
}

/// Where a number was issued, from its first three digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuingRange {
    EnglandWalesIsleOfMan,
    Scotland,
    NorthernIreland,
    Test,
}

impl NhsNumber {
    /// Parses user input: spaces are removed, everything else must be digits.
    pub fn parse(input: &str, accept_test_numbers: bool) -> Result<Self, NhsNumberError> {
        let digits: String = input.chars().filter(|c| *c != ' ').collect();
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NhsNumberError::Format);
        }
        let d: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect();
        if d.iter().all(|&x| x == d[0]) {
            return Err(NhsNumberError::Placeholder);
        }
        if check_digit(&d[..9]) != Some(d[9]) {
            return Err(NhsNumberError::CheckDigit);
        }
        match issuing_range(&digits) {
            None => Err(NhsNumberError::Range),
            Some(IssuingRange::Test) if !accept_test_numbers => Err(NhsNumberError::TestNumber),
            Some(_) => Ok(Self(digits)),
        }
    }

    /// A number read back from our own database, where it was validated on the way in.
    pub fn from_stored(digits: String) -> Self {
        Self(digits)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn issuing_range(&self) -> IssuingRange {
        issuing_range(&self.0).expect("validated on construction")
    }
}

impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Modulus 11 over the first nine digits with weights 10..2; `None` when the check value is 10.
fn check_digit(first_nine: &[u32]) -> Option<u32> {
    let sum: u32 = first_nine.iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        check => Some(check),
    }
}

fn issuing_range(digits: &str) -> Option<IssuingRange> {
    let prefix: u32 = digits[..3].parse().ok()?;
    match prefix {
        10..=311 => Some(IssuingRange::Scotland),
        320..=399 => Some(IssuingRange::NorthernIreland),
        400..=499 | 600..=799 => Some(IssuingRange::EnglandWalesIsleOfMan),
        900..=999 => Some(IssuingRange::Test),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_vectors() {
        for valid in ["9434765919", "9000000009", "9449305552", "9912003888"] {
            assert!(NhsNumber::parse(valid, true).is_ok(), "{valid}");
        }
        assert_eq!(NhsNumber::parse("9434765918", true), Err(NhsNumberError::CheckDigit));
        assert_eq!(NhsNumber::parse("4123456879", true), Err(NhsNumberError::CheckDigit));
    }

    #[test]
    fn spaces_are_accepted_and_removed() {
        assert_eq!(NhsNumber::parse("943 476 5919", true).unwrap().as_str(), "9434765919");
        assert_eq!(NhsNumber::parse(" 943 476 5919 ", true).unwrap().as_str(), "9434765919");
    }

    #[test]
    fn format_errors() {
        for bad in ["", "943476591", "94347659190", "943-476-5919", "94347659a9", "９４３４７６５９１９"] {
            assert_eq!(NhsNumber::parse(bad, true), Err(NhsNumberError::Format), "{bad}");
        }
    }

    #[test]
    fn placeholders_pass_the_arithmetic_but_are_refused() {
        for digit in 0..=9 {
            let number = digit.to_string().repeat(10);
            assert_eq!(NhsNumber::parse(&number, true), Err(NhsNumberError::Placeholder), "{number}");
        }
    }

    #[test]
    fn check_value_ten_is_invalid() {
        // 000000006: sum = 6 * 2 = 12, 11 - 12 % 11 = 10 -> no valid check digit.
        assert_eq!(check_digit(&[0, 0, 0, 0, 0, 0, 0, 0, 6]), None);
        assert_eq!(NhsNumber::parse("4000000060", true), Err(NhsNumberError::CheckDigit));
    }

    #[test]
    fn issuing_ranges() {
        // Valid check digits computed for each prefix.
        let with_check = |prefix: &str| -> String {
            (0..1000)
                .map(|n| format!("{prefix}{n:06}"))
                .find_map(|nine| {
                    let d: Vec<u32> = nine.bytes().map(|b| u32::from(b - b'0')).collect();
                    check_digit(&d).map(|c| format!("{nine}{c}"))
                })
                .unwrap()
        };
        assert_eq!(NhsNumber::parse(&with_check("401"), false).unwrap().issuing_range(), IssuingRange::EnglandWalesIsleOfMan);
        assert_eq!(NhsNumber::parse(&with_check("650"), false).unwrap().issuing_range(), IssuingRange::EnglandWalesIsleOfMan);
        assert_eq!(NhsNumber::parse(&with_check("010"), false).unwrap().issuing_range(), IssuingRange::Scotland);
        assert_eq!(NhsNumber::parse(&with_check("311"), false).unwrap().issuing_range(), IssuingRange::Scotland);
        assert_eq!(NhsNumber::parse(&with_check("320"), false).unwrap().issuing_range(), IssuingRange::NorthernIreland);
        for unissued in ["001", "315", "500", "599", "800", "899"] {
            assert_eq!(NhsNumber::parse(&with_check(unissued), true), Err(NhsNumberError::Range), "{unissued}");
        }
        assert_eq!(NhsNumber::parse(&with_check("950"), false), Err(NhsNumberError::TestNumber));
        assert_eq!(NhsNumber::parse(&with_check("950"), true).unwrap().issuing_range(), IssuingRange::Test);
    }
}
