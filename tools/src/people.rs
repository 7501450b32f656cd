//! Made-up people, clinics and referrals: deterministic (the same run twice makes the same data),
//! shaped like real ones where a benchmark depends on it (name frequencies, birth dates, districts).

use chrono::{Datelike, NaiveDate};
use pac_proto::common::{Address, Date};
use pac_proto::records as pb;
use uuid::Uuid;

/// A small deterministic generator (xorshift64*): the same run twice asks the same questions.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Skewed towards 0, as name frequencies are.
    pub fn skewed(&mut self, n: usize) -> usize {
        let r = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (((n as f64) * r.powf(1.5)) as usize).min(n.saturating_sub(1))
    }

    /// A number in 0..1.
    pub fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Name lists built from syllables: 300 family names, 196 given names.
pub fn names() -> (Vec<String>, Vec<String>) {
    const FAMILY_HEAD: [&str; 20] = [
        "Ash", "Black", "Brad", "Brook", "Cart", "Clay", "Dal", "Fair", "Green", "Hart", "Holm", "Kings", "Lang", "Mar", "Nor", "Pem",
        "Rad", "Sel", "Thorn", "Wood",
    ];
    const FAMILY_TAIL: [&str; 15] =
        ["ford", "ley", "worth", "ton", "wood", "field", "er", "well", "by", "stone", "wick", "ham", "croft", "bury", "man"];
    const GIVEN_HEAD: [&str; 14] = ["Al", "Ben", "Car", "Dan", "El", "Fran", "Ger", "Han", "Is", "Jos", "Kat", "Leo", "Mar", "Ro"];
    const GIVEN_TAIL: [&str; 14] = ["a", "ie", "en", "on", "ina", "ette", "ald", "ias", "ah", "el", "ey", "o", "ine", "us"];
    let family = FAMILY_HEAD.iter().flat_map(|h| FAMILY_TAIL.iter().map(move |t| format!("{h}{t}"))).collect();
    let given = GIVEN_HEAD.iter().flat_map(|h| GIVEN_TAIL.iter().map(move |t| format!("{h}{t}"))).collect();
    (family, given)
}

/// Postcode areas: person `i` lives in district `AREAS[i % 10]` + `1 + (i / 10) % 30` (300 districts).
pub const AREAS: [&str; 10] = ["LS", "M", "B", "CF", "SW", "EH", "G", "BS", "NE", "L"];

pub fn district(i: u64) -> String {
    format!("{}{}", AREAS[(i % 10) as usize], 1 + (i / 10) % 30)
}

/// Person `i`'s birth date: spread over 90 years from 1930.
pub fn birth_date(i: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(1930, 1, 1).expect("a date") + chrono::Duration::days(((i * 7919) % 33_000) as i64)
}

pub fn date(day: NaiveDate) -> Date {
    Date { year: day.year(), month: day.month() as i32, day: day.day() as i32 }
}

/// Person `i` of a population searched by name: names drawn (skewed towards the common ones) with
/// `rng`, a birth date and district from `i`, and a phone of their own (`+447` and `i` in 9 digits).
pub fn searchable_person(i: u64, family: &[String], given: &[String], rng: &mut Rng) -> pb::Patient {
    const INWARD: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";
    let postcode =
        format!("{} {}{}{}", district(i), i % 10, char::from(INWARD[(i % 20) as usize]), char::from(INWARD[((i / 20) % 20) as usize]));
    pb::Patient {
        given_name: given[rng.skewed(given.len())].clone(),
        family_name: family[rng.skewed(family.len())].clone(),
        birth_date: Some(date(birth_date(i))),
        sex: 1 + (i % 2) as i32,
        address: Some(Address { postcode, ..Default::default() }),
        phone: phone(i),
        ..Default::default()
    }
}

pub fn phone(i: u64) -> String {
    format!("+447{:09}", i % 1_000_000_000)
}

/// A person nobody else made from another `seq` resembles: names spelt from the number.
pub fn distinct_person(seq: u64) -> pb::Patient {
    let letters = |mut v: u64, len: usize| -> String {
        (0..len)
            .map(|_| {
                let c = char::from(b'a' + (v % 26) as u8);
                v /= 26;
                c
            })
            .collect()
    };
    pb::Patient {
        given_name: letters(seq, 8),
        family_name: letters(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29), 9),
        birth_date: Some(date(NaiveDate::from_ymd_opt(1930, 1, 1).expect("a date") + chrono::Duration::days((seq % 33_000) as i64))),
        sex: 1 + (seq % 2) as i32,
        address: Some(Address {
            lines: vec!["1 Infirmary Street".into()],
            locality: "Leeds".into(),
            postcode: "LS1 3EX".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a numbered id names; its digit in the id (`00000000-0000-4000-<kind>000-<n in hex>`).
#[derive(Clone, Copy)]
pub enum Kind {
    Slot = 0x8,
    Patient = 0x9,
    Location = 0xa,
    Clinic = 0xb,
    Referral = 0xc,
    Appointment = 0xd,
    MissedAppointment = 0xf,
}

/// The id of thing `n` of a kind, in `space` (0 for the benchmarks, whose baselines name rows by
/// number; a seed of its own otherwise, so that seeds do not collide).
pub fn numbered(kind: Kind, space: u32, n: u64) -> Uuid {
    Uuid::from_u128((u128::from(space) << 96) | (0x4000_u128 << 64) | ((kind as u128) << 60) | u128::from(n & 0xffff_ffff_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_ids_read_as_the_sql_writes_them() {
        assert_eq!(numbered(Kind::Slot, 0, 0x1_0000_0001).to_string(), "00000000-0000-4000-8000-000100000001");
        assert_eq!(numbered(Kind::Clinic, 0, 5).to_string(), "00000000-0000-4000-b000-000000000005");
        assert_eq!(numbered(Kind::Patient, 7, 1).to_string(), "00000007-0000-4000-9000-000000000001");
    }
}
