//! Demographic value types. Each `parse` takes what a person typed and returns the normalised value
//! or a sentence saying what is wrong; once built, a value is valid.

use chrono::NaiveDate;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// A given or family name: letters with spaces, hyphens, apostrophes and full stops; 1-100 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        let collapsed = input.split_whitespace().collect::<Vec<_>>().join(" ");
        if collapsed.is_empty() {
            return Err("is required");
        }
        if collapsed.chars().count() > 100 {
            return Err("must be at most 100 characters");
        }
        if !collapsed.chars().all(|c| c.is_alphabetic() || is_combining_mark(c) || " -'’.".contains(c)) {
            return Err("may contain only letters, spaces, hyphens, apostrophes and full stops");
        }
        if !collapsed.chars().any(char::is_alphabetic) {
            return Err("must contain a letter");
        }
        Ok(Self(collapsed))
    }

    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The form names are compared in: accents removed, lower case, hyphens as spaces, apostrophes and
/// full stops dropped ("O'Brien-Smith" -> "obrien smith").
pub fn name_key(name: &str) -> String {
    let folded: String = name
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            '-' => Some(' '),
            '\'' | '’' | '.' => None,
            c if c.is_alphanumeric() || c == ' ' => Some(c),
            _ => Some(' '),
        })
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A UK postcode, normalised to upper case with one space before the inward code ("LS1 4AP").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postcode(String);

impl Postcode {
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        let compact: String = input.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_uppercase).collect();
        if compact == "GIR0AA" {
            return Ok(Self("GIR 0AA".into()));
        }
        if !(5..=7).contains(&compact.len()) || !compact.is_ascii() {
            return Err("is not a UK postcode (e.g. \"LS1 4AP\")");
        }
        let (outward, inward) = compact.split_at(compact.len() - 3);
        if !is_outward_code(outward) || !is_inward_code(inward) {
            return Err("is not a UK postcode (e.g. \"LS1 4AP\")");
        }
        Ok(Self(format!("{outward} {inward}")))
    }

    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The outward code ("LS1" of "LS1 4AP").
    pub fn outward(&self) -> &str {
        self.0.split(' ').next().unwrap_or(&self.0)
    }
}

/// A search filter: a whole postcode or just its outward code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostcodeFilter {
    Full(Postcode),
    Outward(String),
}

impl PostcodeFilter {
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        let compact: String = input.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_uppercase).collect();
        if compact.len() <= 4 && is_outward_code(&compact) {
            return Ok(Self::Outward(compact));
        }
        Postcode::parse(input).map(Self::Full).map_err(|_| "is not a UK postcode or outward code (e.g. \"LS1 4AP\" or \"LS1\")")
    }
}

/// A9, A99, AA9, AA99, A9A, AA9A.
fn is_outward_code(code: &str) -> bool {
    let b = code.as_bytes();
    let alpha = |i: usize| b.get(i).is_some_and(u8::is_ascii_uppercase);
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let alnum = |i: usize| alpha(i) || digit(i);
    match b.len() {
        2 => alpha(0) && digit(1),
        3 => alpha(0) && ((digit(1) && alnum(2)) || (alpha(1) && digit(2))),
        4 => alpha(0) && alpha(1) && digit(2) && alnum(3),
        _ => false,
    }
}

/// 9AA, where the letters are never C, I, K, M, O or V.
fn is_inward_code(code: &str) -> bool {
    let b = code.as_bytes();
    let letter = |c: u8| c.is_ascii_uppercase() && !b"CIKMOV".contains(&c);
    b.len() == 3 && b[0].is_ascii_digit() && letter(b[1]) && letter(b[2])
}

/// A phone number in E.164 form ("+447700900123"). UK national numbers ("07700 900123") are converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        const WRONG: &str = "is not a phone number (UK national like \"07700 900123\" or international like \"+44 7700 900123\")";
        let trimmed = input.trim();
        if !trimmed.chars().all(|c| c.is_ascii_digit() || " +-().".contains(c)) {
            return Err(WRONG);
        }
        let plus = trimmed.starts_with('+');
        if trimmed.chars().skip(1).any(|c| c == '+') {
            return Err(WRONG);
        }
        let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
        let international = if plus {
            digits
        } else if let Some(rest) = digits.strip_prefix("00") {
            rest.to_string()
        } else if let Some(rest) = digits.strip_prefix('0') {
            if !(9..=10).contains(&rest.len()) {
                return Err(WRONG);
            }
            format!("44{rest}")
        } else {
            return Err(WRONG);
        };
        if !(8..=15).contains(&international.len()) || international.starts_with('0') {
            return Err(WRONG);
        }
        Ok(Self(format!("+{international}")))
    }

    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address: one `@`, a dotted domain, no spaces, at most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        let value = input.trim();
        let valid = value.len() <= 254
            && !value.chars().any(|c| c.is_whitespace() || c.is_control())
            && match value.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty() && !domain.contains('@') && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
                }
                None => false,
            };
        if !valid {
            return Err("is not an email address");
        }
        let (local, domain) = value.split_once('@').expect("checked above");
        Ok(Self(format!("{local}@{}", domain.to_lowercase())))
    }

    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Organisation codes are shared with the other services.
pub use pac_platform::codes::OdsCode;

