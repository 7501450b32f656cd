//! The audit of event streams (`WatchEvents`). A stream is recorded when it opens (who, their
//! organisations, the cursor it starts after) and when it closes, however it closes (the same, plus
//! the outcome, how many events it delivered, the first and last cursor, and the distinct patients
//! those events are about, by id). A long stream also leaves a record for every
//! [`PATIENTS_PER_RECORD`] distinct patients it delivers, so no one record grows without bound.
//!
//! The gateway reads what it relays: the gRPC messages of the response body, each a service's
//! `WatchEventsResponse` whose field 1 is the `pac.common.v1.EventEnvelope` naming the event's
//! cursor and patients.

use std::collections::BTreeSet;

use bytes::{Buf, BytesMut};
use pac_proto::common::EventEnvelope;
use prost::Message;

use crate::audit::{AuditLog, Entry};

/// Distinct patients named by one stream record at most.
pub const PATIENTS_PER_RECORD: usize = 1_000;

/// Any service's `WatchEventsResponse`, read for its envelope only.
#[derive(Clone, PartialEq, Message)]
struct Enveloped {
    #[prost(message, optional, tag = "1")]
    envelope: Option<EventEnvelope>,
}

/// Any service's `WatchEventsRequest`.
#[derive(Clone, PartialEq, Message)]
struct WatchRequest {
    #[prost(string, tag = "1")]
    after_cursor: String,
}

/// The `after_cursor` of a `WatchEventsRequest` sent as one uncompressed gRPC message; `None` when
/// the body is not that (the service then refuses it).
pub fn after_cursor(body: &[u8]) -> Option<String> {
    let (&[0], rest) = body.split_first_chunk::<1>()? else { return None };
    let (length, message) = rest.split_first_chunk::<4>()?;
    (u32::from_be_bytes(*length) as usize == message.len()).then_some(())?;
    WatchRequest::decode(message).ok().map(|request| request.after_cursor)
}

/// What a stream has delivered so far.
pub struct Tally {
    audit: AuditLog,
    /// The record written for each stage, filled in as it is written.
    template: Entry,
    organisations: Vec<String>,
    after: String,
    pending: BytesMut,
    events: u64,
    first: String,
    last: String,
    patients: BTreeSet<String>,
    /// Events whose message could not be read (compressed or malformed): counted, patients unknown.
    unread: u64,
}

impl Tally {
    pub fn new(audit: AuditLog, template: Entry, organisations: Vec<String>, after: String) -> Self {
        Self {
            audit,
            template,
            organisations,
            after,
            pending: BytesMut::new(),
            events: 0,
            first: String::new(),
            last: String::new(),
            patients: BTreeSet::new(),
            unread: 0,
        }
    }

    /// The record of the stream's opening.
    pub fn opened(&self) -> Entry {
        let mut entry = self.template.clone();
        entry.outcome = "OK".into();
        entry.detail = serde_json::json!({
            "stream": "opened",
            "organisations": self.organisations,
            "after_cursor": self.after,
        })
        .to_string();
        entry
    }

    /// Reads the messages completed by `data`.
    pub fn feed(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        while self.pending.len() >= 5 {
            let compressed = self.pending[0] != 0;
            let length = u32::from_be_bytes([self.pending[1], self.pending[2], self.pending[3], self.pending[4]]) as usize;
            if self.pending.len() < 5 + length {
                return;
            }
            self.pending.advance(5);
            let message = self.pending.split_to(length);
            self.events += 1;
            let envelope = if compressed { None } else { Enveloped::decode(message.freeze()).ok().and_then(|m| m.envelope) };
            match envelope {
                Some(envelope) => {
                    if self.first.is_empty() {
                        self.first = envelope.cursor.clone();
                    }
                    self.last = envelope.cursor;
                    self.patients.extend(envelope.patient_ids);
                }
                None => self.unread += 1,
            }
            if self.patients.len() >= PATIENTS_PER_RECORD
                && let Some(slot) = self.audit.reserve()
            {
                slot.record(self.stage("continuing", "OK"));
            }
        }
    }

