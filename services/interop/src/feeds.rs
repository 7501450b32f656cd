//! Scheduling feeds: each configured destination (a trust's receiving engine) gets the SIU messages
//! of its organisations' appointment events.
//!
//! Two tasks a destination:
//! - the reader follows the scheduling service's `WatchEvents` through the gateway (as the
//!   integration account), makes each wanted event's message (the patient and clinic read through
//!   the gateway too) and stores it with the next sequence number, moving the feed's stream
//!   position past the event in the same transaction: an event is never lost nor stored twice;
//! - the sender sends the stored messages in order, one in flight, over one MLLP connection. A
//!   message is done only when an ACK whose MSA-2 is its own control id says AA (an ACK for another
//!   control id, such as a late one for an earlier try, does not count). AR, no ACK in time or a
//!   broken connection: the connection is closed and the same bytes, the same MSH-10, are sent
//!   again after a backoff. AE: the message and its patient are parked (that patient's later
//!   messages wait; the others' go on) until an operator releases the patient.
//!
//! A destination may be reached over TLS (its CA, a client certificate when it wants one). However
//! many replicas run, one holds each feed (`Feed::own`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pac_proto::scheduling as sched;
use sqlx::PgPool;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::gateway::{Call, Gateway};
use crate::hl7::{Charset, Message};
use crate::mllp::Mllp;
use crate::siu::{self, Addressing, Context};
use crate::store;
use crate::tls::Io;

/// A destination, as configured (`PAC_INTEROP_FEEDS`, a JSON list).
#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Its name: lowercase letters, digits and `-`.
    pub name: String,
    /// The receiving engine's MLLP address, `host:port`.
    pub address: String,
    /// The organisations (ODS codes) whose appointments it receives.
    pub organisations: Vec<String>,
    /// The messages it wants (`S12`, `S13`, `S14`, `S15`, `S17`, `S26`); all when absent.
    #[serde(default = "all_triggers")]
    pub messages: Vec<String>,
    /// MSH-5 and MSH-6 of what is sent.
    #[serde(default)]
    pub receiving_application: String,
    #[serde(default)]
    pub receiving_facility: String,
    /// The character set messages are written in [8859/1].
    #[serde(default = "latin1")]
    pub charset: String,
    /// How long to wait for an ACK [10000].
    #[serde(default = "ack_timeout")]
    pub ack_timeout_ms: u64,
    /// TLS to the receiving engine; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<DestinationTls>,
}

/// A destination's TLS: the CA its certificate is signed by, a client certificate when it wants
/// one (mutual TLS), and the name its certificate carries when not the address's host.
#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DestinationTls {
    pub ca_file: std::path::PathBuf,
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
}

/// A destination's TLS, ready to connect with.
struct Secured {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl Destination {
    fn secured(&self) -> anyhow::Result<Option<Secured>> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let identity = match (&tls.cert_file, &tls.key_file) {
            (Some(certificate), Some(key)) => Some(crate::tls::Identity::from_files(certificate, key)?),
            (None, None) => None,
            _ => anyhow::bail!("feed {}: a client certificate needs cert_file and key_file", self.name),
        };
        let connector = crate::tls::connector(&crate::tls::read(&tls.ca_file)?, identity.as_ref())?;
        let host = self.address.rsplit_once(':').map(|(host, _)| host.trim_matches(['[', ']'])).unwrap_or_default();
        let name = crate::tls::server_name(tls.server_name.as_deref().unwrap_or(host))?;
        Ok(Some(Secured { connector, name }))
    }
}

fn all_triggers() -> Vec<String> {
    siu::TRIGGERS.iter().map(|t| t.to_string()).collect()
}
fn latin1() -> String {
    "8859/1".into()
}
fn ack_timeout() -> u64 {
    10_000
}

/// Reads `PAC_INTEROP_FEEDS`.
pub fn parse_destinations(json: &str) -> anyhow::Result<Vec<Destination>> {
    let destinations: Vec<Destination> =
        serde_json::from_str(json).map_err(|e| anyhow::anyhow!("PAC_INTEROP_FEEDS is not a list of feeds: {e}"))?;
    let mut names = std::collections::HashSet::new();
    for d in &destinations {
        anyhow::ensure!(
            !d.name.is_empty() && d.name.len() <= 63 && d.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "feed name {:?}: lowercase letters, digits and - only",
            d.name
        );
        anyhow::ensure!(names.insert(d.name.clone()), "feed {} is listed twice", d.name);
        anyhow::ensure!(
            d.address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
            "feed {}: address must be host:port",
            d.name
        );
        anyhow::ensure!(!d.organisations.is_empty(), "feed {}: name the organisations whose appointments it receives", d.name);
        for m in &d.messages {
            anyhow::ensure!(siu::TRIGGERS.contains(&m.as_str()), "feed {}: {m} is not one of {:?}", d.name, siu::TRIGGERS);
        }
        anyhow::ensure!(Charset::from_setting(&d.charset).is_some(), "feed {}: charset {:?} is not known", d.name, d.charset);
        anyhow::ensure!((100..=60_000).contains(&d.ack_timeout_ms), "feed {}: ack_timeout_ms must be 100 to 60000", d.name);
        d.secured()?;
    }
    Ok(destinations)
}

