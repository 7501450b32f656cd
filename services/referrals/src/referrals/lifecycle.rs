//! A referral's life: received, triaged, cancelled, clock events, notes and tasks.

use super::*;

impl Referrals {
    pub async fn create_referral(&self, new: NewReferral, write: Write) -> Result<pb::CreateReferralResponse> {
        if let Some(response) = self.writes.recorded("CreateReferral", &write).await? {
            return Ok(response);
        }
        let service = self.service(&new.service_code).await?;
        if !within(write.scope(), &service.organisation) {
            return Err(ReferralsError::OtherOrganisation { resource: "pac.referrals.v1.Service", id: service.code });
        }
        let facts =
            ReferralFacts { source: Some(new.source.clone()), priority: Some(new.priority), information: Some(new.information.clone()) };
        let (patient, reasons) = self.check_eligibility(new.patient_id, &service, facts, write.scope()).await?;
        if !reasons.is_empty() {
            return Err(ReferralsError::NotEligible(reasons));
        }
        let mut tx = match self.writes.claim("CreateReferral", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        // The patient as this service has followed their merges (the check above ran outside).
        let patient_id = merges::current_patient(&mut tx, patient.id).await?;
        let now = pac_platform::now();
        let referral = new_referral(&new, patient_id, &service, Clock::start(local_date(new.received_at)), new.received_at, now);
        store::insert_referral(&mut tx, &referral).await?;
        store::insert_clock_event(&mut tx, referral.id, &referral.clock, referral.clock.started, "received", &write.actor.subject).await?;
        let event = Event::ReferralReceived(referral_event(&referral, ""));
        self.emit(&mut tx, &referral, event, &write).await?;
        let response = pb::CreateReferralResponse { referral: Some(convert::referral(&referral, now)) };
        tx.commit(&response).await?;
        tracing::info!(referral_id = %referral.id, service_code = %referral.service_code, "referral received");
        Ok(response)
    }

    pub async fn triage(&self, id: Uuid, etag: &str, decision: Decision, write: Write) -> Result<pb::TriageReferralResponse> {
        if let Some(response) = self.writes.recorded("TriageReferral", &write).await? {
            return Ok(response);
        }
        // A redirect checks the patient against the new service first (a call to records): before
        // the lock. The etag checked under the lock proves nothing changed in between.
        let redirect_to = match &decision {
            Decision::Redirect { service_code, .. } => {
                let current = store::find_referral(&self.pool, id, write.scope()).await?.ok_or_else(|| not_found(id))?;
                if *service_code == current.service_code {
                    return Err(ReferralsError::invalid(
                        "redirect.service_code",
                        "SAME_SERVICE",
                        "a referral is redirected to another service",
                    ));
                }
                let target = store::find_service(&self.pool, service_code)
                    .await?
                    .ok_or_else(|| ReferralsError::ServiceNotFound(service_code.clone()))?;
                let facts = ReferralFacts {
                    source: Some(current.source.clone()),
                    priority: Some(current.priority),
                    information: Some(current.information.clone()),
                };
                let (_, reasons) = self.check_eligibility(current.patient_id, &target, facts, write.scope()).await?;
                if !reasons.is_empty() {
                    return Err(ReferralsError::NotEligible(reasons));
                }
                Some(target)
            }
            _ => None,
        };
        let mut tx = match self.writes.claim("TriageReferral", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let mut referral = store::lock_referral(&mut tx, id, write.scope()).await?.ok_or_else(|| not_found(id))?;
        check_etag(&referral, etag)?;
        let to = transition(&referral, decision.action())?;
        let service = self.service_in(&mut tx, &referral.service_code).await?;
        let clock_before = referral.clock;
        let now = pac_platform::now();
        let today = local_date(now);
        let mut redirected = None;
        match decision {
            Decision::Accept => referral.triage_code = "ACCEPTED".into(),
            Decision::Reject { reason_code, comment } => {
                (referral.triage_code, referral.triage_text) = (reason_code, comment);
                referral.clock = stop_clock(&referral.clock, Code::DecisionNotToTreat, today)?;
            }
            Decision::ReturnToReferrer { advice } => {
                (referral.triage_code, referral.triage_text) = ("RETURNED_WITH_ADVICE".into(), advice);
                referral.clock = stop_clock(&referral.clock, Code::DecisionNotToTreat, today)?;
            }
            Decision::RequestInformation { question } => {
                (referral.triage_code, referral.triage_text) = ("INFORMATION_REQUESTED".into(), question);
            }
            Decision::InformationReceived { information } => {
                referral.triage_code = "INFORMATION_RECEIVED".into();
                referral.information.extend(information);
            }
            Decision::Redirect { service_code, comment } => {
                let target = redirect_to.expect("checked above");
                // The wait continues at the new service: the new referral keeps the clock. It is the
                // new service's organisation's from now on (a hand-over; see the module docs).
                let mut moved =
                    new_referral(&referral_as_new(&referral, service_code), referral.patient_id, &target, referral.clock, now, now);
                moved.clock.code = Code::Transfer;
                moved.redirected_from = Some(referral.id);
                store::insert_referral(&mut tx, &moved).await?;
                store::insert_clock_event(&mut tx, moved.id, &moved.clock, today, "recorded", &write.actor.subject).await?;
                (referral.triage_code, referral.triage_text) = ("REDIRECTED".into(), comment);
                referral.redirected_to = Some(moved.id);
                referral.clock =
                    Clock { code: Code::Transfer, state: State::Stopped, ended: Some(today.max(referral.clock.started)), ..referral.clock };
                self.emit(&mut tx, &moved, Event::ReferralReceived(referral_event(&moved, "redirected")), &write).await?;
                redirected = Some(moved);
            }
        }
        self.save(&mut tx, &mut referral, to, &service, now).await?;
        if referral.clock != clock_before {
            store::insert_clock_event(&mut tx, referral.id, &referral.clock, today, "recorded", &write.actor.subject).await?;
        }
        let event = Event::ReferralTriaged(referral_event(&referral, &referral.triage_code));
        self.emit(&mut tx, &referral, event, &write).await?;
        let response = pb::TriageReferralResponse {
            referral: Some(convert::referral(&referral, now)),
            redirected_referral: redirected.as_ref().map(|r| convert::referral(r, now)),
        };
        tx.commit(&response).await?;
        tracing::info!(referral_id = %referral.id, status = referral.status.code(), "referral triaged");
        Ok(response)
    }

    /// Cancels a referral and any live appointment booked for it.
    pub async fn cancel(&self, id: Uuid, etag: &str, reason: String, write: Write) -> Result<pb::CancelReferralResponse> {
        let mut tx = match self.writes.claim("CancelReferral", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let mut referral = store::lock_referral(&mut tx, id, write.scope()).await?.ok_or_else(|| not_found(id))?;
        check_etag(&referral, etag)?;
        let to = transition(&referral, Action::Cancel)?;
        let service = self.service_in(&mut tx, &referral.service_code).await?;
        // Under the referral's lock, so the appointment's cancellation event finds it cancelled.
        let cancelled_appointment = referral.current_appointment_id.take();
        if let Some(appointment_id) = cancelled_appointment {
            self.clients.cancel_appointment(appointment_id, REFERRAL_CANCELLED, format!("referral-cancel-{id}")).await?;
        }
        let now = pac_platform::now();
        let today = local_date(now);
        (referral.triage_code, referral.triage_text) = ("CANCELLED".into(), reason.clone());
        if referral.clock.state == State::Running {
            referral.clock = Clock { state: State::Stopped, ended: Some(today.max(referral.clock.started)), ..referral.clock };
            store::insert_clock_event(&mut tx, referral.id, &referral.clock, today, "recorded", &write.actor.subject).await?;
        }
        referral.rebook_reason = None;
        self.save(&mut tx, &mut referral, to, &service, now).await?;
        self.emit(&mut tx, &referral, Event::ReferralCancelled(referral_event(&referral, &reason)), &write).await?;
        let response = pb::CancelReferralResponse {
            referral: Some(convert::referral(&referral, now)),
            cancelled_appointment_id: cancelled_appointment.map(|a| a.to_string()).unwrap_or_default(),
        };
        tx.commit(&response).await?;
        tracing::info!(referral_id = %referral.id, appointment_cancelled = cancelled_appointment.is_some(), "referral cancelled");
        Ok(response)
    }

    pub async fn record_clock_event(
        &self,
        id: Uuid,
        etag: &str,
        event: ClockEvent,
        on: NaiveDate,
        write: Write,
    ) -> Result<pb::RecordClockEventResponse> {
        let mut tx = match self.writes.claim("RecordClockEvent", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let mut referral = store::lock_referral(&mut tx, id, write.scope()).await?.ok_or_else(|| not_found(id))?;
        check_etag(&referral, etag)?;
        let mut to = transition(&referral, Action::RecordClockEvent)?;
        let service = self.service_in(&mut tx, &referral.service_code).await?;
        referral.clock = referral.clock.apply(event, on, service.later_dna).map_err(ReferralsError::ClockRefused)?;
        if let ClockEvent::Stop(code) = event {
            to = referral::after_clock_stop(to, code);
        }
        if to.is_terminal() {
            // The pathway is over: its live appointment goes (under the lock, as in `cancel`).
            if let Some(appointment_id) = referral.current_appointment_id.take() {
                self.clients.cancel_appointment(appointment_id, REFERRAL_CLOSED, format!("referral-closed-{id}-{appointment_id}")).await?;
            }
            referral.rebook_reason = None;
        }
        let now = pac_platform::now();
        self.save(&mut tx, &mut referral, to, &service, now).await?;
        store::insert_clock_event(&mut tx, referral.id, &referral.clock, on, "recorded", &write.actor.subject).await?;
        let reason = referral.clock.code.value().to_string();
        let event = if matches!(event, ClockEvent::Stop(_)) {
            Event::ClockStopped(referral_event(&referral, &reason))
        } else {
            Event::ReferralUpdated(referral_event(&referral, &reason))
        };
        self.emit(&mut tx, &referral, event, &write).await?;
        let response = pb::RecordClockEventResponse { referral: Some(convert::referral(&referral, now)) };
        tx.commit(&response).await?;
        tracing::info!(referral_id = %referral.id, rtt_code = referral.clock.code.value(), "clock event recorded");
        Ok(response)
    }

    pub async fn get(&self, id: Uuid, scope: Scope<'_>) -> Result<(Referral, Vec<Note>)> {
        let referral = store::find_referral(&self.pool, id, scope).await?.ok_or_else(|| not_found(id))?;
        let notes = store::notes_of(&self.pool, id).await?;
        Ok((referral, notes))
    }

    pub async fn referral(&self, id: Uuid, scope: Scope<'_>) -> Result<Referral> {
        store::find_referral(&self.pool, id, scope).await?.ok_or_else(|| not_found(id))
    }

    pub async fn worklist(
        &self,
        filter: &Worklist,
        after: Option<WorklistKey>,
        limit: i64,
        scope: Scope<'_>,
    ) -> Result<Vec<(Referral, WorklistKey)>> {
        Ok(store::worklist(&self.pool, filter, after, limit, scope).await?)
    }

    /// Adds a note to a referral in the writer's scope; the answer, and the referral's patient.
    pub async fn add_note(&self, mut note: Note, write: Write) -> Result<(pb::AddNoteResponse, Uuid)> {
        // Before the request id is looked at: a retry from outside the scope finds nothing either.
        let referral = self.referral(note.referral_id, write.scope()).await?;
        let mut tx = match self.writes.claim("AddNote", &write).await? {
            Claim::Replay(r) => return Ok((r, referral.patient_id)),
            Claim::Fresh(tx) => tx,
        };
        note.author = write.actor.clone();
        store::insert_note(&mut tx, &note).await?;
        let response = pb::AddNoteResponse { note: Some(convert::note(&note)) };
        tx.commit(&response).await?;
        tracing::info!(referral_id = %note.referral_id, note_id = %note.id, task = note.task, "note added");
        Ok((response, referral.patient_id))
    }

    /// Marks a task of a referral in `scope` done; the task, and the referral's patient.
    pub async fn complete_task(&self, referral_id: Uuid, task_id: Uuid, scope: Scope<'_>) -> Result<(Note, Uuid)> {
        let mut tx = self.writes.begin().await?;
        let referral = store::find_referral(&mut *tx, referral_id, scope).await?.ok_or_else(|| not_found(referral_id))?;
        let task = store::complete_task(&mut tx, referral_id, task_id, pac_platform::now())
            .await?
            .ok_or(ReferralsError::NotFound { resource: "pac.referrals.v1.Note", id: task_id.to_string() })?;
        tx.commit_unanswered().await?;
        Ok((task, referral.patient_id))
    }

    pub(super) async fn service_in(&self, conn: &mut PgConnection, code: &str) -> Result<ServiceEntry> {
        store::find_service(conn, code).await?.ok_or_else(|| ReferralsError::ServiceNotFound(code.to_string()))
    }

    /// Writes the referral in its new status, one version on.
    pub(super) async fn save(
        &self,
        conn: &mut PgConnection,
        referral: &mut Referral,
        to: Status,
        service: &ServiceEntry,
        now: DateTime<Utc>,
    ) -> Result<()> {
        referral.enter(to, now, service);
        referral.version += 1;
        referral.updated_at = now;
        store::update_referral(conn, referral).await?;
        Ok(())
    }
}
