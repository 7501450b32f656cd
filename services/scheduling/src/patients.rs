//! The records service, as scheduling sees it: "is this a patient, and which record is current?",
//! asked over gRPC, and the stream of merges to follow.

use std::time::Duration;

use pac_platform::caller::{Actor, CALLER_HEADER, Caller, CallerVerifier};
use pac_platform::config::Secret;
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use uuid::Uuid;

use crate::error::SchedulingError;

/// How scheduling identifies itself to other components.
pub fn service_actor() -> Actor {
    Actor { subject: "pac-scheduling".into(), role: "service".into(), organisation: String::new() }
}

#[derive(Clone)]
pub struct Patients {
    client: PatientRecordsClient<Channel>,
    signer: CallerVerifier,
    timeout: Duration,
}

impl Patients {
    /// A client for the records service at `url` (connected on first use, reconnected as needed).
    pub fn new(url: &str, internal_key: &Secret, timeout: Duration) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_lazy();
        Ok(Self { client: PatientRecordsClient::new(channel), signer: CallerVerifier::new(internal_key, false), timeout })
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let caller = Caller { actor: service_actor(), organisations: Vec::new(), permissions: Vec::new() };
        let token = self.signer.sign(&caller, Duration::from_secs(300));
        if let Ok(value) = token.parse() {
            request.metadata_mut().insert(CALLER_HEADER, value);
        }
        pac_platform::telemetry::inject_context(request.metadata_mut());
        request
    }

    /// The current record for `id`: itself, or the survivor it was merged into.
    pub async fn resolve(&self, id: Uuid) -> Result<Uuid, SchedulingError> {
        let request = self.request(records_pb::GetPatientRequest { id: id.to_string() }, Some(self.timeout));
        match self.client.clone().get_patient(request).await {
            Ok(response) => {
                response.into_inner().patient.and_then(|p| Uuid::parse_str(&p.id).ok()).ok_or(SchedulingError::RecordsUnavailable)
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
        let request = self.request(records_pb::WatchEventsRequest { after_cursor: cursor }, None);
        Ok(self.client.clone().watch_events(request).await?.into_inner())
    }
}
