//! Holds, bookings, reschedules, cancellations and status changes of appointments.

use super::*;

impl Scheduling {
    /// Holds a slot for the caller, who may have at most `policy.max_holds_per_caller` live holds:
    /// counted and written in one transaction under a lock on the caller (see
    /// `store::lock_and_count_live_holds`), so concurrent holds cannot pass the cap.
    pub async fn hold(&self, slot_id: Uuid, patient_id: Uuid, ttl: Duration, write: Write) -> Result<pb::HoldSlotResponse> {
        let patient_id = self.patients.resolve(patient_id, write.scope()).await?;
        let limit = self.policy.max_holds_per_caller;
        let attempt = || async {
            let mut tx = match self.writes.claim("HoldSlot", &write).await? {
                Claim::Replay(r) => return Ok(r),
                Claim::Fresh(tx) => tx,
            };
            let holder = &write.actor.subject;
            if store::lock_and_count_live_holds(&mut tx, holder).await? >= i64::from(limit) {
                return Err(SchedulingError::TooManyHolds { limit });
            }
            let placement = Placement::Hold { ttl, held_by: Some(holder) };
            let (appointment, _) = self.place(&mut tx, slot_id, patient_id, Naming::Nothing, placement, write.scope()).await?;
            self.emit(&mut tx, appointment.id, Event::AppointmentHeld(appointment_event(&appointment, None, "")), &write).await?;
            let response = pb::HoldSlotResponse { appointment: Some(convert::appointment(&appointment)) };
            tx.commit(&response).await?;
            tracing::info!(appointment_id = %appointment.id, slot_id = %slot_id, "slot held");
            Ok(response)
        };
        match attempt().await {
            Err(SchedulingError::SlotUnavailable { .. }) if self.expire_lapsed_holds(Some(slot_id)).await? > 0 => attempt().await,
            result => result,
        }
    }

    pub async fn book(&self, book: Book) -> Result<pb::BookAppointmentResponse> {
        let patient_id = match book.patient_id {
            Some(id) => Some(self.patients.resolve(id, book.write.scope()).await?),
            None => None,
        };
        let referral = self.named_referral(book.referral_id, patient_id, book.write.scope()).await?;
        let referral = referral.as_ref();
        match book.target {
            BookTarget::Slot(slot_id) => {
                let patient_id = patient_id.ok_or_else(|| SchedulingError::invalid("patient_id", "ID_REQUIRED", "is required"))?;
                match self.book_slot(slot_id, patient_id, referral, &book).await {
                    Err(SchedulingError::SlotUnavailable { .. }) if self.expire_lapsed_holds(Some(slot_id)).await? > 0 => {
                        self.book_slot(slot_id, patient_id, referral, &book).await
                    }
                    result => result,
                }
            }
            BookTarget::Hold(appointment_id) => self.confirm_hold(appointment_id, patient_id, referral, &book).await,
        }
    }

