//! The directory: locations, clinics and session templates, and the slots they generate.

use super::*;

impl Scheduling {
    pub async fn create_location(&self, location: Location, write: Write) -> Result<pb::CreateLocationResponse> {
        let mut tx = match self.writes.claim("CreateLocation", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        store::insert_location(&mut tx, &location).await?;
        let response = pb::CreateLocationResponse { location: Some(convert::location(&location)) };
        tx.commit(&response).await?;
        Ok(response)
    }

    pub async fn create_clinic(&self, clinic: Clinic, write: Write) -> Result<pb::CreateClinicResponse> {
        let mut tx = match self.writes.claim("CreateClinic", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        store::insert_clinic(&mut tx, &clinic).await?;
        let response = pb::CreateClinicResponse { clinic: Some(convert::clinic(&clinic)) };
        tx.commit(&response).await?;
        Ok(response)
    }

    pub async fn clinic(&self, id: Uuid) -> Result<Clinic> {
        store::find_clinic(&self.pool, id).await?.ok_or(not_found("pac.scheduling.v1.Clinic", id))
    }

    pub async fn get_clinic(&self, id: Uuid) -> Result<pb::GetClinicResponse> {
        let clinic = self.clinic(id).await?;
        let location = store::find_location(&self.pool, clinic.location_id).await?;
        let templates = store::templates_of(&self.pool, id).await?;
        Ok(pb::GetClinicResponse {
            clinic: Some(convert::clinic(&clinic)),
            location: location.as_ref().map(convert::location),
            session_templates: templates.iter().map(convert::template).collect(),
        })
    }

    /// Creates a session and its slots for the horizon, then offers them to anyone waiting.
    pub async fn create_template(&self, template: Template, write: Write) -> Result<pb::CreateSessionTemplateResponse> {
        let mut tx = match self.writes.claim("CreateSessionTemplate", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let clinic = store::find_clinic(&mut *tx, template.clinic_id)
            .await?
            .ok_or_else(|| SchedulingError::invalid("session_template.clinic_id", "CLINIC_NOT_FOUND", "no clinic has this id"))?;
        let (template, created) = self.generate(&mut tx, &clinic, template).await?;
        self.offer_new_slots(&mut tx, &clinic, template.id).await?;
        let response =
            pb::CreateSessionTemplateResponse { session_template: Some(convert::template(&template)), slots_created: created as i32 };
        tx.commit(&response).await?;
        tracing::info!(template_id = %template.id, clinic_id = %clinic.id, slots_created = created, "session created");
        Ok(response)
    }

    /// Changes a session: its future free slots are withdrawn and the new pattern generated; slots
    /// holding live appointments stay as they are.
    pub async fn update_template(&self, changed: Template, write: Write) -> Result<pb::UpdateSessionTemplateResponse> {
        let mut tx = match self.writes.claim("UpdateSessionTemplate", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let current = store::lock_template(&mut tx, changed.id).await?.ok_or(not_found("pac.scheduling.v1.SessionTemplate", changed.id))?;
        if current.clinic_id != changed.clinic_id {
            return Err(SchedulingError::invalid(
                "session_template.clinic_id",
                "CLINIC_IMMUTABLE",
                "a session cannot move to another clinic",
            ));
        }
        let clinic =
            store::find_clinic(&mut *tx, current.clinic_id).await?.ok_or(not_found("pac.scheduling.v1.Clinic", current.clinic_id))?;
        let now = pac_platform::now();
        let withdrawn = store::withdraw_free_slots(&mut tx, current.id, now).await?;
        let (template, created) = self.generate(&mut tx, &clinic, changed).await?;
        let kept = store::count_occupied_slots(&mut tx, template.id, now).await?;
        self.offer_new_slots(&mut tx, &clinic, template.id).await?;
        let response = pb::UpdateSessionTemplateResponse {
            session_template: Some(convert::template(&template)),
            slots_withdrawn: withdrawn as i32,
            slots_created: created as i32,
            slots_kept: kept as i32,
        };
        tx.commit(&response).await?;
        tracing::info!(template_id = %template.id, withdrawn, created, kept, "session changed");
        Ok(response)
    }

    /// Saves a template and generates its future slots from today (clinic-local) to the horizon.
    pub(super) async fn generate(&self, conn: &mut PgConnection, clinic: &Clinic, mut template: Template) -> Result<(Template, u64)> {
        let today = clinic_time::local(clinic.zone(), Utc::now()).date();
        let through = today + Duration::days(i64::from(self.policy.horizon_days));
        template.generated_until = Some(through);
        store::save_template(conn, &template).await?;
        let created = self.generate_between(conn, clinic, &template, today, through).await?;
        Ok((template, created))
    }

    pub(super) async fn generate_between(
        &self,
        conn: &mut PgConnection,
        clinic: &Clinic,
        template: &Template,
        from: chrono::NaiveDate,
        through: chrono::NaiveDate,
    ) -> Result<u64> {
        let session = session_of(template);
        let now = Utc::now();
        let slots: Vec<_> = session.slots(clinic.zone(), from, through).into_iter().filter(|s| s.start > now).collect();
        let mut created = 0;
        for chunk in slots.chunks(2000) {
            created += store::insert_slots(conn, clinic, template, chunk).await?;
        }
        Ok(created)
    }

    /// Keeps every session's slots generated to the horizon; returns the slots created.
    pub async fn extend_horizon(&self) -> Result<u64> {
        let through = Utc::now().date_naive() + Duration::days(i64::from(self.policy.horizon_days));
        let mut created = 0;
        for stale in store::templates_to_extend(&self.pool, through).await? {
            let mut tx = self.writes.begin().await?;
            let Some(template) = store::lock_template(&mut tx, stale.id).await? else { continue };
            let Some(clinic) = store::find_clinic(&mut *tx, template.clinic_id).await? else { continue };
            let from = template.generated_until.map_or(template.valid_from, |d| d + Duration::days(1));
            created += self.generate_between(&mut tx, &clinic, &template, from, through).await?;
            store::save_template(&mut tx, &Template { generated_until: Some(through), ..template.clone() }).await?;
            self.offer_new_slots(&mut tx, &clinic, template.id).await?;
            tx.commit_unanswered().await?;
        }
        Ok(created)
    }
}
