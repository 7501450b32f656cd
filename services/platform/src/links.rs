//! References from one service's object to another's. An appointment or waitlist entry (scheduling)
//! may name a referral (referrals); the link holds only between objects of the same patient, the
//! same organisation and the same service. Scheduling checks it when it books, reschedules or adds
//! to the waitlist (asking referrals), and referrals checks it again when it follows the booking, so
//! no path — a direct call, the gateway, the access API or an event replayed — links the wrong
//! referral.
//!
//! The refusals' reasons are stable (`FAILED_PRECONDITION`): [`REFERRAL_NOT_FOUND`] (unknown, or of
//! an organisation the caller does not act for), [`REFERRAL_PATIENT_MISMATCH`],
//! [`REFERRAL_SERVICE_MISMATCH`], [`REFERRAL_NOT_BOOKABLE`].

use uuid::Uuid;

pub const REFERRAL_NOT_FOUND: &str = "REFERRAL_NOT_FOUND";
pub const REFERRAL_PATIENT_MISMATCH: &str = "REFERRAL_PATIENT_MISMATCH";
pub const REFERRAL_SERVICE_MISMATCH: &str = "REFERRAL_SERVICE_MISMATCH";
pub const REFERRAL_NOT_BOOKABLE: &str = "REFERRAL_NOT_BOOKABLE";

/// Whose an object is: its patient (the current record), its organisation and its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    pub patient_id: Uuid,
    pub organisation: &'a str,
    pub service_code: &'a str,
}

/// Why a link does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The objects are of different patients.
    Patient,
    /// The objects are for different services, or for one service code at different organisations
    /// (an object of no organisation matches only another of none); an object that does not say its
    /// service never matches.
    Service,
}

impl Mismatch {
    pub fn reason(self) -> &'static str {
        match self {
            Mismatch::Patient => REFERRAL_PATIENT_MISMATCH,
            Mismatch::Service => REFERRAL_SERVICE_MISMATCH,
        }
    }
}

/// Whether `referral` may be linked to `appointment` (or a waitlist entry): the patient is checked
/// first, then the service at its organisation.
pub fn check(referral: Owner<'_>, appointment: Owner<'_>) -> Result<(), Mismatch> {
    if referral.patient_id != appointment.patient_id {
        return Err(Mismatch::Patient);
    }
    if referral.service_code.is_empty()
        || referral.service_code != appointment.service_code
        || referral.organisation != appointment.organisation
    {
        return Err(Mismatch::Service);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(patient: u128, organisation: &'static str, service_code: &'static str) -> Owner<'static> {
        Owner { patient_id: Uuid::from_u128(patient), organisation, service_code }
    }

    #[test]
    fn a_link_holds_only_for_the_same_patient_organisation_and_service() {
        let referral = owner(1, "RR8", "TO-FRACTURE");
        assert_eq!(check(referral, owner(1, "RR8", "TO-FRACTURE")), Ok(()));
        assert_eq!(check(referral, owner(2, "RR8", "TO-FRACTURE")), Err(Mismatch::Patient));
        assert_eq!(check(referral, owner(1, "RR8", "DERM-GENERAL")), Err(Mismatch::Service));
        assert_eq!(check(referral, owner(1, "RAE", "TO-FRACTURE")), Err(Mismatch::Service));
        assert_eq!(check(referral, owner(2, "RAE", "DERM-GENERAL")), Err(Mismatch::Patient), "the patient is checked first");
    }

    #[test]
    fn an_object_that_does_not_say_its_service_never_matches() {
        assert_eq!(check(owner(1, "RR8", ""), owner(1, "RR8", "")), Err(Mismatch::Service));
        assert_eq!(check(owner(1, "RR8", "TO-FRACTURE"), owner(1, "RR8", "")), Err(Mismatch::Service));
        assert_eq!(check(owner(1, "", "TO-FRACTURE"), owner(1, "", "TO-FRACTURE")), Ok(()), "no organisation on either side");
        assert_eq!(check(owner(1, "", "TO-FRACTURE"), owner(1, "RR8", "TO-FRACTURE")), Err(Mismatch::Service));
    }
}
