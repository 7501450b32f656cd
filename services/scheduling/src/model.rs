//! The service's records as stored: what the store reads and writes and the operations work on.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use uuid::Uuid;

use crate::domain::appointment::Status;
use crate::domain::cancellation::CancelledBy;
use crate::domain::waitlist::{self, Priority};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Location {
    pub id: Uuid,
    pub name: String,
    pub address_lines: Vec<String>,
    pub locality: String,
    pub postcode: String,
    pub directions: String,
    pub access_notes: Vec<String>,
    pub parking: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Clinic {
    pub id: Uuid,
    pub location_id: Uuid,
    pub name: String,
    pub specialty: String,
    pub service_code: String,
    pub time_zone: String,
    pub what_to_bring: Vec<String>,
    /// The organisation that runs the clinic and owns its appointments (`''`: none). Never changes.
    pub organisation: String,
}

impl Clinic {
    /// The clinic's zone; validated when the clinic was created.
    pub fn zone(&self) -> chrono_tz::Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Template {
    pub id: Uuid,
    pub clinic_id: Uuid,
    pub weekday: i16,
    pub start_time: NaiveTime,
    pub end_time: NaiveTime,
    pub slot_minutes: i32,
    pub capacity: i32,
    pub valid_from: NaiveDate,
    pub valid_until: Option<NaiveDate>,
    pub generated_until: Option<NaiveDate>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Slot {
    pub id: Uuid,
    pub clinic_id: Uuid,
    pub service_code: String,
    pub location_id: Uuid,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub local_date: NaiveDate,
    pub local_start: NaiveTime,
    pub capacity: i32,
    pub occupied: i32,
    /// The clinic's organisation.
    pub organisation: String,
}

#[derive(Debug, Clone)]
pub struct Cancellation {
    pub reason_code: String,
    pub by: CancelledBy,
    pub late: bool,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Appointment {
    pub id: Uuid,
    pub version: i64,
    pub slot_id: Uuid,
    pub clinic_id: Uuid,
    pub patient_id: Uuid,
    pub referral_id: Option<Uuid>,
    pub status: Status,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub hold_expires_at: Option<DateTime<Utc>>,
    pub cancellation: Option<Cancellation>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Its clinic's organisation (copied from the slot; a reschedule takes the new slot's).
    pub organisation: String,
    /// Its clinic's service code (copied from the slot, as the organisation is).
    pub service_code: String,
    /// The subject of the caller whose HoldSlot made it; `None` for anything else (bookings,
    /// waitlist offers). Counts towards that caller's live holds while it is pending.
    pub held_by: Option<String>,
}

impl Appointment {
    pub fn etag(&self) -> String {
        self.version.to_string()
    }

    /// A new appointment in `slot`, created now.
    pub fn new(slot: &Slot, patient_id: Uuid, referral_id: Option<Uuid>, status: Status, hold_expires_at: Option<DateTime<Utc>>) -> Self {
        let now = pac_platform::now();
        Self {
            id: Uuid::now_v7(),
            version: 1,
            slot_id: slot.id,
            clinic_id: slot.clinic_id,
            patient_id,
            referral_id,
            status,
            start_time: slot.start_time,
            end_time: slot.end_time,
            hold_expires_at,
            cancellation: None,
            created_at: now,
            updated_at: now,
            organisation: slot.organisation.clone(),
            service_code: slot.service_code.clone(),
            held_by: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Target {
    Clinic(Uuid),
    Service(String),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub target: Target,
    pub earliest_date: Option<NaiveDate>,
    pub latest_date: Option<NaiveDate>,
    pub priority: Priority,
    pub breach_date: Option<NaiveDate>,
    pub referral_id: Option<Uuid>,
    pub added_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The organisation whose clinics may offer it a slot: a clinic's own, or for a service code the
    /// one chosen when the entry was added.
    pub organisation: String,
}

impl Entry {
    pub fn ranking(&self) -> waitlist::Entry {
        waitlist::Entry {
            priority: self.priority,
            breach_date: self.breach_date,
            added_at: self.added_at,
            earliest: self.earliest_date,
            latest: self.latest_date,
        }
    }
}

pub fn priority_code(priority: Priority) -> i16 {
    match priority {
        Priority::Routine => 1,
        Priority::Urgent => 2,
        Priority::TwoWeekWait => 3,
    }
}

pub fn priority_from_code(code: i16) -> Option<Priority> {
    match code {
        1 => Some(Priority::Routine),
        2 => Some(Priority::Urgent),
        3 => Some(Priority::TwoWeekWait),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferOutcome {
    Open,
    Accepted,
    Declined,
    Expired,
    Withdrawn,
}

impl OfferOutcome {
    pub fn code(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Accepted => "accepted",
            Self::Declined => "declined",
            Self::Expired => "expired",
            Self::Withdrawn => "withdrawn",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        [Self::Open, Self::Accepted, Self::Declined, Self::Expired, Self::Withdrawn].into_iter().find(|o| o.code() == code)
    }
}

#[derive(Debug, Clone)]
pub struct Offer {
    pub id: Uuid,
    pub entry_id: Uuid,
    pub appointment_id: Uuid,
    pub slot_id: Uuid,
    pub offered_at: DateTime<Utc>,
    pub notice_hours: i32,
    pub expires_at: DateTime<Utc>,
    pub outcome: OfferOutcome,
}
