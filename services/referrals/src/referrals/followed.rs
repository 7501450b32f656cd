//! Other services' events, followed: appointments booked, cancelled and attended, and patient merges.

use super::*;

impl Referrals {
    /// Whether a booked appointment fits the referral it names (`pac_platform::links`). Patients are
    /// compared as current records: through the merges this service followed, then, should they still
    /// differ, as the records service resolves them now (a merge not yet followed here).
    pub(super) async fn link_check(
        &self,
        tx: &mut PgConnection,
        referral: &Referral,
        change: &AppointmentChange,
    ) -> Result<std::result::Result<(), Mismatch>> {
        let mut patients = [referral.patient_id, change.patient_id];
        if patients[0] != patients[1] {
            patients = [merges::current_patient(tx, patients[0]).await?, merges::current_patient(tx, patients[1]).await?];
        }
        if patients[0] != patients[1] {
            for patient in &mut patients {
                *patient = match self.clients.patient(*patient).await {
                    Ok(current) => current.id,
                    Err(ReferralsError::PatientNotFound(_)) => *patient,
                    Err(error) => return Err(error),
                };
            }
        }
        let owner = |patient_id, organisation, service_code| Owner { patient_id, organisation, service_code };
        Ok(links::check(
            owner(patients[0], &referral.organisation, &referral.service_code),
            owner(patients[1], &change.organisation, &change.service_code),
        ))
    }