/// Starts every destination's reader and sender (their TLS settings read first: a file that
/// cannot be read stops the start).
pub fn start(destinations: Vec<Destination>, pool: PgPool, gateway: Gateway, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut feeds = Vec::new();
    for destination in destinations {
        let tls = destination.secured()?;
        feeds.push(Arc::new(Feed { destination, tls, pool: pool.clone(), gateway: gateway.clone(), stored: Notify::new() }));
    }
    for feed in feeds {
        tokio::spawn(feed.own(shutdown.clone()));
    }
    Ok(())
}

/// How often a process that does not run a feed tries for it, and one that does checks it still
/// holds it.
const OWNERSHIP_CHECK: Duration = Duration::from_secs(2);

type Connection = Framed<Box<dyn Io>, Mllp>;

struct Feed {
    destination: Destination,
    tls: Option<Secured>,
    pool: PgPool,
    gateway: Gateway,
    /// Wakes the sender when the reader stored a message.
    stored: Notify,
}

/// Waits between tries: doubling from a second to thirty.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_secs(1))
    }
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

impl Feed {
    fn name(&self) -> &str {
        &self.destination.name
    }

    async fn note_error(&self, sequence: Option<i64>, error: &str) {
        tracing::warn!(feed = self.name(), error, "feed");
        if let Err(e) = store::attempt_failed(&self.pool, self.name(), sequence, error).await {
            tracing::warn!(feed = self.name(), error = %pac_platform::ApiError::from(e).reason, "recording a feed's error failed");
        }
    }

