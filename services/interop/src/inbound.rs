//! One inbound message, from its bytes to the ACK that answers it.
//!
//! 1. Decode it in its character set and read its header; a message that cannot be read is AE.
//! 2. Its key (MSH-3, MSH-4, MSH-10) and body hash: a message seen before with the same body is
//!    answered with the stored ACK and changes nothing; the same key with another body is AE (205).
//! 3. Check the message type, version, processing id and sending facility, read what the event asks
//!    (`adt`), and do it through the gateway (`gateway`) with the message's request id.
//! 4. Build the ACK (AA only once the change is committed), store it with the log row, answer.
//!
//! The whole message has a time budget (3 s by default: integration engines time out at 5 s); a
//! message over it is answered AR, and sending it again is safe, since every call it makes is
//! idempotent (registrations and merges carry the message's request id, updates set values).

use std::time::{Duration, Instant};

use pac_proto::records as pb;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::ack::{self, AckCode, Location, Problem, code};
use crate::adt::{self, Demographics, Identifier, Identifiers, Request};
use crate::gateway::{Call, Gateway};
use crate::hl7::{self, Charset, Message, ReadError};
use crate::store::{self, Answer, Claim, Key, Received};

/// What a possible duplicate registered from a PAS does (`PAC_INTEROP_POSSIBLE_DUPLICATES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// The PAS is the master record: register, with the override and its candidates recorded by the
    /// records service (`register`, the default).
    Register,
    /// Refuse with AE; the message stays in the log for a coordinator to resolve (`refuse`).
    Refuse,
}

impl DuplicatePolicy {
    pub fn from_setting(value: &str) -> Option<Self> {
        match value.trim() {
            "register" => Some(Self::Register),
            "refuse" => Some(Self::Refuse),
            _ => None,
        }
    }
}

/// How a listener reads and handles messages.
#[derive(Debug, Clone)]
pub struct Handling {
    /// The listener's name in the message log.
    pub listener: String,
    /// The character set of a message whose MSH-18 is empty.
    pub default_charset: Charset,
    /// Take `\n` and `\r\n` as segment ends too.
    pub lenient_newlines: bool,
    /// The time from a message's arrival to its ACK.
    pub budget: Duration,
    /// The processing id (MSH-11) handled: `P` in production; a listener for a trust's test
    /// system takes `T` (a message with another is AE 202, and changes nothing).
    pub processing_id: String,
    pub duplicates: DuplicatePolicy,
}

/// Handles a listener's messages.
#[derive(Clone)]
pub struct Handler {
    handling: Handling,
    pool: PgPool,
    gateway: Gateway,
}

/// How many times a write that met a concurrent change is tried.
const ATTEMPTS: usize = 3;

impl Handler {
    pub fn new(handling: Handling, pool: PgPool, gateway: Gateway) -> Self {
        Self { handling, pool, gateway }
    }

