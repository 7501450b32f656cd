//! The records service, as scheduling sees it: "is this a patient, and which record is current?",
//! asked over gRPC, and the stream of merges to follow.

use std::time::Duration;

use pac_platform::balance::Balanced;
use pac_platform::caller::{Actor, within};
use pac_platform::client::ServiceIdentity;
use pac_platform::config::Secret;
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use tonic::Code;
use uuid::Uuid;

use crate::error::SchedulingError;
use crate::store::Scope;

/// How scheduling names itself to the other services.
pub const SUBJECT: &str = "pac-scheduling";

/// How scheduling identifies itself in what it records.
pub fn service_actor() -> Actor {
    Actor { subject: SUBJECT.into(), role: "service".into(), organisation: String::new() }
}

#[derive(Clone)]
pub struct Patients {
    client: PatientRecordsClient<Balanced>,
    identity: ServiceIdentity,
    timeout: Duration,
}

impl Patients {
    /// A client for the records service at `url` (connected on first use, reconnected as needed).
    pub fn new(url: &str, internal_key: &Secret, timeout: Duration) -> anyhow::Result<Self> {
        let identity = ServiceIdentity::new(internal_key, SUBJECT, &[]);
        Ok(Self { client: PatientRecordsClient::new(Balanced::new(url, 1)?), identity, timeout })
    }

    /// The current record for `id`: itself, or the survivor it was merged into. Asked as this
    /// service (which sees every organisation's patients), then held to the caller's `scope`: a
    /// patient of another organisation is not found, as in the records service itself.
    pub async fn resolve(&self, id: Uuid, scope: Scope<'_>) -> Result<Uuid, SchedulingError> {
        let request = self.identity.request(records_pb::GetPatientRequest { id: id.to_string() }, Some(self.timeout));
        match self.client.clone().get_patient(request).await {
            Ok(response) => {
                let patient = response.into_inner().patient.ok_or(SchedulingError::RecordsUnavailable)?;
                if !within(scope, &patient.organisation) {
                    return Err(SchedulingError::PatientNotFound(id));
                }
                Uuid::parse_str(&patient.id).map_err(|_| SchedulingError::RecordsUnavailable)
            }
            Err(status) if status.code() == Code::NotFound => Err(SchedulingError::PatientNotFound(id)),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "patient check with the records service failed");
                Err(SchedulingError::RecordsUnavailable)
            }
        }
    }

    /// The records service's events after `cursor`, following live.
    pub async fn watch(&self, cursor: String) -> Result<tonic::Streaming<records_pb::WatchEventsResponse>, tonic::Status> {
        let request = self.identity.request(records_pb::WatchEventsRequest { after_cursor: cursor }, None);
        Ok(self.client.clone().watch_events(request).await?.into_inner())
    }
}
