//! Calls refused before the caller is known (no token, or one that does not verify): counted by
//! peer address and reason, and written to the audit trail as one record per peer, reason and
//! interval with the count, so that a flood of them cannot fill the disk while every refusal is
//! still counted. A peer whose calls keep failing authentication is also slowed: beyond its own
//! token bucket its calls with tokens not already verified are refused at once, unverified.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, Entry, micros_text};

/// The action of an aggregate record (its calls' RPCs are not kept apart).
pub const ACTION: &str = "unauthenticated calls";
/// Most (peer, reason) counts kept in one interval; refusals beyond them count under no peer.
const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    peer: Option<IpAddr>,
    outcome: &'static str,
    reason: &'static str,
}

struct Count {
    calls: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

/// The interval's counts.
#[derive(Clone, Default)]
pub struct Refusals {
    counts: Arc<Mutex<HashMap<Key, Count>>>,
}

impl Refusals {
    /// Counts one refusal of a call from `peer`.
    pub fn count(&self, peer: Option<IpAddr>, outcome: &'static str, reason: &'static str) {
        let now = Utc::now();
        let mut counts = self.counts.lock().expect("refusal counts");
        let mut key = Key { peer, outcome, reason };
        if counts.len() >= MAX_KEYS && !counts.contains_key(&key) {
            key.peer = None;
        }
        let count = counts.entry(key).or_insert(Count { calls: 0, first: now, last: now });
        count.calls += 1;
        count.last = now;
    }

    /// Writes the counts so far, one record each, to `audit`. Counts that find no room in the
    /// audit queue stay for the next time.
    pub fn flush(&self, audit: &AuditLog) {
        let taken = std::mem::take(&mut *self.counts.lock().expect("refusal counts"));
        let mut left = HashMap::new();
        for (key, count) in taken {
            match audit.reserve() {
                Some(slot) => slot.record(record(key, &count)),
                None => {
                    left.insert(key, count);
                }
            }
        }
        if !left.is_empty() {
            let mut counts = self.counts.lock().expect("refusal counts");
            for (key, count) in left {
                let merged = counts.entry(key).or_insert(Count { calls: 0, first: count.first, last: count.last });
                merged.calls += count.calls;
                merged.first = merged.first.min(count.first);
                merged.last = merged.last.max(count.last);
            }
        }
    }

    /// Flushes every `every` until `stop` fires, then once more.
    pub fn start(&self, audit: AuditLog, every: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let refusals = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => refusals.flush(&audit),
                    _ = stop.cancelled() => {
                        refusals.flush(&audit);
                        return;
                    }
                }
            }
        })
    }
}

fn record(key: Key, count: &Count) -> Entry {
    let detail = serde_json::json!({
        "peer": key.peer.map(|p| p.to_string()).unwrap_or_default(),
        "count": count.calls,
        "first": micros_text(count.first),
        "last": micros_text(count.last),
    });
    Entry {
        action: ACTION.to_string(),
        outcome: key.outcome.to_string(),
        reason: key.reason.to_string(),
        request_id: uuid::Uuid::now_v7().to_string(),
        detail: detail.to_string(),
        ..Entry::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_peer_and_reason_and_written_once_an_interval() {
        let (audit, mut written) = AuditLog::for_tests();
        let refusals = Refusals::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..1_000 {
            refusals.count(Some(a), "UNAUTHENTICATED", "TOKEN_MISSING");
        }
        refusals.count(Some(a), "UNAUTHENTICATED", "TOKEN_EXPIRED");
        refusals.count(Some(b), "UNAUTHENTICATED", "TOKEN_MISSING");
        refusals.flush(&audit);
        let mut records = Vec::new();
        while let Ok((entry, _, _)) = written.try_recv() {
            records.push(entry);
        }
        assert_eq!(records.len(), 3);
        let counted: u64 =
            records.iter().map(|e| serde_json::from_str::<serde_json::Value>(&e.detail).unwrap()["count"].as_u64().unwrap()).sum();
        assert_eq!(counted, 1_002, "every refusal counted");
        let flood = records.iter().find(|e| e.detail.contains("10.0.0.1") && e.reason == "TOKEN_MISSING").unwrap();
        assert!(flood.detail.contains("\"count\":1000"), "{}", flood.detail);
        refusals.flush(&audit);
        assert!(written.try_recv().is_err(), "nothing more until more refusals");
    }
}