    /// The ACK for `bytes` (one MLLP frame's content), in the message's character set.
    pub async fn handle(&self, bytes: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + self.handling.budget;
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let (text, charset) = match hl7::decode(bytes, self.handling.default_charset, self.handling.lenient_newlines) {
            Ok(decoded) => decoded,
            Err(error) => return self.unreadable(bytes, &hash, &unreadable_problem(&error), self.handling.default_charset).await,
        };
        let message = match Message::parse(&text) {
            Ok(message) => message,
            Err(error) => return self.unreadable(bytes, &hash, &unreadable_problem(&error), charset).await,
        };
        let inbound = header(&message);
        if inbound.control_id.is_empty() {
            let problem =
                Problem::content(code::REQUIRED_FIELD_MISSING, Some(Location::field("MSH", 10)), "MSH-10 (message control id) is empty");
            return self.unreadable_with(bytes, &hash, &inbound, &problem, charset).await;
        }
        let key = Key {
            sending_application: inbound.sending_application.first().cloned().unwrap_or_default(),
            sending_facility: inbound.sending_facility.first().cloned().unwrap_or_default(),
            control_id: inbound.control_id.clone(),
        };
        let reject = |problem: Problem| charset.encode(&ack::build(&inbound, Some(&problem), chrono::Utc::now()));
        // A sending facility the account does not act for: AR, and nothing of the message kept.
        if let Err(problem) = self.acts_for(&key.sending_facility) {
            return reject(problem);
        }
        let request_id = request_id(&key, &hash);
        let message_type = format!("{}^{}", message.header(9, 1), inbound.trigger);
        let received = Received {
            listener: &self.handling.listener,
            key: &key,
            body_sha256: &hash,
            message_type: &message_type,
            request_id: &request_id,
            raw: bytes,
        };
        // The log's work is inside the budget too: a slow database is AR in time, never silence.
        let claimed = tokio::time::timeout_at(deadline.into(), store::claim(&self.pool, &received, self.handling.budget)).await;
        let id = match claimed {
            Ok(Ok(Claim::Handle(id))) => id,
            Ok(Ok(Claim::Replay(ack))) => return ack,
            Ok(Ok(Claim::Conflict)) => {
                return reject(Problem::content(
                    code::DUPLICATE_KEY,
                    Some(Location::field("MSH", 10)),
                    "this control id was used by another message",
                ));
            }
            Ok(Ok(Claim::Busy)) => return reject(Problem::transient("this message is being handled; send it again later")),
            Ok(Err(error)) => {
                tracing::warn!(error = %pac_platform::ApiError::from(error).reason, "the message log is unavailable");
                return reject(Problem::transient("the platform is unavailable"));
            }
            Err(_) => return reject(Problem::transient("the message log did not answer in time")),
        };
        let call = Call { request_id, deadline };
        let work = self.process(&message, &inbound, &call, id);
        let outcome = match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Problem::transient("the message took longer than its time budget")),
        };
        let problem = outcome.err();
        let ack = charset.encode(&ack::build(&inbound, problem.as_ref(), chrono::Utc::now()));
        let answer = Answer {
            ack_code: problem.as_ref().map_or(AckCode::Accept, |p| p.ack).as_str(),
            error_code: problem.as_ref().map(|p| p.code),
            error_text: problem.as_ref().map(|p| p.text.as_str()),
            ack: &ack,
        };
        // Stored for a resend's replay, but the ACK goes out in time whatever the log does: the
        // change (if any) is committed; a resend before the answer is stored is answered AR while
        // the claim lasts, then handled again, and every call it makes is idempotent.
        let grace = tokio::time::Instant::from(deadline) + Duration::from_millis(500);
        match tokio::time::timeout_at(grace, store::answer(&self.pool, id, &answer)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %pac_platform::ApiError::from(error).reason, "storing a message's answer failed"),
            Err(_) => tracing::warn!("storing a message's answer took too long"),
        }
        ack
    }

    /// Answers a message that cannot be parsed with what its raw header says (so that the engine
    /// can match the ACK to it by MSA-2), and logs it without a key.
    async fn unreadable(&self, bytes: &[u8], hash: &[u8; 32], problem: &Problem, charset: Charset) -> Vec<u8> {
        let raw = |field, component| hl7::raw_header_text(bytes, field, component);
        let hd = |field| (1..=3).map(|component| raw(field, component)).collect();
        let named = raw(18, 1);
        let inbound = ack::Inbound {
            sending_application: hd(3),
            sending_facility: hd(4),
            receiving_application: hd(5),
            receiving_facility: hd(6),
            trigger: raw(9, 2),
            control_id: raw(10, 1),
            processing_id: raw(11, 1),
            version: raw(12, 1),
            // Echoed only when it is the set the ACK is written in.
            charset_name: if Charset::from_msh18(&named) == Some(charset) { named } else { String::new() },
        };
        self.unreadable_with(bytes, hash, &inbound, problem, charset).await
    }

    async fn unreadable_with(&self, bytes: &[u8], hash: &[u8; 32], inbound: &ack::Inbound, problem: &Problem, charset: Charset) -> Vec<u8> {
        let ack = charset.encode(&ack::build(inbound, Some(problem), chrono::Utc::now()));
        let answer = Answer { ack_code: problem.ack.as_str(), error_code: Some(problem.code), error_text: Some(&problem.text), ack: &ack };
        if let Err(error) = store::log_unreadable(&self.pool, &self.handling.listener, hash, bytes, &answer).await {
            tracing::warn!(error = %pac_platform::ApiError::from(error).reason, "logging an unreadable message failed");
        }
        ack
    }

    /// Checks the message and does what it asks.
    async fn process(&self, message: &Message<'_>, inbound: &ack::Inbound, call: &Call, logged: i64) -> Result<(), Problem> {
        let message_type = message.header(9, 1);
        if message_type != "ADT" {
            return Err(Problem::content(
                code::UNSUPPORTED_MESSAGE_TYPE,
                Some(Location::field("MSH", 9)),
                "only ADT messages are read here",
            ));
        }
        if !ack::is_supported_version(&inbound.version) {
            return Err(Problem::content(code::UNSUPPORTED_VERSION, Some(Location::field("MSH", 12)), "versions 2.3 to 2.5.1 are read"));
        }
        if inbound.processing_id != self.handling.processing_id {
            return Err(Problem::content(
                code::UNSUPPORTED_PROCESSING_ID,
                Some(Location::field("MSH", 11)),
                "MSH-11 is not this listener's processing id",
            ));
        }
        let facility = inbound.sending_facility.first().cloned().unwrap_or_default();
        let trigger = if inbound.trigger.is_empty() {
            message.segment("EVN").map(|e| e.text(1, 1)).unwrap_or_default()
        } else {
            inbound.trigger.clone()
        };
        match adt::read(message, &trigger, &facility)? {
            Request::Upsert { identifiers, verified, demographics } => {
                self.upsert(&identifiers, verified, demographics, &facility, call, logged).await
            }
            Request::Merge { survivor, survivor_verified, merged } => {
                self.merge(&survivor, survivor_verified, &merged, &format!("HL7 ADT^A40 {}", inbound.control_id), call).await
            }
            Request::ChangeIdentifier { old, new } => self.change_identifier(old, new, call).await,
            Request::Ignored => Ok(()),
        }
    }

    /// Whether the listener's account acts for the sending facility (MSH-4): AR when it does not
    /// (or its token cannot be read).
    fn acts_for(&self, facility: &str) -> Result<(), Problem> {
        let organisations = self.gateway.tokens().organisations().map_err(|error| {
            tracing::warn!(error, "the integration account's token cannot be read");
            Problem::transient("the listener's account is not available")
        })?;
        if !organisations.iter().any(|o| o == facility) {
            return Err(Problem::transient("this listener does not act for the sending facility (MSH-4)"));
        }
        Ok(())
    }

    /// The first patient found by `order`.
    async fn find(&self, order: &[Identifier], call: &Call) -> Result<Option<pb::Patient>, Problem> {
        for identifier in order {
            if let Some((patient, _)) = self.gateway.lookup(identifier, call).await.map_err(|s| problem(&s))? {
                return Ok(Some(patient));
            }
        }
        Ok(None)
    }

    /// `logged`: the message's row in the log, which a review task names.
    async fn upsert(
        &self,
        identifiers: &Identifiers,
        verified: bool,
        demographics: Demographics,
        facility: &str,
        call: &Call,
        logged: i64,
    ) -> Result<(), Problem> {
        let order = identifiers.lookup_order(verified);
        let mut last = Code::Ok;
        for _ in 0..ATTEMPTS {
            let written = match self.find(&order, call).await? {
                Some(current) => {
                    let (patient, paths) = update_of(&current, &demographics);
                    if paths.is_empty() {
                        return Ok(());
                    }
                    self.gateway.update(patient, paths, call).await
                }
                None => {
                    let mut patient = demographics.patient.clone();
                    patient.organisation = facility.to_string();
                    if patient.sex == 0 {
                        patient.sex = pb::Sex::Unknown as i32;
                    }
                    let allow = self.handling.duplicates == DuplicatePolicy::Register;
                    self.gateway.register(patient, allow, call).await
                }
            };
            last = written.as_ref().err().map_or(Code::Ok, |s| s.code());
            match written {
                Ok(_) => return Ok(()),
                // Changed, or registered, since it was read: read it again.
                Err(status) if status.code() == Code::Aborted => continue,
                Err(status) if status.code() == Code::AlreadyExists && !order.is_empty() => continue,
                Err(status) => {
                    // A possible duplicate (the listener refuses them): a task on the coordinators'
                    // worklist, stored before the AE goes back (AR if it cannot be).
                    if let Some(candidates) = duplicate_candidates(&status) {
                        store::open_review(&self.pool, logged, facility, "POSSIBLE_DUPLICATE", &candidates)
                            .await
                            .map_err(|_| Problem::transient("the review task could not be stored"))?;
                    }
                    return Err(problem(&status));
                }
            }
        }
        if last == Code::Aborted {
            return Err(Problem::transient("the record kept changing while it was updated"));
        }
        Err(Problem::content(
            code::DUPLICATE_KEY,
            Some(Location::field("PID", 3)),
            "an identifier in PID-3 is already on another patient's record",
        ))
    }

    async fn merge(&self, survivor: &Identifiers, verified: bool, merged: &Identifiers, reason: &str, call: &Call) -> Result<(), Problem> {
        let unknown = |segment, number, what: &str| {
            Problem::content(
                code::UNKNOWN_KEY,
                Some(Location::field(segment, number)),
                format!("the {what} is not a patient this account can see"),
            )
        };
        let survivor =
            self.find(&survivor.lookup_order(verified), call).await?.ok_or_else(|| unknown("PID", 3, "surviving patient (PID-3)"))?;
        // The merged record's identifiers resolve to its survivor once merged, so a merge already
        // made finds the survivor itself. A merge cannot be undone by the PAS: the record merged
        // away is found by the PAS's own identifiers, its NHS number only when it gave none.
        let merged = self
            .find(&merged.lookup_order(merged.local.is_empty()), call)
            .await?
            .ok_or_else(|| unknown("MRG", 1, "merge source (MRG-1)"))?;
        if merged.id == survivor.id {
            return Ok(());
        }
        self.gateway.merge(&survivor.id, &merged.id, reason, call).await.map_err(|s| problem(&s))
    }

    async fn change_identifier(&self, old: pb::LocalIdentifier, new: pb::LocalIdentifier, call: &Call) -> Result<(), Problem> {
        for _ in 0..ATTEMPTS {
            let Some(current) = self.find(&[Identifier::Local(old.clone())], call).await? else {
                // Changed already (the message sent again), or never known.
                if self.find(&[Identifier::Local(new.clone())], call).await?.is_some() {
                    return Ok(());
                }
                return Err(Problem::content(code::UNKNOWN_KEY, Some(Location::field("MRG", 1)), "the identifier in MRG-1 is not known"));
            };
            let identifiers: Vec<pb::LocalIdentifier> =
                current.local_identifiers.iter().map(|l| if *l == old { new.clone() } else { l.clone() }).fold(Vec::new(), |mut all, l| {
                    if !all.contains(&l) {
                        all.push(l);
                    }
                    all
                });
            let patient =
                pb::Patient { id: current.id.clone(), etag: current.etag.clone(), local_identifiers: identifiers, ..Default::default() };
            match self.gateway.update(patient, vec!["local_identifiers".into()], call).await {
                Ok(_) => return Ok(()),
                Err(status) if status.code() == Code::Aborted => continue,
                Err(status) => return Err(problem(&status)),
            }
        }
        Err(Problem::transient("the record kept changing while the identifier was changed"))
    }
}

