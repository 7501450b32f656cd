//! Merges in the records service, followed: appointments and waitlist entries move with the patient.

use super::*;

impl Scheduling {
    /// A merge in the records service: the merged-away record's appointments and waitlist entries
    /// move to the survivor. A live appointment that clashes with one the survivor already has is a
    /// duplicate booking of the same person and is cancelled. Idempotent.
    pub async fn apply_merge(&self, merge_id: Uuid, merged: Uuid, survivor: Uuid, cursor: &str) -> Result<()> {
        let mut tx = self.writes.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, crate::RECORDS_STREAM, cursor).await? {
            return Ok(());
        }
        merges::record_merge(&mut tx, merge_id, merged, survivor).await?;
        let system = Write::by_service(service_actor());
        for clash in store::lock_clashing_appointments(&mut tx, merged, survivor).await? {
            self.cancel_in(&mut tx, clash, "DUPLICATE_PATIENT_RECORD", CancelledBy::System, OfferOutcome::Withdrawn, &system).await?;
        }
        let moved = store::repoint_patient(&mut tx, merge_id, merged, survivor).await?;
        self.announce_patient_change(&mut tx, &moved, "patient records merged").await?;
        tx.commit_unanswered().await?;
        tracing::info!(merge_id = %merge_id, appointments_moved = moved.len(), "followed a patient merge");
        Ok(())
    }

    /// A merge reversed: what it moved goes back. Idempotent.
    pub async fn apply_unmerge(&self, merge_id: Uuid, cursor: &str) -> Result<()> {
        let mut tx = self.writes.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, crate::RECORDS_STREAM, cursor).await? {
            return Ok(());
        }
        merges::forget_merge(&mut tx, merge_id).await?;
        let moved = store::unrepoint_patient(&mut tx, merge_id).await?;
        self.announce_patient_change(&mut tx, &moved, "patient merge reversed").await?;
        tx.commit_unanswered().await?;
        tracing::info!(merge_id = %merge_id, appointments_moved = moved.len(), "followed a merge reversal");
        Ok(())
    }

    pub(super) async fn announce_patient_change(&self, conn: &mut PgConnection, moved: &[Appointment], reason: &str) -> Result<()> {
        let system = Write::by_service(service_actor());
        for appointment in moved {
            let event = Event::AppointmentPatientChanged(appointment_event(appointment, None, reason));
            self.emit(conn, appointment.id, event, &system).await?;
        }
        Ok(())
    }
}
