//! Duplicate scoring: how likely two sets of demographics are the same person. A simple weighted
//! agreement score (names by phonetic code and edit distance, birth date allowing a typo, sex,
//! postcode, phone); identical NHS numbers are the same person and different ones are not.
//! The grade thresholds are local policy and come from configuration.

use chrono::{Datelike, NaiveDate};
use rphonetic::{DoubleMetaphone, Encoder};
use strsim::jaro_winkler;

use super::demographics::name_key;
use super::patient::Sex;

/// The comparison view of a patient.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchProfile {
    pub given_key: String,
    pub family_key: String,
    pub family_phonetic: String,
    pub birth_date: Option<NaiveDate>,
    pub sex: Sex,
    pub postcode: Option<String>,
    pub phone: Option<String>,
    pub nhs_number: Option<String>,
}

impl MatchProfile {
    pub fn new(
        given_name: &str,
        family_name: &str,
        birth_date: Option<NaiveDate>,
        sex: Sex,
        postcode: Option<String>,
        phone: Option<String>,
        nhs_number: Option<String>,
    ) -> Self {
        let family_key = name_key(family_name);
        Self {
            given_key: name_key(given_name),
            family_phonetic: phonetic(&family_key),
            family_key,
            birth_date,
            sex,
            postcode,
            phone,
            nhs_number,
        }
    }
}

/// Double Metaphone code of a name key (spaces and hyphen parts joined), the index key for candidates.
pub fn phonetic(key: &str) -> String {
    let joined: String = key.chars().filter(|c| c.is_ascii_alphabetic()).collect();
    if joined.is_empty() {
        return String::new();
    }
    DoubleMetaphone::default().encode(&joined)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grade {
    Match,
    PossibleMatch,
}

/// Score thresholds for the grades.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub matched: f64,
    pub possible: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { matched: 0.80, possible: 0.60 }
    }
}