/// The update that brings `current` to what the message says: the message's fields, its local
/// identifiers added to those on the record (other issuers' stay), and only paths that change.
fn update_of(current: &pb::Patient, demographics: &Demographics) -> (pb::Patient, Vec<String>) {
    let mut patient = demographics.patient.clone();
    patient.id = current.id.clone();
    patient.etag = current.etag.clone();
    patient.organisation = String::new();
    let mut paths: Vec<String> = Vec::new();
    for &path in &demographics.paths {
        let changes = match path {
            "local_identifiers" => {
                let mut all = current.local_identifiers.clone();
                for identifier in &demographics.patient.local_identifiers {
                    if !all.contains(identifier) {
                        all.push(identifier.clone());
                    }
                }
                let changed = all != current.local_identifiers;
                patient.local_identifiers = all;
                changed
            }
            "nhs_number" => patient.nhs_number != current.nhs_number,
            "nhs_number_status" => patient.nhs_number_status != current.nhs_number_status,
            "given_name" => patient.given_name != current.given_name,
            "family_name" => patient.family_name != current.family_name,
            "birth_date" => patient.birth_date != current.birth_date,
            "sex" => patient.sex != current.sex,
            // Address, phone and email are compared by the records service (it normalises them).
            _ => true,
        };
        if changes {
            paths.push(path.to_string());
        }
    }
    // A number changed without a status (PID-32): present, not traced; never left "verified" (or
    // "not present") from the number it replaces.
    if paths.iter().any(|p| p == "nhs_number") && !paths.iter().any(|p| p == "nhs_number_status") {
        patient.nhs_number_status = pb::NhsNumberStatus::NotTraced as i32;
        paths.push("nhs_number_status".into());
    }
    (patient, paths)
}