/// A BCP 47 language tag ("en", "pl", "pt-BR").
pub fn parse_language(input: &str) -> Result<String, &'static str> {
    let value = input.trim();
    let mut parts = value.split('-');
    let primary = parts.next().unwrap_or("");
    let valid = (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !valid {
        return Err("is not a language tag (e.g. \"en\", \"pl\", \"pt-BR\")");
    }
    Ok(value.to_string())
}

/// A date of birth: a real calendar date, not in the future, not before 1880.
pub fn parse_birth_date(year: i32, month: i32, day: i32, today: NaiveDate) -> Result<NaiveDate, &'static str> {
    let date = NaiveDate::from_ymd_opt(year, u32::try_from(month).unwrap_or(0), u32::try_from(day).unwrap_or(0))
        .ok_or("is not a calendar date")?;
    if date > today {
        return Err("is in the future");
    }
    if year < 1880 {
        return Err("is before 1880");
    }
    Ok(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(PersonName::parse("  Mary   Anne ").unwrap().as_str(), "Mary Anne");
        assert!(PersonName::parse("O'Brien-Smith").is_ok());
        assert!(PersonName::parse("Zoë").is_ok());
        assert!(PersonName::parse("Nguyễn").is_ok());
        assert!(PersonName::parse("").is_err());
        assert!(PersonName::parse("   ").is_err());
        assert!(PersonName::parse("R2D2").is_err());
        assert!(PersonName::parse("'-.").is_err());
        assert!(PersonName::parse(&"a".repeat(101)).is_err());
        assert!(PersonName::parse("Robert'); DROP TABLE").is_err());
    }

    #[test]
    fn name_keys_fold_accents_case_and_punctuation() {
        assert_eq!(name_key("O'Brien-Smith"), "obrien smith");
        assert_eq!(name_key("ZOË"), "zoe");
        assert_eq!(name_key("  Mary  Anne "), "mary anne");
        assert_eq!(name_key("St. John"), "st john");
    }

    #[test]
    fn postcodes() {
        for (input, normal) in [
            ("ls1 4ap", "LS1 4AP"),
            ("SW1A1AA", "SW1A 1AA"),
            ("M1 1AE", "M1 1AE"),
            ("B33 8TH", "B33 8TH"),
            ("CR2 6XH", "CR2 6XH"),
            ("DN55 1PT", "DN55 1PT"),
            ("W1A 0AX", "W1A 0AX"),
            ("EC1A 1BB", "EC1A 1BB"),
            ("gir 0aa", "GIR 0AA"),
        ] {
            let postcode = Postcode::parse(input).unwrap();
            assert_eq!(postcode.as_str(), normal);
        }
        assert_eq!(Postcode::parse("LS1 4AP").unwrap().outward(), "LS1");
        for bad in ["", "LS1", "LS1 4A", "1S1 4AP", "LS1 4CP", "LS1 AAP", "LSS1 4AP", "LS1 4AP X", "ŁS1 4AP"] {
            assert!(Postcode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn postcode_filters() {
        assert_eq!(PostcodeFilter::parse("ls1").unwrap(), PostcodeFilter::Outward("LS1".into()));
        assert_eq!(PostcodeFilter::parse("SW1A").unwrap(), PostcodeFilter::Outward("SW1A".into()));
        assert!(matches!(PostcodeFilter::parse("ls1 4ap").unwrap(), PostcodeFilter::Full(_)));
        assert!(PostcodeFilter::parse("zzz").is_err());
    }

    #[test]
    fn phones() {
        for (input, e164) in [
            ("07700 900123", "+447700900123"),
            ("+44 7700 900123", "+447700900123"),
            ("0044 7700 900123", "+447700900123"),
            ("(0113) 496 0000", "+441134960000"),
            ("+1 202-555-0142", "+12025550142"),
        ] {
            assert_eq!(Phone::parse(input).unwrap().as_str(), e164, "{input}");
        }
        for bad in ["", "hello", "7700900123", "0770090", "+44 7700 900123 ext 4", "++447700900123", "+0123456789"] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(Email::parse(" Pat@Example.NHS.uk ").unwrap().as_str(), "Pat@example.nhs.uk");
        for bad in ["", "pat", "pat@", "@x.uk", "pat@nhs", "pat@@nhs.uk", "pat smith@nhs.uk", "pat@.uk"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ods_codes_languages_dates_text() {
        assert_eq!(OdsCode::parse("b86001").unwrap().as_str(), "B86001");
        assert!(OdsCode::parse("RR8").is_ok());
        assert!(OdsCode::parse("R-8").is_err());
        assert!(parse_language("pt-BR").is_ok());
        assert!(parse_language("english language").is_err());
        let today = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        assert!(parse_birth_date(2024, 2, 29, today).is_ok());
        assert_eq!(parse_birth_date(2023, 2, 29, today), Err("is not a calendar date"));
        assert_eq!(parse_birth_date(2026, 11, 26, today), Err("is in the future"));
        assert_eq!(parse_birth_date(1870, 1, 1, today), Err("is before 1880"));
        assert_eq!(parse_birth_date(2000, 13, 1, today), Err("is not a calendar date"));
        assert_eq!(parse_birth_date(2000, -1, 1, today), Err("is not a calendar date"));
    }
}
