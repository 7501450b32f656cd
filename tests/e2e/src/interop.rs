//! The interop component in front of the platform's gateway, its MLLP listener on a loopback port,
//! calling the gateway as an integration account, and an MLLP client that sends as a PAS does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pac_gateway::auth::{Identity, mint_development};
use pac_gateway::policy::Role;
use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY};
use pac_interop::InteropConfig;
use pac_interop::gateway::TokenSource;
use pac_interop::mllp::Mllp;
use pac_platform::testkit::listener;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::gateway::Platform;

/// The integration account's subject in the audit trail.
pub const ACCOUNT: &str = "trust-pas";

/// Development tokens for the integration account acting for `organisations`.
pub fn account_tokens(organisations: &[&str]) -> TokenSource {
    let identity =
        Identity { subject: ACCOUNT.into(), role: Role::Integration, organisations: organisations.iter().map(|o| o.to_string()).collect() };
    TokenSource::Minted(Arc::new(move || {
        mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, Duration::from_secs(600))
    }))
}

/// Starts the interop component for `p` (its account acting for RR8), adjusted by `adjust`; the
/// MLLP listener's address.
pub async fn start(p: &Platform, adjust: impl FnOnce(&mut InteropConfig)) -> SocketAddr {
    let (health, _) = listener().await;
    let mllp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = mllp.local_addr().unwrap();
    let mut config =
        InteropConfig::development(health.local_addr().unwrap(), address, format!("http://{}", p.address), account_tokens(&["RR8"]));
    adjust(&mut config);
    let platform = p.db.platform_config();
    pac_interop::migrate(&platform, &config).await.expect("migrate interop");
    tokio::spawn(pac_interop::serve(platform, config, health, mllp, p.shutdown.clone()));
    address
}

/// An MLLP connection, as a PAS's integration engine holds one.
pub struct Pas(Framed<TcpStream, Mllp>);

impl Pas {
    pub async fn connect(address: SocketAddr) -> Self {
        Self(Framed::new(TcpStream::connect(address).await.unwrap(), Mllp::default()))
    }

    /// Sends `message` and waits (at most 5 s, as engines do) for its ACK.
    pub async fn send(&mut self, message: impl AsRef<[u8]>) -> Vec<u8> {
        self.0.send(message.as_ref()).await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(5), self.0.next()).await.expect("an ACK within 5 s");
        ack.expect("the connection stayed open").unwrap().to_vec()
    }

    /// `send`, the ACK read as text.
    pub async fn send_text(&mut self, message: &str) -> String {
        String::from_utf8_lossy(&self.send(message).await).into_owned()
    }
}

/// MSA-1 of an ACK.
pub fn ack_code(ack: &str) -> &str {
    ack.split('\r').find(|s| s.starts_with("MSA|")).and_then(|msa| msa.split('|').nth(1)).unwrap_or("")
}

/// The ERR segment of an ACK ("" when none).
pub fn err_segment(ack: &str) -> &str {
    ack.split('\r').find(|s| s.starts_with("ERR|")).unwrap_or("")
}
