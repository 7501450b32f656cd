//! The directory of services, and eligibility for them.

use super::*;

impl Referrals {
    pub async fn create_service(&self, service: ServiceEntry, write: Write) -> Result<pb::CreateServiceResponse> {
        let mut tx = match self.writes.claim("CreateService", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        if !store::insert_service(&mut tx, &service).await? {
            return Err(ReferralsError::ServiceExists(service.code));
        }
        let response = pb::CreateServiceResponse { service: Some(convert::service(&service)) };
        tx.commit(&response).await?;
        tracing::info!(service_code = %service.code, "service added to the directory");
        Ok(response)
    }

    pub async fn service(&self, code: &str) -> Result<ServiceEntry> {
        store::find_service(&self.pool, code).await?.ok_or_else(|| ReferralsError::ServiceNotFound(code.to_string()))
    }

    pub async fn list_services(&self, after: &str, limit: i64) -> Result<Vec<ServiceEntry>> {
        Ok(store::list_services(&self.pool, after, limit).await?)
    }

    /// Every entry rule of `service` that the patient (and what is known of the referral) breaks.
    ///
    /// The patient is read as this service (which sees every organisation's patients), then held to
    /// the caller's `scope`: another organisation's patient is not found, since the reasons would
    /// tell the caller about them (their age, sex, area).
    pub async fn check_eligibility(
        &self,
        patient_id: Uuid,
        service: &ServiceEntry,
        facts: ReferralFacts,
        scope: Scope<'_>,
    ) -> Result<(PatientFacts, Vec<Reason>)> {
        let patient = self.clients.patient(patient_id).await?;
        if !within(scope, &patient.organisation) {
            return Err(ReferralsError::PatientNotFound(patient_id));
        }
        let applicant = Applicant {
            birth_date: patient.birth_date,
            sex: patient.sex,
            district: patient.district.clone(),
            source: facts.source,
            priority: facts.priority,
            information: facts.information,
        };
        let reasons = eligibility::check(&service.rules, &applicant, today());
        Ok((patient, reasons))
    }
}
