//! The interop component's only way to patient data: the public gateway, called as an integration
//! account with a bearer token like any other client. Authorisation, organisation scoping and the
//! audit trail are the gateway's; each call carries the message's request id (`x-request-id`), so
//! the audit trail shows every effect of a message under it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use pac_platform::config::Secret;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::records::{self as pb, lookup_patient_request};
use pac_proto::referrals::referrals_client::ReferralsClient;
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use prost_types::FieldMask;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::adt::Identifier;

/// Where the integration account's bearer token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// A fixed token (`PAC_INTEROP_TOKEN`).
    Fixed(Secret),
    /// A file re-read when it changes (`PAC_INTEROP_TOKEN_FILE`: a mounted secret that an operator or
    /// a token service renews).
    File(PathBuf),
    /// Made on demand (`pac dev` mints development tokens).
    Minted(Arc<dyn Fn() -> String + Send + Sync>),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(_) => f.write_str("Fixed(..)"),
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Minted(_) => f.write_str("Minted(..)"),
        }
    }
}

/// How long a token read from a file is used before the file is read again.
const FILE_TOKEN_REFRESH: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Tokens {
    source: TokenSource,
    cached: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Tokens {
    pub fn new(source: TokenSource) -> Self {
        Self { source, cached: Arc::new(Mutex::new(None)) }
    }

    /// The current token.
    pub fn current(&self) -> Result<String, String> {
        match &self.source {
            TokenSource::Fixed(token) => Ok(token.expose().trim().to_string()),
            TokenSource::Minted(mint) => Ok(mint()),
            TokenSource::File(path) => {
                let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((read, token)) = cached.as_ref()
                    && read.elapsed() < FILE_TOKEN_REFRESH
                {
                    return Ok(token.clone());
                }
                let token = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the integration account's token file {}: {e}", path.display()))?
                    .trim()
                    .to_string();
                *cached = Some((Instant::now(), token.clone()));
                Ok(token)
            }
        }
    }

    /// The organisations the token says the account acts for (its `orgs` claim). The gateway
    /// verifies the token on every call; this only reads it, to refuse messages from a sending
    /// facility the account cannot act for before any call is made.
    pub fn organisations(&self) -> Result<Vec<String>, String> {
        let token = self.current()?;
        let payload = token.split('.').nth(1).ok_or("the integration account's token is not a JWT")?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| "the integration account's token is not a JWT")?;
        #[derive(serde::Deserialize)]
        struct Claims {
            #[serde(default)]
            orgs: Vec<String>,
        }
        let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| "the integration account's token has no readable claims")?;
        Ok(claims.orgs)
    }
}

/// The gateway, as the integration account.
#[derive(Clone)]
pub struct Gateway {
    records: PatientRecordsClient<Channel>,
    scheduling: SchedulingClient<Channel>,
    referrals: ReferralsClient<Channel>,
    tokens: Tokens,
}

/// One message's calls: its request id and the instant its answer is due.
#[derive(Debug, Clone)]
pub struct Call {
    pub request_id: String,
    pub deadline: Instant,
}

impl Gateway {
    pub fn new(channel: Channel, tokens: Tokens, max_message_bytes: usize) -> Self {
        let records = PatientRecordsClient::new(channel.clone()).max_decoding_message_size(max_message_bytes);
        let scheduling = SchedulingClient::new(channel.clone()).max_decoding_message_size(max_message_bytes);
        let referrals = ReferralsClient::new(channel).max_decoding_message_size(max_message_bytes);
        Self { records, scheduling, referrals, tokens }
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The gateway as another caller, with their own bearer token (the FHIR API's callers).
    pub fn as_caller(&self, bearer: String) -> Self {
        Self { tokens: Tokens::new(TokenSource::Fixed(Secret::new(bearer))), ..self.clone() }
    }

    /// The scheduling service's client, through the gateway (requests made with [`Self::request`]).
    pub fn scheduling(&self) -> SchedulingClient<Channel> {
        self.scheduling.clone()
    }

    /// The referrals service's client, through the gateway (requests made with [`Self::request`]).
    pub fn referrals(&self) -> ReferralsClient<Channel> {
        self.referrals.clone()
    }

    /// `message` as a request of this caller, with the call's request id and deadline.
    pub fn request<T>(&self, message: T, call: &Call) -> Result<Request<T>, Status> {
        let remaining = call.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Status::deadline_exceeded("the message's time budget is spent"));
        }
        let mut request = self.unbounded(message, &call.request_id)?;
        request.set_timeout(remaining);
        Ok(request)
    }

