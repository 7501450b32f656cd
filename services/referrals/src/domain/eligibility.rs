//! Service entry rules as data, and the eligibility check: yes or no, with every reason in plain
//! language (a coordinator reads them to the referrer).

use chrono::{Datelike, NaiveDate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Male,
    Female,
    Other,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Routine = 1,
    Urgent = 2,
    TwoWeekWait = 3,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Routine, Priority::Urgent, Priority::TwoWeekWait];

    /// The stored and wire value (1..3).
    pub fn value(self) -> i16 {
        self as i16
    }

    pub fn from_value(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|p| i32::from(p.value()) == value)
    }
}

impl Sex {
    /// The stored and wire value (1..4).
    pub fn value(self) -> i16 {
        match self {
            Self::Male => 1,
            Self::Female => 2,
            Self::Other => 3,
            Self::Unknown => 4,
        }
    }

    pub fn from_value(value: i32) -> Option<Self> {
        [Self::Male, Self::Female, Self::Other, Self::Unknown].into_iter().find(|s| i32::from(s.value()) == value)
    }
}

/// A service's entry rules. Empty lists and unset bounds mean "no rule".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Youngest age accepted, in whole years on the day of referral.
    pub min_age: Option<u32>,
    /// Oldest age accepted.
    pub max_age: Option<u32>,
    pub sexes: Vec<Sex>,
    /// Referral sources accepted, e.g. "GP", "A&E", "OPTOMETRIST".
    pub sources: Vec<String>,
    pub priorities: Vec<Priority>,
    /// Postcode districts served, e.g. "LS1", "LS6".
    pub catchment: Vec<String>,
    /// Information a referral must carry, e.g. "X-ray report".
    pub required_information: Vec<String>,
}

/// What is known of a referral when eligibility is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicant {
    pub birth_date: NaiveDate,
    pub sex: Sex,
    /// Postcode district of the patient's address, when known.
    pub district: Option<String>,
    /// The referral's source, priority and information: rules about them are checked only when
    /// they are known (an eligibility check before a referral is written may not know them).
    pub source: Option<String>,
    pub priority: Option<Priority>,
    pub information: Option<Vec<String>>,
}

/// One reason a referral does not fit, with a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub code: &'static str,
    pub message: String,
}

/// Whole years of age on `on`.
pub fn age_on(birth_date: NaiveDate, on: NaiveDate) -> u32 {
    let mut age = on.year() - birth_date.year();
    if (on.month(), on.day()) < (birth_date.month(), birth_date.day()) {
        age -= 1;
    }
    age.max(0) as u32
}

fn sex_name(sex: Sex) -> &'static str {
    match sex {
        Sex::Male => "male",
        Sex::Female => "female",
        Sex::Other => "other",
        Sex::Unknown => "not known",
    }
}

fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::Routine => "routine",
        Priority::Urgent => "urgent",
        Priority::TwoWeekWait => "two-week wait",
    }
}