/// The ACK header fields of `message`.
fn header(message: &Message<'_>) -> ack::Inbound {
    let Some(msh) = message.segment("MSH") else { return ack::Inbound::default() };
    let hd = |field: usize| -> Vec<String> { (1..=3).map(|c| msh.get(field, 1, c, 1).text().unwrap_or_default().to_string()).collect() };
    ack::Inbound {
        sending_application: hd(3),
        sending_facility: hd(4),
        receiving_application: hd(5),
        receiving_facility: hd(6),
        trigger: message.header(9, 2),
        control_id: message.header(10, 1),
        processing_id: message.header(11, 1),
        version: message.header(12, 1),
        charset_name: msh.get(18, 1, 1, 1).text().unwrap_or_default().to_string(),
    }
}

/// The message's request id: its control id (readable in the audit trail) and a digest of its key
/// and body (unique), in the characters a request id may hold.
pub fn request_id(key: &Key, body_sha256: &[u8; 32]) -> String {
    let mut digest = Sha256::new();
    for part in [&key.sending_application, &key.sending_facility, &key.control_id] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    digest.update(body_sha256);
    let digest = digest.finalize();
    let control: String = key.control_id.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.:".contains(*c)).take(40).collect();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("hl7:{control}:{hex}")
}

/// The answer to a message whose handling failed on a defect: AE 207 (sending it again would meet
/// the same defect).
pub fn defect_ack() -> Vec<u8> {
    let problem = Problem::content(code::INTERNAL, None, "the message could not be handled (application internal error)");
    ack::build(&ack::Inbound::default(), Some(&problem), chrono::Utc::now()).into_bytes()
}

