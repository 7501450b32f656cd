//! The referrals service, as scheduling sees it: "whose is this referral, for which service, and may
//! it be booked?", asked over gRPC before a booking, reschedule or waitlist entry that names one is
//! written (see `pac_platform::links`).

use std::time::Duration;

use pac_platform::balance::Balanced;
use pac_platform::caller::within;
use pac_platform::client::ServiceIdentity;
use pac_platform::config::Secret;
use pac_proto::referrals as referrals_pb;
use pac_proto::referrals::referrals_client::ReferralsClient;
use tonic::Code;
use uuid::Uuid;

use crate::error::SchedulingError;
use crate::patients::SUBJECT;
use crate::store::Scope;

/// What a link to a referral is checked against.
#[derive(Debug, Clone)]
pub struct ReferralFacts {
    pub id: Uuid,
    /// Its patient, as the referrals service holds it (it may not have followed a merge yet).
    pub patient_id: Uuid,
    pub organisation: String,
    pub service_code: String,
    /// Its status, as the contract names it (`REFERRAL_STATUS_AWAITING_BOOKING`).
    pub status: String,
    /// Awaiting booking, or booked (a rebooking).
    pub bookable: bool,
}

#[derive(Clone)]
pub struct Referrals {
    client: ReferralsClient<Balanced>,
    identity: ServiceIdentity,
    timeout: Duration,
}

impl Referrals {
    /// A client for the referrals service at `url` (connected on first use, reconnected as needed).
    pub fn new(url: &str, internal_key: &Secret, timeout: Duration) -> anyhow::Result<Self> {
        let identity = ServiceIdentity::new(internal_key, SUBJECT, &[]);
        Ok(Self { client: ReferralsClient::new(Balanced::new(url, 1)?), identity, timeout })
    }

    /// The referral `id`, asked as this service (which sees every organisation's referrals), then
    /// held to the caller's `scope`: another organisation's referral is not found, as an unknown one.
    pub async fn facts(&self, id: Uuid, scope: Scope<'_>) -> Result<ReferralFacts, SchedulingError> {
        let request = self.identity.request(referrals_pb::GetReferralRequest { id: id.to_string() }, Some(self.timeout));
        let referral = match self.client.clone().get_referral(request).await {
            Ok(response) => response.into_inner().referral.ok_or(SchedulingError::ReferralsUnavailable)?,
            Err(status) if status.code() == Code::NotFound => return Err(SchedulingError::ReferralNotFound(id)),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "referral check with the referrals service failed");
                return Err(SchedulingError::ReferralsUnavailable);
            }
        };
        if !within(scope, &referral.organisation) {
            return Err(SchedulingError::ReferralNotFound(id));
        }
        use referrals_pb::ReferralStatus as S;
        let status = S::try_from(referral.status).unwrap_or(S::Unspecified);
        Ok(ReferralFacts {
            id,
            patient_id: Uuid::parse_str(&referral.patient_id).map_err(|_| SchedulingError::ReferralsUnavailable)?,
            organisation: referral.organisation,
            service_code: referral.service_code,
            status: status.as_str_name().to_string(),
            bookable: matches!(status, S::AwaitingBooking | S::Booked),
        })
    }
}
