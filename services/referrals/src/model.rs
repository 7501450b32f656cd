//! The service's records as stored: what the store reads and writes and the operations work on.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use crate::domain::eligibility::{Priority, Rules};
use crate::domain::referral::{RebookReason, Status};
use crate::domain::rtt::{Clock, LaterDnaPolicy};
use crate::domain::worklist::{self, Threshold};

/// A service in the directory.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    pub code: String,
    pub name: String,
    pub specialty: String,
    pub rules: Rules,
    pub target_wait_days: i32,
    pub thresholds: Vec<Threshold>,
    pub later_dna: LaterDnaPolicy,
    pub created_at: DateTime<Utc>,
    /// The organisation that provides the service and receives its referrals (`''`: none).
    pub organisation: String,
}

#[derive(Debug, Clone)]
pub struct Referral {
    pub id: Uuid,
    pub version: i32,
    pub patient_id: Uuid,
    pub service_code: String,
    pub priority: Priority,
    pub status: Status,
    pub referrer_organisation: String,
    pub referrer_clinician: String,
    pub source: String,
    pub reason: String,
    pub information: Vec<String>,
    pub received_at: DateTime<Utc>,
    pub clock: Clock,
    pub appointment_ids: Vec<Uuid>,
    pub current_appointment_id: Option<Uuid>,
    pub rebook_reason: Option<RebookReason>,
    pub dna_follow_up: bool,
    /// Appointments missed and attended, oldest first.
    pub missed: Vec<Uuid>,
    pub attended: Vec<Uuid>,
    pub triage_code: String,
    pub triage_text: String,
    pub redirected_to: Option<Uuid>,
    pub redirected_from: Option<Uuid>,
    pub status_since: DateTime<Utc>,
    pub stuck_after: Option<DateTime<Utc>>,
    pub open_tasks: i32,
    pub unassigned_tasks: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The receiving organisation: its service's. Never changes.
    pub organisation: String,
}

impl Referral {
    pub fn etag(&self) -> String {
        self.version.to_string()
    }

    /// Moves to `status` at `at`: the time in status and the stuck deadline start again.
    pub fn enter(&mut self, status: Status, at: DateTime<Utc>, service: &ServiceEntry) {
        if status != self.status {
            self.status = status;
            self.status_since = at;
        }
        self.stuck_after = worklist::stuck_after(&service.thresholds, self.status, self.priority, self.status_since);
    }

    pub fn is_stuck(&self, now: DateTime<Utc>) -> bool {
        !self.status.is_terminal() && self.stuck_after.is_some_and(|at| at <= now)
    }
}

#[derive(Debug, Clone)]
pub struct Note {
    pub id: Uuid,
    pub referral_id: Uuid,
    pub task: bool,
    pub text: String,
    pub team: String,
    pub due_date: Option<NaiveDate>,
    pub completed_at: Option<DateTime<Utc>>,
    pub author: pac_platform::Actor,
    pub created_at: DateTime<Utc>,
}

/// A worklist's filters.
#[derive(Debug, Clone, Default)]
pub struct Worklist {
    pub statuses: Vec<Status>,
    pub service_code: Option<String>,
    pub patient_id: Option<Uuid>,
    pub priorities: Vec<Priority>,
    /// Only clocks breaching on or before this day.
    pub breaching_by: Option<NaiveDate>,
    pub dna_follow_up: bool,
    pub unassigned_tasks: bool,
    pub stuck_at: Option<DateTime<Utc>>,
}

/// A worklist position: (worklist date, id) of the last row returned.
pub type WorklistKey = (NaiveDate, Uuid);