fn unreadable_problem(error: &ReadError) -> Problem {
    match error {
        ReadError::UnknownCharset(_) => Problem::content(
            code::TABLE_VALUE_NOT_FOUND,
            Some(Location::field("MSH", 18)),
            "MSH-18 names a character set this listener does not read",
        ),
        ReadError::NoHeader => {
            Problem::content(code::SEGMENT_SEQUENCE, Some(Location::field("MSH", 0)), "the message does not start with MSH")
        }
        ReadError::NotText => Problem::content(code::DATA_TYPE, None, "the message is not text in its character set"),
        ReadError::Unparsable => Problem::content(code::SEGMENT_SEQUENCE, None, "the message's structure cannot be read"),
    }
}

/// The records a registration refused as a possible duplicate names (ErrorInfo `candidate_ids`).
fn duplicate_candidates(status: &Status) -> Option<Vec<String>> {
    let info = status.get_details_error_info().filter(|info| info.reason == "POSSIBLE_DUPLICATE")?;
    let ids = info.metadata.get("candidate_ids").map(String::as_str).unwrap_or_default();
    Some(ids.split(',').filter(|id| !id.is_empty()).map(str::to_string).collect())
}

/// The answer for a gateway call that failed. Texts name fields and reasons, never values.
pub fn problem(status: &Status) -> Problem {
    let reason = status.get_details_error_info().map(|info| info.reason).unwrap_or_default();
    match status.code() {
        Code::InvalidArgument => {
            let violation = status.get_details_bad_request().and_then(|b| b.field_violations.into_iter().next());
            let (location, field, reason) = match violation {
                Some(v) => (adt::location_of(&v.field), v.field, v.reason),
                None => (None, String::new(), reason),
            };
            let error = if reason.ends_with("_REQUIRED") { code::REQUIRED_FIELD_MISSING } else { code::DATA_TYPE };
            Problem::content(error, location, format!("refused: {field} {reason}").replace("  ", " ").trim().to_string())
        }
        Code::NotFound => Problem::content(code::UNKNOWN_KEY, None, "a patient the message names is not known"),
        Code::AlreadyExists => Problem::content(
            code::DUPLICATE_KEY,
            Some(Location::field("PID", 3)),
            "an identifier in PID-3 is already on another patient's record",
        ),
        Code::FailedPrecondition if reason == "POSSIBLE_DUPLICATE" => Problem::content(
            code::INTERNAL,
            Some(Location::field("PID", 0)),
            "possible duplicate of an existing patient: a review task is on the coordinators' worklist (POSSIBLE_DUPLICATE)",
        ),
        Code::FailedPrecondition => Problem::content(code::INTERNAL, None, format!("refused: {reason}")),
        Code::Unauthenticated | Code::PermissionDenied => Problem::transient(format!("the integration account was refused ({reason})")),
        _ => Problem::transient("the platform is unavailable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_readable_unique_and_acceptable_to_the_gateway() {
        let key = Key { sending_application: "PAS".into(), sending_facility: "RR8".into(), control_id: "MSG 0001|x".into() };
        let id = request_id(&key, &[0; 32]);
        assert!(id.starts_with("hl7:MSG0001x:"), "{id}");
        assert!(id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)));
        assert_ne!(id, request_id(&key, &[1; 32]));
        let other = Key { sending_facility: "RAE".into(), ..key.clone() };
        assert_ne!(id, request_id(&other, &[0; 32]));
    }

    #[test]
    fn only_changed_fields_are_updated_and_identifiers_are_added() {
        let current = pb::Patient {
            id: "p".into(),
            etag: "e".into(),
            family_name: "Smith".into(),
            local_identifiers: vec![pb::LocalIdentifier { issuer: "RAE".into(), value: "9".into() }],
            ..Default::default()
        };
        let mut demographics = Demographics::default();
        demographics.patient.family_name = "Smith".into();
        demographics.patient.given_name = "Jo".into();
        demographics.patient.local_identifiers = vec![pb::LocalIdentifier { issuer: "RR8".into(), value: "K1".into() }];
        demographics.paths = vec!["family_name", "given_name", "local_identifiers"];
        let (patient, paths) = update_of(&current, &demographics);
        assert_eq!(paths, vec!["given_name", "local_identifiers"]);
        assert_eq!(patient.local_identifiers.len(), 2);
        assert_eq!((patient.id.as_str(), patient.etag.as_str()), ("p", "e"));
    }
}
