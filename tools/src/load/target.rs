//! Where the load goes and who it says it is: the gateway with bearer tokens (the way other teams
//! call the platform), or the services themselves with signed caller contexts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use pac_proto::access::access_client::AccessClient;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::referrals::referrals_client::ReferralsClient;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::credentials::Credential;

/// The roles a load acts as: coordinators make the load; an administrator sets up the directory
/// (clinics, sessions, services); a clinician triages. Without a role's credential, what needs it
/// is not done (setup fails with a message; a mix leaves the operation out).
#[derive(Clone, Debug)]
pub struct Callers {
    /// The coordinators the load's operations take turns acting as: each is a caller of its own to
    /// the gateway's per-caller limits, as a team's members are. The first also sets up.
    pub coordinators: Vec<Credential>,
    pub admin: Option<Credential>,
    pub clinician: Option<Credential>,
}

impl Callers {
    /// The coordinator who sets up the run's data.
    pub fn coordinator(&self) -> &Credential {
        &self.coordinators[0]
    }

    /// The coordinator making operation `n`.
    pub fn coordinator_for(&self, n: u64) -> &Credential {
        &self.coordinators[(n % self.coordinators.len() as u64) as usize]
    }
}

/// Connections to each API, shared round-robin by the calls.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub through_gateway: bool,
    records: Vec<Channel>,
    scheduling: Vec<Channel>,
    referrals: Vec<Channel>,
    /// The gateway's own API (`pac.access.v1.Access`); none when calling the services directly.
    access: Vec<Channel>,
    pub callers: Callers,
    next: Arc<AtomicUsize>,
}

/// How to reach an address: `host:port` (plaintext HTTP/2) or a URL (`https://` with `ca_file`).
pub async fn channels(address: &str, count: usize, ca_file: Option<&std::path::Path>) -> anyhow::Result<Vec<Channel>> {
    let url = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("{address:?} is not an address"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(file) = ca_file {
            let pem = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        channels.push(endpoint.connect().await.with_context(|| format!("cannot connect to {address}"))?);
    }
    Ok(channels)
}

impl Target {
    /// Every API through the gateway's `count` connections.
    pub fn gateway(name: String, channels: Vec<Channel>, callers: Callers) -> Self {
        Self {
            name,
            through_gateway: true,
            records: channels.clone(),
            scheduling: channels.clone(),
            referrals: channels.clone(),
            access: channels,
            callers,
            next: Arc::default(),
        }
    }

    /// Each service on its own connections; no gateway API.
    pub fn direct(name: String, records: Vec<Channel>, scheduling: Vec<Channel>, referrals: Vec<Channel>, callers: Callers) -> Self {
        Self { name, through_gateway: false, records, scheduling, referrals, access: Vec::new(), callers, next: Arc::default() }
    }

    fn pick(&self, channels: &[Channel]) -> Channel {
        channels[self.next.fetch_add(1, Ordering::Relaxed) % channels.len()].clone()
    }

    pub fn records(&self) -> PatientRecordsClient<Channel> {
        PatientRecordsClient::new(self.pick(&self.records))
    }

    pub fn scheduling(&self) -> SchedulingClient<Channel> {
        SchedulingClient::new(self.pick(&self.scheduling))
    }

    pub fn referrals(&self) -> ReferralsClient<Channel> {
        ReferralsClient::new(self.pick(&self.referrals))
    }

    /// The gateway's own API, when the load goes through the gateway.
    pub fn access(&self) -> Option<AccessClient<Channel>> {
        (!self.access.is_empty()).then(|| AccessClient::new(self.pick(&self.access)))
    }

    pub fn has_records(&self) -> bool {
        !self.records.is_empty()
    }

    pub fn has_referrals(&self) -> bool {
        !self.referrals.is_empty()
    }
}