    /// Runs the feed while this process holds its lock (a session advisory lock on a connection of
    /// its own): whatever the replicas, one process reads and sends each feed, so its messages go
    /// one at a time and in order. The lock goes with the connection: a process that dies or loses
    /// its database connection lets another take the feed over.
    async fn own(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            match self.lock().await {
                Ok(Some(mut held)) => {
                    let running = shutdown.child_token();
                    let reader = tokio::spawn(self.clone().read(running.clone()));
                    let sender = tokio::spawn(self.clone().send(running.clone()));
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(OWNERSHIP_CHECK) => {
                                if sqlx::query("SELECT 1").execute(&mut held).await.is_err() {
                                    tracing::warn!(feed = self.name(), "the feed's lock connection failed: the feed stops here");
                                    break;
                                }
                            }
                        }
                    }
                    running.cancel();
                    let _ = reader.await;
                    let _ = sender.await;
                    let _ = sqlx::Connection::close(held).await;
                }
                Ok(None) => {}
                Err(error) => self.note_error(None, &format!("taking the feed's lock: {error}")).await,
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(OWNERSHIP_CHECK) => {}
            }
        }
    }

    /// A connection holding the feed's lock, or None when another process holds it.
    async fn lock(&self) -> Result<Option<sqlx::PgConnection>, sqlx::Error> {
        let mut connection = self.pool.acquire().await?.detach();
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('pac-interop-feed:' || $1))")
            .bind(self.name())
            .fetch_one(&mut connection)
            .await?;
        if held {
            Ok(Some(connection))
        } else {
            let _ = sqlx::Connection::close(connection).await;
            Ok(None)
        }
    }

    async fn read(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut clinics: HashMap<String, sched::Clinic> = HashMap::new();
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = self.follow(&mut clinics, &mut backoff) => outcome,
            };
            if let Err(error) = outcome {
                self.note_error(None, &error).await;
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    /// Follows the stream from the stored position until it fails.
    async fn follow(&self, clinics: &mut HashMap<String, sched::Clinic>, backoff: &mut Backoff) -> Result<(), String> {
        let cursor = store::feed_cursor(&self.pool, self.name()).await.map_err(|e| format!("the feed's position: {e}"))?;
        let request_id = format!("feed:{}", self.name());
        let mut stream =
            self.gateway.watch_scheduling(&cursor, &request_id).await.map_err(|s| format!("following scheduling events: {}", s.code()))?;
        while let Some(item) = stream.message().await.map_err(|s| format!("the scheduling event stream ended: {}", s.code()))? {
            self.take(item, clinics).await?;
            *backoff = Backoff::new();
        }
        Err("the scheduling event stream ended".into())
    }

    /// Stores the event's message, or moves past an event the destination does not want.
    async fn take(&self, item: sched::WatchEventsResponse, clinics: &mut HashMap<String, sched::Clinic>) -> Result<(), String> {
        let Some(envelope) = item.envelope else { return Err("an event without its envelope".into()) };
        let wanted = item.event.as_ref().and_then(siu::trigger_of).filter(|(trigger, event)| {
            self.destination.messages.iter().any(|m| m == trigger)
                && event.appointment.as_ref().is_some_and(|a| self.destination.organisations.contains(&a.organisation))
        });
        let Some((trigger, event)) = wanted else {
            return store::advance_cursor(&self.pool, self.name(), &envelope.cursor).await.map_err(|e| e.to_string());
        };
        let appointment = event.appointment.clone().unwrap_or_default();
        // The reads a message needs, under the event's id in the audit trail.
        let call = Call {
            request_id: format!("feed:{}:{}", self.name(), envelope.event_id),
            deadline: std::time::Instant::now() + Duration::from_secs(10),
        };
        let patient = match self.gateway.get_patient(&appointment.patient_id, &call).await {
            Ok(patient) => patient,
            // A patient the account cannot see (never expected: the appointment is of its
            // organisation): the message names the platform's id alone rather than stop the feed.
            Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::PermissionDenied) => {
                pac_proto::records::Patient { id: appointment.patient_id.clone(), ..Default::default() }
            }
            Err(status) => return Err(format!("reading the patient: {}", status.code())),
        };
        if !clinics.contains_key(&appointment.clinic_id) {
            let clinic = match self.gateway.get_clinic(&appointment.clinic_id, &call).await {
                Ok(clinic) => clinic,
                // Gone or out of reach: the message names no clinic rather than stop the feed.
                Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::PermissionDenied) => sched::Clinic::default(),
                Err(status) => return Err(format!("reading the clinic: {}", status.code())),
            };
            if clinics.len() >= 1_000 {
                clinics.clear();
            }
            clinics.insert(appointment.clinic_id.clone(), clinic);
        }
        let clinic = &clinics[&appointment.clinic_id];
        let charset = Charset::from_setting(&self.destination.charset).unwrap_or(Charset::Latin1);
        let addressing = Addressing {
            sending_application: "PAC".into(),
            receiving_application: self.destination.receiving_application.clone(),
            receiving_facility: self.destination.receiving_facility.clone(),
            charset,
        };
        let changed_by = envelope.actor.as_ref().map(|a| a.subject.clone()).unwrap_or_default();
        let context = Context { patient: &patient, clinic, changed_by: &changed_by };
        store::enqueue(&self.pool, self.name(), &envelope.event_id, &envelope.cursor, &patient.id, trigger, |sequence| {
            let control_id = format!("PAC{sequence:017}");
            let text = siu::build(trigger, event, &context, &addressing, &control_id, chrono::Utc::now());
            (control_id, charset.encode(&text))
        })
        .await
        .map_err(|e| format!("storing a message: {e}"))?;
        self.stored.notify_one();
        Ok(())
    }

    async fn send(self: Arc<Self>, shutdown: CancellationToken) {
        let mut connection: Option<Connection> = None;
        let mut backoff = Backoff::new();
        loop {
            let next = match store::next_outbound(&self.pool, self.name()).await {
                Ok(next) => next,
                Err(error) => {
                    self.note_error(None, &format!("reading the next message: {error}")).await;
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(message) = next else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.stored.notified() => {}
                    // Another replica, an operator's release or replay.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return,
                answer = self.deliver(&mut connection, &message) => answer,
            };
            let recorded = match answer {
                Ok(Ack::Accepted) => {
                    backoff = Backoff::new();
                    store::delivered(&self.pool, self.name(), message.sequence).await
                }
                Ok(Ack::Refused(reason)) => {
                    tracing::warn!(
                        feed = self.name(),
                        sequence = message.sequence,
                        "the destination refused a message (AE): its patient's messages are parked"
                    );
                    backoff = Backoff::new();
                    store::park(&self.pool, self.name(), &message, &reason).await
                }
                Err(error) => {
                    connection = None;
                    self.note_error(Some(message.sequence), &error).await;
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    Ok(())
                }
            };
            if let Err(error) = recorded {
                self.note_error(None, &format!("recording a delivery: {error}")).await;
            }
        }
    }

    /// Sends `message` and waits for its ACK: Ok for AA or AE, Err for anything to try again.
    async fn deliver(&self, connection: &mut Option<Connection>, message: &store::Outbound) -> Result<Ack, String> {
        let timeout = Duration::from_millis(self.destination.ack_timeout_ms);
        if connection.is_none() {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(&self.destination.address))
                .await
                .map_err(|_| "connecting timed out".to_string())?
                .map_err(|e| format!("connecting: {e}"))?;
            let _ = stream.set_nodelay(true);
            let stream: Box<dyn Io> = match &self.tls {
                None => Box::new(stream),
                Some(tls) => Box::new(
                    tokio::time::timeout(timeout, tls.connector.connect(tls.name.clone(), stream))
                        .await
                        .map_err(|_| "the TLS handshake timed out".to_string())?
                        .map_err(|e| format!("the TLS handshake: {e}"))?,
                ),
            };
            *connection = Some(Framed::new(stream, Mllp::default()));
        }
        let framed = connection.as_mut().expect("connected above");
        framed.send(&message.message[..]).await.map_err(|e| format!("sending: {e}"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, framed.next()).await.map_err(|_| "no ACK in time".to_string())?;
            let frame = frame.ok_or("the destination closed the connection")?.map_err(|e| format!("reading the ACK: {e}"))?;
            match read_ack(&frame, &message.control_id) {
                // An ACK for another message (a late answer to an earlier try): keep waiting.
                None => continue,
                Some(ack) => return ack,
            }
        }
    }
}