    pub(super) async fn book_slot(
        &self,
        slot_id: Uuid,
        patient_id: Uuid,
        referral: Option<&ReferralFacts>,
        book: &Book,
    ) -> Result<pb::BookAppointmentResponse> {
        let mut tx = match self.writes.claim("BookAppointment", &book.write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let naming = referral.map_or(Naming::Nothing, Naming::Checked);
        let (appointment, slot) = self.place(&mut tx, slot_id, patient_id, naming, Placement::Booking, book.write.scope()).await?;
        store::close_entries_for(&mut tx, appointment.patient_id, &slot, "booked").await?;
        self.emit(&mut tx, appointment.id, Event::AppointmentBooked(appointment_event(&appointment, None, "")), &book.write).await?;
        let response = pb::BookAppointmentResponse { appointment: Some(convert::appointment(&appointment)) };
        tx.commit(&response).await?;
        tracing::info!(appointment_id = %appointment.id, slot_id = %slot_id, "appointment booked");
        Ok(response)
    }

    /// Takes a place in a future slot of a clinic in `scope` and writes the appointment (booked, or
    /// pending for a hold), of the clinic's organisation, for the patient's current record (see
    /// `pac_platform::merges`), naming a referral that fits it. On an error nothing stays written:
    /// the caller's transaction is not committed.
    pub(super) async fn place(
        &self,
        conn: &mut PgConnection,
        slot_id: Uuid,
        patient_id: Uuid,
        referral: Naming<'_>,
        placement: Placement<'_>,
        scope: Scope<'_>,
    ) -> Result<(Appointment, Slot)> {
        let patient_id = merges::current_patient(conn, patient_id).await?;
        let slot = store::take_place(conn, slot_id).await?;
        check_slot_in_scope(&slot, scope)?;
        if let Naming::Checked(facts) = referral {
            let holder = Owner { patient_id, organisation: &slot.organisation, service_code: &slot.service_code };
            check_referral(conn, facts, holder).await?;
        }
        let now = pac_platform::now();
        if slot.start_time <= now {
            return Err(SchedulingError::SlotUnavailable { slot_id, why: "has already started" });
        }
        let (status, hold_expires_at, held_by) = match placement {
            Placement::Hold { ttl, held_by } => (Status::Pending, Some((now + ttl).min(slot.start_time)), held_by),
            Placement::Booking => (Status::Booked, None, None),
        };
        let appointment = Appointment {
            held_by: held_by.map(str::to_string),
            ..Appointment::new(&slot, patient_id, referral.id(), status, hold_expires_at)
        };
        store::insert_appointment(conn, &appointment).await?;
        Ok((appointment, slot))
    }

    pub(super) async fn confirm_hold(
        &self,
        id: Uuid,
        patient_id: Option<Uuid>,
        referral: Option<&ReferralFacts>,
        book: &Book,
    ) -> Result<pb::BookAppointmentResponse> {
        let mut tx = match self.writes.claim("BookAppointment", &book.write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let mut appointment = store::lock_appointment(&mut tx, id, book.write.scope()).await?.ok_or(not_found(APPOINTMENT, id))?;
        if patient_id.is_some_and(|p| p != appointment.patient_id) {
            return Err(SchedulingError::invalid("patient_id", "PATIENT_MISMATCH", "the hold is for another patient"));
        }
        appointment::check_confirm(appointment.status, Moment { now: Utc::now(), slot_start: appointment.start_time })
            .map_err(SchedulingError::InvalidTransition)?;
        if appointment.hold_expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(SchedulingError::HoldExpired(id));
        }
        if let Some(facts) = referral {
            check_referral(&mut tx, facts, owner(&appointment)).await?;
            appointment.referral_id = Some(facts.id);
        }
        let now = pac_platform::now();
        appointment.status = Status::Booked;
        appointment.hold_expires_at = None;
        appointment.version += 1;
        appointment.updated_at = now;
        store::update_appointment(&mut tx, &appointment).await?;
        if let Some(offer) = store::close_offer_of(&mut tx, id, OfferOutcome::Accepted).await? {
            store::close_entry(&mut tx, offer.entry_id, "booked").await?;
        }
        if let Some(slot) = store::find_slot(&mut *tx, appointment.slot_id).await? {
            store::close_entries_for(&mut tx, appointment.patient_id, &slot, "booked").await?;
        }
        self.record_change(&mut tx, &appointment, Status::Pending, None, None, &book.write.actor).await?;
        self.emit(&mut tx, id, Event::AppointmentBooked(appointment_event(&appointment, None, "")), &book.write).await?;
        let response = pb::BookAppointmentResponse { appointment: Some(convert::appointment(&appointment)) };
        tx.commit(&response).await?;
        tracing::info!(appointment_id = %id, "hold confirmed");
        Ok(response)
    }

    /// Book the new slot, then release the old, in one transaction: if the new slot is taken nothing
    /// changes.
    pub async fn reschedule(&self, r: Reschedule) -> Result<pb::RescheduleAppointmentResponse> {
        // The referral the appointment names must fit the new slot too: asked first, as a booking's.
        let named = match store::find_appointment(&self.pool, r.appointment_id, r.write.scope()).await? {
            Some(current) => self.named_referral(current.referral_id, Some(current.patient_id), r.write.scope()).await?,
            None => None,
        };
        let mut tx = match self.writes.claim("RescheduleAppointment", &r.write).await? {
            Claim::Replay(response) => return Ok(response),
            Claim::Fresh(tx) => tx,
        };
        let mut appointment =
            store::lock_appointment(&mut tx, r.appointment_id, r.write.scope()).await?.ok_or(not_found(APPOINTMENT, r.appointment_id))?;
        check_etag(&appointment, Some(&r.etag))?;
        if appointment.referral_id != named.as_ref().map(|f| f.id) {
            return Err(SchedulingError::Conflict);
        }
        appointment::check_reschedule(appointment.status, Moment { now: Utc::now(), slot_start: appointment.start_time })
            .map_err(SchedulingError::InvalidTransition)?;
        if appointment.slot_id == r.new_slot_id {
            return Err(SchedulingError::invalid("new_slot_id", "SAME_SLOT", "is the appointment's current slot"));
        }
        let new_slot = store::take_place(&mut tx, r.new_slot_id).await?;
        check_slot_in_scope(&new_slot, r.write.scope())?;
        if let Some(facts) = &named {
            let holder =
                Owner { patient_id: appointment.patient_id, organisation: &new_slot.organisation, service_code: &new_slot.service_code };
            check_referral(&mut tx, facts, holder).await?;
        }
        if new_slot.start_time <= Utc::now() {
            return Err(SchedulingError::SlotUnavailable { slot_id: new_slot.id, why: "has already started" });
        }
        let previous_slot = appointment.slot_id;
        store::release_place(&mut tx, previous_slot).await?;
        appointment.slot_id = new_slot.id;
        appointment.clinic_id = new_slot.clinic_id;
        appointment.organisation = new_slot.organisation.clone();
        appointment.service_code = new_slot.service_code.clone();
        appointment.start_time = new_slot.start_time;
        appointment.end_time = new_slot.end_time;
        appointment.version += 1;
        appointment.updated_at = pac_platform::now();
        store::update_appointment(&mut tx, &appointment).await?;
        let reason = (!r.reason.is_empty()).then_some(r.reason.as_str());
        self.record_change(&mut tx, &appointment, Status::Booked, Some(previous_slot), reason, &r.write.actor).await?;
        let event = Event::AppointmentRescheduled(appointment_event(&appointment, Some(previous_slot), &r.reason));
        self.emit(&mut tx, appointment.id, event, &r.write).await?;
        self.offer_slot(&mut tx, previous_slot).await?;
        let response = pb::RescheduleAppointmentResponse { appointment: Some(convert::appointment(&appointment)) };
        tx.commit(&response).await?;
        tracing::info!(appointment_id = %appointment.id, from_slot = %previous_slot, to_slot = %new_slot.id, "appointment rescheduled");
        Ok(response)
    }

    pub async fn cancel(&self, c: Cancel) -> Result<pb::CancelAppointmentResponse> {
        let mut tx = match self.writes.claim("CancelAppointment", &c.write).await? {
            Claim::Replay(response) => return Ok(response),
            Claim::Fresh(tx) => tx,
        };
        let appointment =
            store::lock_appointment(&mut tx, c.appointment_id, c.write.scope()).await?.ok_or(not_found(APPOINTMENT, c.appointment_id))?;
        check_etag(&appointment, c.etag.as_deref())?;
        let outcome = if c.by == CancelledBy::Patient { OfferOutcome::Declined } else { OfferOutcome::Withdrawn };
        let cancelled = self.cancel_in(&mut tx, appointment, &c.reason_code, c.by, outcome, &c.write).await?;
        let response = pb::CancelAppointmentResponse { appointment: Some(convert::appointment(&cancelled)) };
        tx.commit(&response).await?;
        let late = cancelled.cancellation.as_ref().is_some_and(|x| x.late);
        tracing::info!(appointment_id = %cancelled.id, reason_code = %c.reason_code, late, "appointment cancelled");
        Ok(response)
    }

    /// Cancels inside a transaction: frees the place, closes an offer held by it, records and
    /// announces the change, and offers the freed slot to the waitlist.
    pub(super) async fn cancel_in(
        &self,
        tx: &mut PgConnection,
        mut appointment: Appointment,
        reason_code: &str,
        by: CancelledBy,
        offer_outcome: OfferOutcome,
        write: &Write,
    ) -> Result<Appointment> {
        let now = pac_platform::now();
        let from = appointment.status;
        appointment::check(from, Status::Cancelled, Moment { now, slot_start: appointment.start_time }, None)
            .map_err(SchedulingError::InvalidTransition)?;
        appointment.status = Status::Cancelled;
        appointment.hold_expires_at = None;
        appointment.cancellation = Some(Cancellation {
            reason_code: reason_code.to_string(),
            by,
            late: cancellation::is_late(now, appointment.start_time, self.policy.late_notice),
            at: now,
        });
        appointment.version += 1;
        appointment.updated_at = now;
        store::update_appointment(tx, &appointment).await?;
        if from.is_live() {
            store::release_place(tx, appointment.slot_id).await?;
        }
        store::close_offer_of(tx, appointment.id, offer_outcome).await?;
        self.record_change(tx, &appointment, from, None, Some(reason_code), &write.actor).await?;
        self.emit(tx, appointment.id, Event::AppointmentCancelled(appointment_event(&appointment, None, reason_code)), write).await?;
        if from.is_live() {
            self.offer_slot(tx, appointment.slot_id).await?;
        }
        Ok(appointment)
    }

    pub async fn change_status(&self, s: StatusChange) -> Result<Appointment> {
        let mut tx = self.writes.begin().await?;
        let mut appointment =
            store::lock_appointment(&mut tx, s.appointment_id, s.write.scope()).await?.ok_or(not_found(APPOINTMENT, s.appointment_id))?;
        check_etag(&appointment, s.etag.as_deref())?;
        let from = appointment.status;
        let now = pac_platform::now();
        appointment::check(from, s.to, Moment { now, slot_start: appointment.start_time }, s.correction_reason.as_deref())
            .map_err(SchedulingError::InvalidTransition)?;
        appointment.status = s.to;
        appointment.version += 1;
        appointment.updated_at = now;
        store::update_appointment(&mut tx, &appointment).await?;
        if from.is_live() && !s.to.is_live() {
            store::release_place(&mut tx, appointment.slot_id).await?;
        }
        let reason = s.correction_reason.as_deref();
        self.record_change(&mut tx, &appointment, from, None, reason, &s.write.actor).await?;
        let event = Event::AppointmentStatusChanged(appointment_event(&appointment, None, reason.unwrap_or_default()));
        self.emit(&mut tx, appointment.id, event, &s.write).await?;
        tx.commit_unanswered().await?;
        tracing::info!(appointment_id = %appointment.id, from = from.code(), to = s.to.code(), "appointment status changed");
        Ok(appointment)
    }

    pub(super) async fn record_change(
        &self,
        conn: &mut PgConnection,
        a: &Appointment,
        from: Status,
        from_slot: Option<Uuid>,
        reason: Option<&str>,
        actor: &Actor,
    ) -> Result<()> {
        let change = Change {
            appointment_id: a.id,
            from,
            to: a.status,
            from_slot,
            to_slot: from_slot.map(|_| a.slot_id),
            reason,
            actor: &actor.subject,
            at: a.updated_at,
        };
        store::insert_change(conn, change).await
    }

    pub async fn appointment(&self, id: Uuid, scope: Scope<'_>) -> Result<Appointment> {
        store::find_appointment(&self.pool, id, scope).await?.ok_or(not_found(APPOINTMENT, id))
    }

    /// Cancels lapsed holds (of one slot, or any), freeing their places; returns how many.
    pub async fn expire_lapsed_holds(&self, slot_id: Option<Uuid>) -> Result<usize> {
        const BATCH: i64 = 100;
        let mut total = 0;
        loop {
            let mut tx = self.writes.begin().await?;
            let lapsed = store::lock_lapsed_holds(&mut tx, slot_id, BATCH).await?;
            let count = lapsed.len();
            for hold in lapsed {
                let id = hold.id;
                self.cancel_in(
                    &mut tx,
                    hold,
                    "HOLD_EXPIRED",
                    CancelledBy::System,
                    OfferOutcome::Expired,
                    &Write::by_service(service_actor()),
                )
                .await?;
                tracing::info!(appointment_id = %id, "hold expired");
            }
            tx.commit_unanswered().await?;
            total += count;
            if (count as i64) < BATCH {
                return Ok(total);
            }
        }
    }
}