    /// Applies an appointment event with the stream cursor; `false` when it does not concern a
    /// referral here (nothing written). A booking is linked only when it fits its referral.
    pub async fn apply_appointment(&self, change: AppointmentChange, stream: &str, cursor: &str) -> Result<bool> {
        let mut tx = self.writes.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, stream, cursor).await? {
            return Ok(false);
        }
        let found = match (&change.kind, change.referral_id) {
            (AppointmentChangeKind::Booked, Some(referral_id)) => store::lock_referral(&mut tx, referral_id, None).await?,
            (AppointmentChangeKind::Booked, None) => None,
            (AppointmentChangeKind::Cancelled { .. }, _) => store::lock_by_current_appointment(&mut tx, change.appointment_id).await?,
            // An attendance outcome: of the live appointment, or a correction of an earlier one.
            _ => store::lock_by_appointment(&mut tx, change.appointment_id).await?,
        };
        let Some(mut referral) = found else { return Ok(false) };
        if matches!(change.kind, AppointmentChangeKind::Booked)
            && let Err(mismatch) = self.link_check(&mut tx, &referral, &change).await?
        {
            // Another patient's, service's or organisation's appointment names this referral: it is
            // not linked, and the appointment (someone's real booking) is left as it is.
            tracing::warn!(referral_id = %referral.id, appointment_id = %change.appointment_id, reason = mismatch.reason(),
                "a booking names a referral it does not fit; not linked");
            return Ok(false);
        }
        let service = self.service_in(&mut tx, &referral.service_code).await?;
        let appointment = change.appointment_id;
        match change.kind {
            AppointmentChangeKind::Attended if referral.attended.contains(&appointment) => return Ok(false),
            AppointmentChangeKind::DidNotAttend if referral.missed.contains(&appointment) => return Ok(false),
            AppointmentChangeKind::Attended if referral.missed.contains(&appointment) => {
                self.correct_to_attended(&mut tx, &mut referral, &service, &change).await?;
                return self.finish_followed(tx, &referral, Event::ReferralUpdated, "attendance corrected").await;
            }
            // Corrected to a no-show: the attendance is taken back, then the no-show applies.
            AppointmentChangeKind::DidNotAttend => referral.attended.retain(|a| *a != appointment),
            _ => {}
        }
        if matches!(change.kind, AppointmentChangeKind::Attended | AppointmentChangeKind::DidNotAttend)
            && referral.current_appointment_id != Some(appointment)
        {
            // The outcome of an appointment that is no longer the live one: recorded, nothing moves.
            let outcomes =
                if matches!(change.kind, AppointmentChangeKind::Attended) { &mut referral.attended } else { &mut referral.missed };
            outcomes.push(appointment);
            let status = referral.status;
            self.save(&mut tx, &mut referral, status, &service, pac_platform::now()).await?;
            return self.finish_followed(tx, &referral, Event::ReferralUpdated, "attendance recorded").await;
        }
        let first = referral.attended.is_empty() && referral.missed.is_empty();
        if matches!(change.kind, AppointmentChangeKind::Booked) && referral.status.is_terminal() {
            // Booked for a referral already closed: the appointment is not needed.
            let request_id = format!("referral-closed-{}-{}", referral.id, change.appointment_id);
            self.clients.cancel_appointment(change.appointment_id, REFERRAL_CLOSED, request_id).await?;
            tracing::info!(referral_id = %referral.id, appointment_id = %change.appointment_id, "booking for a closed referral cancelled");
            return Ok(false);
        }
        let (event, clock_event) = match &change.kind {
            AppointmentChangeKind::Booked => (AppointmentEvent::Booked, None),
            AppointmentChangeKind::Cancelled { .. } => (AppointmentEvent::Cancelled, None),
            AppointmentChangeKind::DidNotAttend => {
                let discharge = !first && service.later_dna == LaterDnaPolicy::Discharge;
                (AppointmentEvent::DidNotAttend { discharge }, Some(ClockEvent::DidNotAttend { first }))
            }
            AppointmentChangeKind::Attended => (AppointmentEvent::Attended, Some(ClockEvent::Activity)),
        };
        let Some(to) = referral::after_appointment(referral.status, event) else {
            tracing::info!(referral_id = %referral.id, appointment_id = %change.appointment_id, "appointment event does not apply to the referral");
            return Ok(false);
        };
        let system = Write::by_service(self.clients.actor().clone());
        let out: fn(pb::ReferralEvent) -> Event = match change.kind {
            AppointmentChangeKind::Booked => {
                if referral.clock.state == State::Nullified {
                    // Rebooked after a first-appointment DNA: a new clock from the rebooking.
                    let restarted =
                        referral.clock.apply(ClockEvent::Restart(Code::Start), change.on.max(referral.clock.started), service.later_dna);
                    referral.clock = restarted.map_err(ReferralsError::ClockRefused)?;
                    store::insert_clock_event(&mut tx, referral.id, &referral.clock, change.on, "appointment", &system.actor.subject)
                        .await?;
                }
                if let Some(previous) = referral.current_appointment_id.filter(|p| *p != change.appointment_id) {
                    // One live appointment per referral: a new booking replaces the old one.
                    let request_id = format!("referral-superseded-{}-{previous}", referral.id);
                    self.clients.cancel_appointment(previous, SUPERSEDED, request_id).await?;
                }
                if !referral.appointment_ids.contains(&change.appointment_id) {
                    referral.appointment_ids.push(change.appointment_id);
                }
                referral.current_appointment_id = Some(change.appointment_id);
                referral.rebook_reason = None;
                // Rebooking is the follow-up of a missed appointment.
                referral.dna_follow_up = false;
                Event::ReferralBooked
            }
            AppointmentChangeKind::Cancelled { by_patient, .. } => {
                referral.current_appointment_id = None;
                referral.rebook_reason =
                    Some(if by_patient { RebookReason::CancelledByPatient } else { RebookReason::CancelledByProvider });
                Event::ReferralBookingLost
            }
            AppointmentChangeKind::DidNotAttend => {
                referral.missed.push(appointment);
                referral.current_appointment_id = None;
                referral.dna_follow_up = to != Status::Completed;
                referral.rebook_reason = (to != Status::Completed).then_some(RebookReason::DidNotAttend);
                Event::ReferralBookingLost
            }
            AppointmentChangeKind::Attended => {
                referral.attended.push(appointment);
                referral.dna_follow_up = false;
                Event::ReferralUpdated
            }
        };
        if let Some(clock_event) = clock_event
            && referral.clock.state == State::Running
        {
            let on = change.on.max(referral.clock.started);
            referral.clock = referral.clock.apply(clock_event, on, service.later_dna).map_err(ReferralsError::ClockRefused)?;
            store::insert_clock_event(&mut tx, referral.id, &referral.clock, on, "appointment", &system.actor.subject).await?;
        }
        self.save(&mut tx, &mut referral, to, &service, pac_platform::now()).await?;
        let event = if to == Status::Completed { Event::ClockStopped } else { out };
        self.finish_followed(tx, &referral, event, &appointment.to_string()).await
    }

    /// Emits the referral's event for a followed change and commits it (with the stream cursor the
    /// change's transaction moved first).
    pub(super) async fn finish_followed(
        &self,
        mut tx: WriteTx<'_>,
        referral: &Referral,
        event: fn(pb::ReferralEvent) -> Event,
        reason: &str,
    ) -> Result<bool> {
        let system = Write::by_service(self.clients.actor().clone());
        self.emit(&mut tx, referral, event(referral_event(referral, reason)), &system).await?;
        tx.commit_unanswered().await?;
        tracing::info!(referral_id = %referral.id, status = referral.status.code(), reason, "followed an appointment event");
        Ok(true)
    }

    /// A no-show corrected to attended. The attendance is recorded; if the referral is still where
    /// that no-show put it (awaiting rebooking, or discharged that day), the no-show's effect is
    /// taken back: booked again to that appointment, and the clock running as before it (code 20).
    pub(super) async fn correct_to_attended(
        &self,
        tx: &mut PgConnection,
        referral: &mut Referral,
        service: &ServiceEntry,
        change: &AppointmentChange,
    ) -> Result<()> {
        let appointment = change.appointment_id;
        referral.missed.retain(|a| *a != appointment);
        referral.attended.push(appointment);
        let waiting_after_it = referral.status == Status::AwaitingBooking && referral.rebook_reason == Some(RebookReason::DidNotAttend);
        let discharged_by_it = referral.status == Status::Completed
            && referral.clock.code == Code::DecisionNotToTreat
            && referral.clock.ended == Some(change.on);
        let mut status = referral.status;
        if waiting_after_it || discharged_by_it {
            status = Status::Booked;
            referral.current_appointment_id = Some(appointment);
            referral.rebook_reason = None;
            referral.dna_follow_up = false;
            let nullified_by_it = referral.clock.state == State::Nullified && referral.clock.ended == Some(change.on);
            if nullified_by_it || discharged_by_it {
                referral.clock = Clock { code: Code::Continue, state: State::Running, ended: None, ..referral.clock };
                store::insert_clock_event(tx, referral.id, &referral.clock, change.on, "appointment", &self.clients.actor().subject)
                    .await?;
            }
        }
        self.save(tx, referral, status, service, pac_platform::now()).await
    }

    /// A patient merge: the merged-away record's referrals move to the survivor.
    pub async fn apply_merge(&self, merge_id: Uuid, merged: Uuid, survivor: Uuid, stream: &str, cursor: &str) -> Result<()> {
        let mut tx = self.writes.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, stream, cursor).await? {
            return Ok(());
        }
        merges::record_merge(&mut tx, merge_id, merged, survivor).await?;
        let moved = store::repoint_patient(&mut tx, merge_id, merged, survivor).await?;
        self.announce_moves(&mut tx, &moved, "patient records merged").await?;
        tx.commit_unanswered().await?;
        tracing::info!(merge_id = %merge_id, referrals_moved = moved.len(), "followed a patient merge");
        Ok(())
    }

    /// A merge reversed: what it moved goes back. Idempotent.
    pub async fn apply_unmerge(&self, merge_id: Uuid, stream: &str, cursor: &str) -> Result<()> {
        let mut tx = self.writes.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, stream, cursor).await? {
            return Ok(());
        }
        merges::forget_merge(&mut tx, merge_id).await?;
        let moved = store::unrepoint_patient(&mut tx, merge_id).await?;
        self.announce_moves(&mut tx, &moved, "patient merge reversed").await?;
        tx.commit_unanswered().await?;
        tracing::info!(merge_id = %merge_id, referrals_moved = moved.len(), "followed a merge reversal");
        Ok(())
    }

    pub(super) async fn announce_moves(&self, tx: &mut PgConnection, moved: &[Uuid], reason: &str) -> Result<()> {
        let system = Write::by_service(self.clients.actor().clone());
        for id in moved {
            let referral = store::find_referral(&mut *tx, *id, None).await?.ok_or_else(|| not_found(*id))?;
            self.emit(tx, &referral, Event::ReferralUpdated(referral_event(&referral, reason)), &system).await?;
        }
        Ok(())
    }
}
