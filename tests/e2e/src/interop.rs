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
use pac_interop::tls::{Io, TlsAcceptor, TlsConnector};
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
    start_until(p, p.shutdown.clone(), adjust).await
}

/// `start`, the component stopping when `shutdown` fires.
pub async fn start_until(
    p: &Platform,
    shutdown: tokio_util::sync::CancellationToken,
    adjust: impl FnOnce(&mut InteropConfig),
) -> SocketAddr {
    let (health, _) = listener().await;
    start_serving(p, health, shutdown, adjust).await
}

/// `start_until`, its operator API (and health) served on `health`.
pub async fn start_serving(
    p: &Platform,
    health: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    adjust: impl FnOnce(&mut InteropConfig),
) -> SocketAddr {
    start_listening(p, health, shutdown, adjust).await.0
}

/// `start_serving`; the MLLP listener's address and the FHIR API's.
pub async fn start_listening(
    p: &Platform,
    health: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    adjust: impl FnOnce(&mut InteropConfig),
) -> (SocketAddr, SocketAddr) {
    let mllp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = mllp.local_addr().unwrap();
    let mut config =
        InteropConfig::development(health.local_addr().unwrap(), address, format!("http://{}", p.address), account_tokens(&["RR8"]));
    adjust(&mut config);
    let platform = p.db.platform_config();
    pac_interop::migrate(&platform, &config).await.expect("migrate interop");
    let fhir = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fhir_address = fhir.local_addr().unwrap();
    tokio::spawn(pac_interop::serve(platform, config, pac_interop::Listeners { grpc: health, mllp, fhir }, shutdown));
    (address, fhir_address)
}

/// A FHIR API answer: status, headers (lower-case names) and JSON body.
pub struct FhirAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl FhirAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.1 with `token` as the bearer, as any FHIR client sends it.
pub async fn fhir_get(address: SocketAddr, path: &str, token: Option<&str>) -> FhirAnswer {
    fhir_send(address, "GET", path, token, &[], None).await
}

/// `method path` with `headers` and a JSON `body`.
pub async fn fhir_send(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> FhirAnswer {
    fhir_send_typed(address, method, path, token, headers, body, "application/fhir+json").await
}

/// `fhir_send` with the body's `content_type`.
pub async fn fhir_send_typed(
    address: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
    content_type: &str,
) -> FhirAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nAccept: application/fhir+json\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len()));
    }
    stream.write_all(format!("{head}\r\n{body}").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(": ")).map(|(n, v)| (n.to_lowercase(), v.to_string())).collect();
    FhirAnswer { status, headers, body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null) }
}

/// A small pool as the interop component's own role (its schema first on the search path).
pub async fn pool(p: &Platform) -> sqlx::PgPool {
    let mut platform = p.db.platform_config();
    platform.db.max_connections = 2;
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = InteropConfig::development(unused, unused, String::new(), account_tokens(&["RR8"]));
    pac_interop::connect(&platform, &config).await.unwrap()
}

/// An MLLP connection, as a PAS's integration engine holds one.
pub struct Pas(Framed<Box<dyn Io>, Mllp>);

impl Pas {
    pub async fn connect(address: SocketAddr) -> Self {
        Self(Framed::new(Box::new(TcpStream::connect(address).await.unwrap()), Mllp::default()))
    }

    /// Over TLS, the listener's certificate checked as `localhost`; the handshake's error if it fails.
    pub async fn connect_tls(address: SocketAddr, tls: &TlsConnector) -> std::io::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        let name = pac_interop::tls::server_name("localhost").unwrap();
        let stream = tls.connect(name, stream).await?;
        Ok(Self(Framed::new(Box::new(stream), Mllp::default())))
    }

    /// Sends `message` and reads what comes back within `within`: the ACK, or None when the
    /// connection closed or nothing came.
    pub async fn try_send(&mut self, message: impl AsRef<[u8]>, within: Duration) -> Option<Vec<u8>> {
        self.0.send(message.as_ref()).await.ok()?;
        match tokio::time::timeout(within, self.0.next()).await {
            Ok(Some(Ok(ack))) => Some(ack.to_vec()),
            _ => None,
        }
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

/// A trust's receiving engine: an MLLP server that keeps what it receives and answers AA, AE for
/// messages containing a given text, or nothing while told to be silent.
#[derive(Clone)]
pub struct Receiver {
    pub address: SocketAddr,
    pub received: Arc<std::sync::Mutex<Vec<String>>>,
    pub refuse_containing: Arc<std::sync::Mutex<Option<String>>>,
    pub silent: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds it takes to answer.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Over TLS when `tls` is given.
    pub async fn start_with(tls: Option<TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            address: listener.local_addr().unwrap(),
            received: Default::default(),
            refuse_containing: Default::default(),
            silent: Default::default(),
            delay_ms: Default::default(),
        };
        let serving = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (receiver, tls) = (serving.clone(), tls.clone());
                tokio::spawn(async move {
                    let stream: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return,
                        },
                    };
                    let mut framed = Framed::new(stream, Mllp::default());
                    while let Some(Ok(frame)) = framed.next().await {
                        let text = pac_interop::hl7::Charset::Latin1.decode(&frame).unwrap();
                        receiver.received.lock().unwrap().push(text.clone());
                        if receiver.silent.load(std::sync::atomic::Ordering::SeqCst) {
                            continue;
                        }
                        let delay = receiver.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let control = field(&text, "MSH", 10);
                        let refuse = receiver.refuse_containing.lock().unwrap().as_ref().is_some_and(|t| text.contains(t.as_str()));
                        let code = if refuse { "AE" } else { "AA" };
                        let ack = format!("MSH|^~\\&|PAS|RR8|PAC|RR8|20261205||ACK^S12^ACK|R{control}|P|2.5\rMSA|{code}|{control}\r");
                        if framed.send(ack.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        receiver
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (at most `within`) until a received message satisfies `matches`; that message.
    pub async fn wait_for(&self, within: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(found) = self.messages().into_iter().find(|m| matches(m)) {
                return Some(found);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Field `number` of the first segment `name` of `message` ("" when absent; MSH counted as HL7 does).
pub fn field(message: &str, name: &str, number: usize) -> String {
    let Some(segment) = message.split('\r').find(|s| s.starts_with(name)) else { return String::new() };
    let index = if name == "MSH" { number - 1 } else { number };
    segment.split('|').nth(index).unwrap_or_default().to_string()
}