    /// The record of what was delivered since the last one (which it resets), at `stage`.
    fn stage(&mut self, stage: &str, outcome: &str) -> Entry {
        let mut entry = self.template.clone();
        entry.outcome = outcome.to_string();
        entry.detail = serde_json::json!({
            "stream": stage,
            "organisations": self.organisations,
            "after_cursor": self.after,
            "events": self.events,
            "first_cursor": self.first,
            "last_cursor": self.last,
            "patients": self.patients.len(),
            "unread_events": self.unread,
        })
        .to_string();
        entry.patient_ids = std::mem::take(&mut self.patients).into_iter().collect();
        if !self.last.is_empty() {
            self.after = std::mem::take(&mut self.last);
        }
        (self.events, self.unread) = (0, 0);
        self.first.clear();
        entry
    }

    /// The record of the stream's end, with its outcome.
    pub fn closed(&mut self, outcome: &str) -> Entry {
        self.stage("closed", outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut framed = vec![0];
        framed.extend((body.len() as u32).to_be_bytes());
        framed.extend(body);
        framed
    }

    fn event(cursor: &str, patients: &[&str]) -> Vec<u8> {
        let envelope = EventEnvelope {
            cursor: cursor.into(),
            patient_ids: patients.iter().map(|p| p.to_string()).collect(),
            ..EventEnvelope::default()
        };
        framed(&Enveloped { envelope: Some(envelope) })
    }

    #[test]
    fn reads_the_request_cursor() {
        assert_eq!(after_cursor(&framed(&WatchRequest { after_cursor: "12.3".into() })).as_deref(), Some("12.3"));
        assert_eq!(after_cursor(&framed(&WatchRequest::default())).as_deref(), Some(""));
        assert_eq!(after_cursor(b""), None);
        assert_eq!(after_cursor(&[1, 0, 0, 0, 0]), None, "compressed");
        assert_eq!(after_cursor(&[0, 0, 0, 0, 9]), None, "short");
    }

    #[tokio::test]
    async fn counts_events_and_patients_across_split_and_coalesced_frames() {
        let (audit, _records) = AuditLog::for_tests();
        let mut tally = Tally::new(audit, Entry::default(), vec!["RR8".into()], "5.1".into());
        let mut body = event("10.1", &["p1"]);
        body.extend(event("10.2", &["p2", "p1"]));
        body.extend(event("11.1", &["p3"]));
        // Byte by byte, then all at once: the same tally.
        for chunk in body.chunks(1) {
            tally.feed(chunk);
        }
        let closed = tally.closed("CANCELLED");
        assert_eq!(closed.outcome, "CANCELLED");
        assert_eq!(closed.patient_ids, ["p1", "p2", "p3"]);
        let detail: serde_json::Value = serde_json::from_str(&closed.detail).unwrap();
        assert_eq!(detail["events"], 3);
        assert_eq!(detail["patients"], 3);
        assert_eq!(
            (detail["after_cursor"].as_str(), detail["first_cursor"].as_str(), detail["last_cursor"].as_str()),
            (Some("5.1"), Some("10.1"), Some("11.1"))
        );
        assert_eq!(detail["organisations"], serde_json::json!(["RR8"]));

        let mut whole = Tally::new(tally.audit.clone(), Entry::default(), vec![], String::new());
        whole.feed(&body);
        assert_eq!(whole.closed("OK").patient_ids, ["p1", "p2", "p3"]);
    }

    #[tokio::test]
    async fn a_long_stream_leaves_a_record_for_every_thousand_patients() {
        let (audit, mut records) = AuditLog::for_tests();
        let mut tally = Tally::new(audit, Entry::default(), vec![], String::new());
        for n in 0..PATIENTS_PER_RECORD + 10 {
            tally.feed(&event(&format!("1.{n}"), &[&format!("p{n}")]));
        }
        let (continuing, _, _) = records.try_recv().expect("a record at a thousand patients");
        assert_eq!(continuing.patient_ids.len(), PATIENTS_PER_RECORD);
        let detail: serde_json::Value = serde_json::from_str(&continuing.detail).unwrap();
        assert_eq!((detail["stream"].as_str(), detail["events"].as_u64()), (Some("continuing"), Some(PATIENTS_PER_RECORD as u64)));
        let closed = tally.closed("OK");
        let detail: serde_json::Value = serde_json::from_str(&closed.detail).unwrap();
        assert_eq!(closed.patient_ids.len(), 10);
        assert_eq!(
            detail["after_cursor"].as_str(),
            Some(format!("1.{}", PATIENTS_PER_RECORD - 1).as_str()),
            "the range goes on from the last record"
        );
    }
}