/// What an ACK for the message with `control_id` said.
#[derive(Debug, PartialEq, Eq)]
enum Ack {
    Accepted,
    Refused(String),
}

/// The ACK in `frame` if it answers `control_id`: AA, AE (with its text), or Err (AR or
/// unreadable: try again).
fn read_ack(frame: &[u8], control_id: &str) -> Option<Result<Ack, String>> {
    let Ok((text, _)) = crate::hl7::decode(frame, Charset::Windows1252, true) else {
        return Some(Err("the ACK could not be read".into()));
    };
    let Ok(ack) = Message::parse(&text) else { return Some(Err("the ACK could not be read".into())) };
    let Some(msa) = ack.segment("MSA") else { return Some(Err("the ACK has no MSA".into())) };
    if msa.text(2, 1) != control_id {
        return None;
    }
    Some(match msa.text(1, 1).as_str() {
        "AA" | "CA" => Ok(Ack::Accepted),
        "AE" | "CE" | "CR" => {
            let err = ack.segment("ERR").map(|e| [e.text(3, 1), e.text(1, 4)].join(" ").trim().to_string()).unwrap_or_default();
            Ok(Ack::Refused(format!("AE {err}").trim().to_string()))
        }
        other => Err(format!("the destination answered {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ack_for_the_message_sent_counts() {
        let ack =
            |code: &str, id: &str| format!("MSH|^~\\&|PAS|RR8|PAC|RR8|20261205||ACK^S12^ACK|X1|P|2.5\rMSA|{code}|{id}\r").into_bytes();
        assert_eq!(read_ack(&ack("AA", "PAC00000000000000002"), "PAC00000000000000002"), Some(Ok(Ack::Accepted)));
        assert_eq!(read_ack(&ack("AA", "PAC00000000000000001"), "PAC00000000000000002"), None, "a late ACK for another message");
        assert!(matches!(read_ack(&ack("AE", "PAC00000000000000002"), "PAC00000000000000002"), Some(Ok(Ack::Refused(_)))));
        assert!(read_ack(&ack("AR", "PAC00000000000000002"), "PAC00000000000000002").unwrap().is_err());
        assert!(read_ack(b"garbage", "PAC00000000000000002").unwrap().is_err());
    }

    #[test]
    fn destinations_are_checked() {
        let good = r#"[{"name":"rr8-pas","address":"10.0.0.5:2576","organisations":["RR8"]}]"#;
        let parsed = parse_destinations(good).unwrap();
        assert_eq!((parsed[0].messages.len(), parsed[0].charset.as_str(), parsed[0].ack_timeout_ms), (6, "8859/1", 10_000));
        for bad in [
            r#"[{"name":"RR8","address":"h:1","organisations":["RR8"]}]"#,
            r#"[{"name":"a","address":"nohost","organisations":["RR8"]}]"#,
            r#"[{"name":"a","address":"h:1","organisations":[]}]"#,
            r#"[{"name":"a","address":"h:1","organisations":["RR8"],"messages":["A01"]}]"#,
            r#"[{"name":"a","address":"h:1","organisations":["RR8"],"colour":"red"}]"#,
            r#"[{"name":"a","address":"h:1","organisations":["RR8"]},{"name":"a","address":"h:2","organisations":["RR8"]}]"#,
        ] {
            assert!(parse_destinations(bad).is_err(), "{bad}");
        }
    }
}