/// Every rule the applicant breaks; empty means eligible.
pub fn check(rules: &Rules, applicant: &Applicant, on: NaiveDate) -> Vec<Reason> {
    let mut reasons = Vec::new();
    let age = age_on(applicant.birth_date, on);
    if let Some(min) = rules.min_age.filter(|min| age < *min) {
        reasons.push(Reason {
            code: "AGE_BELOW_MINIMUM",
            message: format!("the patient is {age}; this service sees patients aged {min} and over"),
        });
    }
    if let Some(max) = rules.max_age.filter(|max| age > *max) {
        reasons.push(Reason {
            code: "AGE_ABOVE_MAXIMUM",
            message: format!("the patient is {age}; this service sees patients aged up to {max}"),
        });
    }
    if !rules.sexes.is_empty() && !rules.sexes.contains(&applicant.sex) {
        let accepted: Vec<&str> = rules.sexes.iter().map(|s| sex_name(*s)).collect();
        reasons.push(Reason {
            code: "SEX_NOT_ACCEPTED",
            message: format!(
                "this service sees {} patients; the patient's recorded sex is {}",
                accepted.join(" or "),
                sex_name(applicant.sex)
            ),
        });
    }
    if let Some(source) = applicant.source.as_deref().map(str::trim)
        && !rules.sources.is_empty()
        && !rules.sources.iter().any(|s| s.eq_ignore_ascii_case(source))
    {
        reasons.push(Reason {
            code: "SOURCE_NOT_ACCEPTED",
            message: format!("this service accepts referrals from {}, not from {source}", rules.sources.join(", ")),
        });
    }
    if let Some(priority) = applicant.priority
        && !rules.priorities.is_empty()
        && !rules.priorities.contains(&priority)
    {
        let accepted: Vec<&str> = rules.priorities.iter().map(|p| priority_name(*p)).collect();
        reasons.push(Reason {
            code: "PRIORITY_NOT_ACCEPTED",
            message: format!("this service accepts {} referrals, not {}", accepted.join(" or "), priority_name(priority)),
        });
    }
    if !rules.catchment.is_empty() {
        match applicant.district.as_deref().map(|d| d.trim().to_uppercase()) {
            Some(district) if rules.catchment.iter().any(|c| c.eq_ignore_ascii_case(&district)) => {}
            // The patient's own district is not named: the address may be a restricted record's.
            Some(_) => reasons.push(Reason {
                code: "OUTSIDE_CATCHMENT",
                message: format!("the patient's address is outside this service's area ({})", rules.catchment.join(", ")),
            }),
            None => reasons.push(Reason {
                code: "ADDRESS_UNKNOWN",
                message: "this service has a catchment area and the patient's postcode is not recorded".into(),
            }),
        }
    }
    if let Some(given) = &applicant.information {
        for required in &rules.required_information {
            if !given.iter().any(|g| g.trim().eq_ignore_ascii_case(required.trim())) {
                reasons.push(Reason { code: "INFORMATION_MISSING", message: format!("the referral must include: {required}") });
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn breast_clinic() -> Rules {
        Rules {
            min_age: Some(16),
            max_age: Some(120),
            sexes: vec![Sex::Female, Sex::Male],
            sources: vec!["GP".into(), "SCREENING".into()],
            priorities: vec![Priority::TwoWeekWait, Priority::Urgent],
            catchment: vec!["LS1".into(), "LS6".into()],
            required_information: vec!["Examination findings".into()],
        }
    }

    fn applicant() -> Applicant {
        Applicant {
            birth_date: d(1970, 3, 14),
            sex: Sex::Female,
            district: Some("ls6".into()),
            source: Some("gp".into()),
            priority: Some(Priority::TwoWeekWait),
            information: Some(vec!["examination findings".into()]),
        }
    }

    #[test]
    fn a_fitting_referral_is_eligible() {
        assert_eq!(check(&breast_clinic(), &applicant(), d(2026, 11, 25)), []);
        assert_eq!(check(&Rules::default(), &applicant(), d(2026, 11, 25)), [], "no rules, no reasons");
    }

    #[test]
    fn each_rule_rejects_and_says_why() {
        let today = d(2026, 11, 25);
        let codes = |a: Applicant| check(&breast_clinic(), &a, today).into_iter().map(|r| r.code).collect::<Vec<_>>();
        assert_eq!(codes(Applicant { birth_date: d(2011, 1, 1), ..applicant() }), ["AGE_BELOW_MINIMUM"]);
        assert_eq!(codes(Applicant { sex: Sex::Unknown, ..applicant() }), ["SEX_NOT_ACCEPTED"]);
        assert_eq!(codes(Applicant { source: Some("Optometrist".into()), ..applicant() }), ["SOURCE_NOT_ACCEPTED"]);
        assert_eq!(codes(Applicant { priority: Some(Priority::Routine), ..applicant() }), ["PRIORITY_NOT_ACCEPTED"]);
        assert_eq!(codes(Applicant { district: Some("M1".into()), ..applicant() }), ["OUTSIDE_CATCHMENT"]);
        assert_eq!(codes(Applicant { district: None, ..applicant() }), ["ADDRESS_UNKNOWN"]);
        assert_eq!(codes(Applicant { information: Some(vec![]), ..applicant() }), ["INFORMATION_MISSING"]);
        let old = Rules { max_age: Some(18), ..breast_clinic() };
        let reasons = check(&old, &applicant(), today);
        assert_eq!(reasons[0].message, "the patient is 56; this service sees patients aged up to 18");
        let many = codes(Applicant { district: Some("M1".into()), priority: Some(Priority::Routine), ..applicant() });
        assert_eq!(many, ["PRIORITY_NOT_ACCEPTED", "OUTSIDE_CATCHMENT"], "every reason, not just the first");
        let unknown = Applicant { source: None, priority: None, information: None, ..applicant() };
        assert_eq!(codes(unknown), Vec::<&str>::new(), "rules about unknown referral facts are not checked");
    }

    #[test]
    fn age_counts_whole_years_on_the_day() {
        assert_eq!(age_on(d(2010, 11, 26), d(2026, 11, 25)), 15);
        assert_eq!(age_on(d(2010, 11, 25), d(2026, 11, 25)), 16);
        assert_eq!(age_on(d(2008, 2, 29), d(2026, 2, 28)), 17);
        assert_eq!(age_on(d(2008, 2, 29), d(2026, 3, 1)), 18);
    }
}