impl Thresholds {
    pub fn grade(&self, score: f64) -> Option<Grade> {
        if score >= self.matched {
            Some(Grade::Match)
        } else if score >= self.possible {
            Some(Grade::PossibleMatch)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// 0..1.
    pub value: f64,
    pub matched_on: Vec<&'static str>,
}

/// Scores `candidate` against `probe`.
pub fn score(probe: &MatchProfile, candidate: &MatchProfile) -> Score {
    if let (Some(a), Some(b)) = (&probe.nhs_number, &candidate.nhs_number) {
        return if a == b { Score { value: 1.0, matched_on: vec!["nhs_number"] } } else { Score { value: 0.0, matched_on: vec![] } };
    }
    let mut value = 0.0;
    let mut matched_on = Vec::new();
    let mut agree = |weight: f64, field: &'static str| {
        value += weight;
        if weight > 0.0 {
            matched_on.push(field);
        }
    };

    // Family name.
    if !probe.family_key.is_empty() && probe.family_key == candidate.family_key {
        agree(0.22, "family_name");
    } else if !probe.family_phonetic.is_empty() && probe.family_phonetic == candidate.family_phonetic {
        agree(0.15, "family_name~phonetic");
    } else if jaro_winkler(&probe.family_key, &candidate.family_key) >= 0.92 {
        agree(0.15, "family_name~spelling");
    }

    // Given name: exact, near, shortened ("Jon" / "Jonathan"), initial only; clearly different counts against.
    let (a, b) = (&probe.given_key, &candidate.given_key);
    if !a.is_empty() && a == b {
        agree(0.15, "given_name");
    } else if jaro_winkler(a, b) >= 0.90 || (a.len() >= 3 && b.len() >= 3 && (a.starts_with(b.as_str()) || b.starts_with(a.as_str()))) {
        agree(0.10, "given_name~spelling");
    } else if a.chars().next().is_some() && a.chars().next() == b.chars().next() {
        agree(0.04, "given_name~initial");
    } else if jaro_winkler(a, b) < 0.70 {
        agree(-0.15, "given_name");
    }

    // Birth date: exact, or one typo (one part different, or day and month swapped).
    if let (Some(x), Some(y)) = (probe.birth_date, candidate.birth_date) {
        if x == y {
            agree(0.33, "birth_date");
        } else {
            let same = [x.year() == y.year(), x.month() == y.month(), x.day() == y.day()];
            let swapped = x.year() == y.year() && x.month() == y.day() && x.day() == y.month();
            if same.iter().filter(|s| **s).count() == 2 || swapped {
                agree(0.15, "birth_date~typo");
            }
        }
    }

    if probe.sex.is_known() && candidate.sex.is_known() {
        agree(if probe.sex == candidate.sex { 0.05 } else { -0.10 }, "sex");
    }

    if let (Some(x), Some(y)) = (&probe.postcode, &candidate.postcode) {
        if x == y {
            agree(0.12, "postcode");
        } else if x.split(' ').next() == y.split(' ').next() {
            agree(0.05, "postcode~district");
        }
    }

    if probe.phone.is_some() && probe.phone == candidate.phone {
        agree(0.13, "phone");
    }

    Score { value: value.clamp(0.0, 1.0), matched_on }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(given: &str, family: &str, dob: (i32, u32, u32), sex: Sex, postcode: &str, phone: &str) -> MatchProfile {
        MatchProfile::new(
            given,
            family,
            NaiveDate::from_ymd_opt(dob.0, dob.1, dob.2),
            sex,
            (!postcode.is_empty()).then(|| postcode.to_string()),
            (!phone.is_empty()).then(|| phone.to_string()),
            None,
        )
    }

    fn grade(a: &MatchProfile, b: &MatchProfile) -> Option<Grade> {
        Thresholds::default().grade(score(a, b).value)
    }

    #[test]
    fn same_person_retyped_is_a_match() {
        let a = profile("John", "Smith", (1970, 3, 14), Sex::Male, "LS1 4AP", "+447700900123");
        let b = profile("John", "Smyth", (1970, 3, 14), Sex::Male, "LS1 4AP", "");
        assert_eq!(grade(&a, &b), Some(Grade::Match), "{:?}", score(&a, &b));
        let c = profile("Jon", "Smyth", (1970, 3, 14), Sex::Male, "LS1 4AP", "");
        assert_eq!(grade(&a, &c), Some(Grade::PossibleMatch), "{:?}", score(&a, &c));
    }

    #[test]
    fn same_name_and_birth_date_alone_is_possible() {
        let a = profile("Aisha", "Khan", (1988, 7, 2), Sex::Female, "", "");
        let b = profile("Aisha", "Khan", (1988, 7, 2), Sex::Female, "M1 1AE", "");
        assert_eq!(grade(&a, &b), Some(Grade::PossibleMatch));
    }

    #[test]
    fn birth_date_typo_and_swap_still_count() {
        let a = profile("Aisha", "Khan", (1988, 7, 2), Sex::Female, "M1 1AE", "+447700900001");
        let typo = profile("Aisha", "Khan", (1988, 7, 3), Sex::Female, "M1 1AE", "+447700900001");
        let swapped = profile("Aisha", "Khan", (1988, 2, 7), Sex::Female, "M1 1AE", "+447700900001");
        assert!(grade(&a, &typo).is_some());
        assert!(score(&a, &swapped).matched_on.contains(&"birth_date~typo"));
    }

    #[test]
    fn twins_are_not_a_match() {
        let a = profile("Oliver", "Jones", (2001, 5, 5), Sex::Male, "B33 8TH", "+447700900002");
        let b = profile("Harriet", "Jones", (2001, 5, 5), Sex::Female, "B33 8TH", "+447700900002");
        assert_ne!(grade(&a, &b), Some(Grade::Match), "{:?}", score(&a, &b));
    }

    #[test]
    fn strangers_do_not_match() {
        let a = profile("Oliver", "Jones", (2001, 5, 5), Sex::Male, "B33 8TH", "");
        let b = profile("Priya", "Patel", (1960, 1, 9), Sex::Female, "LS1 4AP", "");
        assert_eq!(grade(&a, &b), None);
        assert_eq!(score(&a, &b).value, 0.0);
    }

    #[test]
    fn nhs_numbers_decide_when_both_present() {
        let mut a = profile("A", "B", (2000, 1, 1), Sex::Male, "", "");
        let mut b = a.clone();
        a.nhs_number = Some("9434765919".into());
        b.nhs_number = Some("9434765919".into());
        assert_eq!(score(&a, &b).value, 1.0);
        b.nhs_number = Some("9000000009".into());
        assert_eq!(score(&a, &b).value, 0.0);
    }

    #[test]
    fn phonetic_codes() {
        assert_eq!(phonetic("smith"), phonetic("smyth"));
        assert_eq!(phonetic("obrien smith"), phonetic("obriensmith"));
        assert_eq!(phonetic(""), "");
    }
}
