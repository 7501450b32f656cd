//! The waitlist: entries, and the offers made to them when a place frees up.

use super::*;

impl Scheduling {
    /// Adds an entry. For a clinic it takes the clinic's organisation (which must be in the caller's
    /// scope, and agree with `requested_organisation` when one was given); for a service code it
    /// keeps the organisation the handler chose.
    pub async fn add_to_waitlist(&self, mut entry: Entry, requested_organisation: &str, write: Write) -> Result<pb::AddToWaitlistResponse> {
        let mut service_code = match &entry.target {
            Target::Clinic(_) => String::new(),
            Target::Service(code) => code.clone(),
        };
        if let Target::Clinic(clinic_id) = entry.target {
            let clinic = store::find_clinic(&self.pool, clinic_id)
                .await?
                .ok_or_else(|| SchedulingError::invalid("entry.clinic_id", "CLINIC_NOT_FOUND", "no clinic has this id"))?;
            if !requested_organisation.is_empty() && requested_organisation != clinic.organisation {
                return Err(SchedulingError::invalid(
                    "entry.organisation",
                    "ORGANISATION_MISMATCH",
                    "an entry for a clinic has the clinic's organisation; leave it empty",
                ));
            }
            if !within(write.scope(), &clinic.organisation) {
                return Err(SchedulingError::OtherOrganisation { resource: "pac.scheduling.v1.Clinic", id: clinic_id });
            }
            entry.organisation = clinic.organisation;
            service_code = clinic.service_code;
        }
        entry.patient_id = self.patients.resolve(entry.patient_id, write.scope()).await?;
        let referral = self.named_referral(entry.referral_id, Some(entry.patient_id), write.scope()).await?;
        let mut tx = match self.writes.claim("AddToWaitlist", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        entry.patient_id = merges::current_patient(&mut tx, entry.patient_id).await?;
        if let Some(facts) = &referral {
            let holder = Owner { patient_id: entry.patient_id, organisation: &entry.organisation, service_code: &service_code };
            check_referral(&mut tx, facts, holder).await?;
        }
        if let Some(existing) = store::insert_entry(&mut tx, &entry).await? {
            return Err(SchedulingError::WaitlistEntryExists { existing });
        }
        let response = pb::AddToWaitlistResponse { entry: Some(convert::entry(&entry, &[])) };
        tx.commit(&response).await?;
        tracing::info!(entry_id = %entry.id, "added to waitlist");
        Ok(response)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn list_waitlist(
        &self,
        clinic_id: Option<Uuid>,
        service_code: Option<String>,
        include_closed: bool,
        limit: i64,
        offset: i64,
        scope: Scope<'_>,
    ) -> Result<Vec<pb::WaitlistEntry>> {
        let clinic = match clinic_id {
            Some(id) => Some(self.clinic(id).await?),
            None => None,
        };
        let code = clinic.as_ref().map(|c| c.service_code.clone()).or(service_code).unwrap_or_default();
        let entries = store::list_entries(&self.pool, clinic.as_ref(), &code, include_closed, limit, offset, scope).await?;
        let ids: Vec<Uuid> = entries.iter().map(|e| e.id).collect();
        let offers = store::offers_of(&self.pool, &ids).await?;
        Ok(entries.iter().map(|e| convert::entry(e, &offers)).collect())
    }

    pub async fn respond_to_offer(&self, offer_id: Uuid, accept: bool, write: Write) -> Result<pb::RespondToOfferResponse> {
        let mut tx = match self.writes.claim("RespondToOffer", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let offer = store::lock_offer(&mut tx, offer_id, write.scope()).await?.ok_or(not_found("pac.scheduling.v1.Offer", offer_id))?;
        // The offer's hold is of the entry's organisation: in scope with it.
        let mut appointment =
            store::lock_appointment(&mut tx, offer.appointment_id, None).await?.ok_or(not_found(APPOINTMENT, offer.appointment_id))?;
        if offer.outcome != OfferOutcome::Open {
            return Err(SchedulingError::OfferClosed { offer_id, outcome: offer.outcome.code().into() });
        }
        if appointment.hold_expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(SchedulingError::OfferClosed { offer_id, outcome: "expired".into() });
        }
        let booked = if accept {
            appointment::check_confirm(appointment.status, Moment { now: Utc::now(), slot_start: appointment.start_time })
                .map_err(SchedulingError::InvalidTransition)?;
            appointment.status = Status::Booked;
            appointment.hold_expires_at = None;
            appointment.version += 1;
            appointment.updated_at = pac_platform::now();
            store::update_appointment(&mut tx, &appointment).await?;
            store::close_offer_of(&mut tx, appointment.id, OfferOutcome::Accepted).await?;
            store::close_entry(&mut tx, offer.entry_id, "booked").await?;
            self.record_change(&mut tx, &appointment, Status::Pending, None, Some("offer accepted"), &write.actor).await?;
            self.emit(&mut tx, appointment.id, Event::AppointmentBooked(appointment_event(&appointment, None, "offer accepted")), &write)
                .await?;
            Some(convert::appointment(&appointment))
        } else {
            self.cancel_in(&mut tx, appointment, "OFFER_DECLINED", CancelledBy::Patient, OfferOutcome::Declined, &write).await?;
            None
        };
        let entry =
            store::find_entry(&mut *tx, offer.entry_id).await?.ok_or(not_found("pac.scheduling.v1.WaitlistEntry", offer.entry_id))?;
        let offers = store::offers_of(&mut *tx, &[entry.id]).await?;
        let response = pb::RespondToOfferResponse { entry: Some(convert::entry(&entry, &offers)), appointment: booked };
        tx.commit(&response).await?;
        tracing::info!(offer_id = %offer_id, accept, "offer answered");
        Ok(response)
    }

    /// Offers a slot with a free place to the best waiting entry it fits, as a timed hold. A clash
    /// found only now (a concurrent booking for the same patient) skips the offer, not the caller's
    /// change.
    pub(super) async fn offer_slot(&self, conn: &mut PgConnection, slot_id: Uuid) -> Result<bool> {
        let Some(slot) = store::find_slot(&mut *conn, slot_id).await? else { return Ok(false) };
        let now = pac_platform::now();
        if slot.occupied >= slot.capacity || slot.start_time < now + self.policy.offer_min_notice {
            return Ok(false);
        }
        let candidates = store::entries_fitting(conn, &slot, 50).await?;
        let rankings: Vec<waitlist::Entry> = candidates.iter().map(Entry::ranking).collect();
        let Some(best) = waitlist::best_fit(&rankings, slot.local_date) else { return Ok(false) };
        let entry = &candidates[rankings.iter().position(|r| std::ptr::eq(r, best)).expect("best is one of them")];
        let mut savepoint = conn.begin().await?;
        let offer_hold = Placement::Hold { ttl: self.policy.offer_hold, held_by: None };
        let held = self.place(&mut savepoint, slot.id, entry.patient_id, Naming::Entry(entry.referral_id), offer_hold, None).await;
        let appointment = match held {
            Ok((appointment, _)) => appointment,
            Err(SchedulingError::PatientDoubleBooked | SchedulingError::SlotUnavailable { .. }) => {
                savepoint.rollback().await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let expires_at = appointment.hold_expires_at.unwrap_or(slot.start_time);
        let offer = Offer {
            id: Uuid::now_v7(),
            entry_id: entry.id,
            appointment_id: appointment.id,
            slot_id: slot.id,
            offered_at: now,
            notice_hours: ((slot.start_time - now).num_hours()).max(0) as i32,
            expires_at,
            outcome: OfferOutcome::Open,
        };
        match store::insert_offer(&mut savepoint, &offer).await {
            Ok(()) => {}
            Err(SchedulingError::Conflict) => {
                // A concurrent change offered the entry a slot first: this one is not offered now.
                savepoint.rollback().await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let system = Write::by_service(service_actor());
        self.emit(&mut savepoint, appointment.id, Event::AppointmentHeld(appointment_event(&appointment, None, "waitlist offer")), &system)
            .await?;
        let made = pb::OfferMade { entry: Some(convert::entry(entry, &[])), offer: Some(convert::offer(&offer)) };
        self.emit(&mut savepoint, entry.id, Event::OfferMade(made), &system).await?;
        savepoint.commit().await?;
        tracing::info!(offer_id = %offer.id, entry_id = %entry.id, slot_id = %slot.id, "waitlist offer made");
        Ok(true)
    }

    /// Offers a session's new free slots to the entries waiting for its clinic or service.
    pub(super) async fn offer_new_slots(&self, conn: &mut PgConnection, clinic: &Clinic, template_id: Uuid) -> Result<()> {
        if !store::anyone_waiting(conn, clinic).await? {
            return Ok(());
        }
        let after = pac_platform::now() + self.policy.offer_min_notice;
        for slot_id in store::free_slots_of_template(conn, template_id, after, 200).await? {
            if self.offer_slot(conn, slot_id).await? && !store::anyone_waiting(conn, clinic).await? {
                break;
            }
        }
        Ok(())
    }
}
