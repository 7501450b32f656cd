//! All SQL of the scheduling service, by area (`directory`, `appointments`, `waitlist`, `followed`;
//! re-exported here). The invariants are the schema's: a slot never holds more live
//! appointments than its capacity (`slots_within_capacity`), a patient is never in two live
//! appointments at once (`appointments_patient_no_overlap`), one open waitlist entry per patient and
//! target, one open offer per entry. This module turns their violations into domain errors.
//!
//! Organisation scope: the statements that read or change appointments, waitlist entries and offers
//! for a caller take the caller's scope (`pac_platform::Caller::scope`; `None` when unscoped) and
//! carry it in their `WHERE` clause, so another organisation's row is not found and never listed.
//! Clinics, slots and locations are the shared directory and are not scoped.

use chrono::{DateTime, NaiveDate, Utc};
use pac_platform::error::violated_constraint;
use sqlx::error::ErrorKind;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::appointment::Status;
use crate::domain::cancellation::CancelledBy;
use crate::domain::session::SlotTime;
use crate::error::SchedulingError;
use crate::model::*;

mod appointments;
mod directory;
mod followed;
mod waitlist;

pub use appointments::*;
pub use directory::*;
pub use followed::*;
pub use waitlist::*;

type Result<T> = std::result::Result<T, SchedulingError>;

/// The organisations a caller may see (`None`: every one); see `pac_platform::Caller::scope`.
pub type Scope<'a> = Option<&'a [String]>;