    /// A request with the account's token and `request_id`, and no deadline (a stream).
    fn unbounded<T>(&self, message: T, request_id: &str) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        let token = self.tokens.current().map_err(Status::unavailable)?;
        let metadata = request.metadata_mut();
        let bearer =
            format!("Bearer {token}").parse().map_err(|_| Status::unavailable("the integration account's token is not a header value"))?;
        metadata.insert("authorization", bearer);
        if let Ok(id) = request_id.parse() {
            metadata.insert("x-request-id", id);
        }
        pac_platform::telemetry::inject_context(metadata);
        Ok(request)
    }

    /// The patient known by `identifier`, with the id it was asked by when that record was merged
    /// away; `None` when there is none the account can see.
    pub async fn lookup(&self, identifier: &Identifier, call: &Call) -> Result<Option<(pb::Patient, String)>, Status> {
        let identifier = match identifier {
            Identifier::Nhs(number) => lookup_patient_request::Identifier::NhsNumber(number.clone()),
            Identifier::Local(local) => lookup_patient_request::Identifier::LocalIdentifier(local.clone()),
        };
        let request = self.request(pb::LookupPatientRequest { identifier: Some(identifier) }, call)?;
        match self.records.clone().lookup_patient(request).await {
            Ok(response) => {
                let response = response.into_inner();
                Ok(response.patient.map(|p| (p, response.merged_from)))
            }
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    pub async fn get_patient(&self, id: &str, call: &Call) -> Result<pb::Patient, Status> {
        let response = self.records.clone().get_patient(self.request(pb::GetPatientRequest { id: id.to_string() }, call)?).await?;
        response.into_inner().patient.ok_or_else(|| Status::internal("the gateway answered without the patient"))
    }

    /// The patient with `id`, and the id asked for when that record was merged away.
    pub async fn read_patient(&self, id: &str, call: &Call) -> Result<(pb::Patient, String), Status> {
        let response =
            self.records.clone().get_patient(self.request(pb::GetPatientRequest { id: id.to_string() }, call)?).await?.into_inner();
        let patient = response.patient.ok_or_else(|| Status::internal("the gateway answered without the patient"))?;
        Ok((patient, response.merged_from))
    }

    /// A page of the patients `request` finds, and the next page's token (empty on the last).
    pub async fn search_patients(&self, request: pb::SearchPatientsRequest, call: &Call) -> Result<(Vec<pb::Patient>, String), Status> {
        let response = self.records.clone().search_patients(self.request(request, call)?).await?.into_inner();
        Ok((response.results.into_iter().filter_map(|r| r.patient).collect(), response.next_page_token))
    }

    pub async fn get_clinic(&self, id: &str, call: &Call) -> Result<sched::Clinic, Status> {
        let response = self.scheduling.clone().get_clinic(self.request(sched::GetClinicRequest { id: id.to_string() }, call)?).await?;
        response.into_inner().clinic.ok_or_else(|| Status::internal("the gateway answered without the clinic"))
    }

    /// The scheduling service's events of the account's organisations, after `cursor`, then as they
    /// happen.
    pub async fn watch_scheduling(&self, cursor: &str, request_id: &str) -> Result<tonic::Streaming<sched::WatchEventsResponse>, Status> {
        let request = self.unbounded(sched::WatchEventsRequest { after_cursor: cursor.to_string() }, request_id)?;
        Ok(self.scheduling.clone().watch_events(request).await?.into_inner())
    }

    pub async fn register(&self, patient: pb::Patient, allow_possible_duplicate: bool, call: &Call) -> Result<pb::Patient, Status> {
        let message = pb::RegisterPatientRequest { patient: Some(patient), request_id: call.request_id.clone(), allow_possible_duplicate };
        let response = self.records.clone().register_patient(self.request(message, call)?).await?;
        response.into_inner().patient.ok_or_else(|| Status::internal("the gateway answered a registration without its patient"))
    }

    pub async fn update(&self, patient: pb::Patient, paths: Vec<String>, call: &Call) -> Result<pb::Patient, Status> {
        let message = pb::UpdatePatientRequest { patient: Some(patient), update_mask: Some(FieldMask { paths }) };
        let response = self.records.clone().update_patient(self.request(message, call)?).await?;
        response.into_inner().patient.ok_or_else(|| Status::internal("the gateway answered an update without its patient"))
    }

    pub async fn merge(&self, survivor_id: &str, merged_id: &str, reason: &str, call: &Call) -> Result<(), Status> {
        let message = pb::MergePatientsRequest {
            survivor_id: survivor_id.to_string(),
            merged_id: merged_id.to_string(),
            reason: reason.to_string(),
            request_id: call.request_id.clone(),
        };
        self.records.clone().merge_patients(self.request(message, call)?).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accounts_organisations_are_read_from_its_token() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"pas","role":"integration","orgs":["RR8","RAE"]}"#);
        let tokens = Tokens::new(TokenSource::Fixed(Secret::new(format!("e30.{claims}.c2ln"))));
        assert_eq!(tokens.organisations().unwrap(), vec!["RR8", "RAE"]);
        assert!(Tokens::new(TokenSource::Fixed(Secret::new("opaque"))).organisations().is_err());
        let missing = Tokens::new(TokenSource::File("/nonexistent/token".into()));
        assert!(missing.current().unwrap_err().contains("/nonexistent/token"));
    }
}
