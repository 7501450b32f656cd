//! What the load did: every call's gRPC status (and the `ErrorInfo` reason of a refusal) and its
//! latency in an HDR histogram, per RPC and in total; the last second's share for the progress
//! line; the report at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

/// Latencies are kept in microseconds, 1 µs to 10 minutes, three significant digits.
const HIGHEST_MICROS: u64 = 600_000_000;

/// Calls of one kind (or all): statuses, refusal reasons, latencies.
#[derive(Clone)]
pub struct Tally {
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<&'static str, u64>,
    /// `STATUS/REASON` of refusals that carried an `ErrorInfo`.
    pub reasons: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            reasons: BTreeMap::new(),
        }
    }
}

impl Tally {
    fn add(&mut self, code: Code, reason: Option<&str>, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, HIGHEST_MICROS);
        self.latency.record(micros).expect("clamped into the histogram's range");
        let name = code_name(code);
        *self.statuses.entry(name).or_default() += 1;
        if let Some(reason) = reason.filter(|r| !r.is_empty()) {
            *self.reasons.entry(format!("{name}/{reason}")).or_default() += 1;
        }
    }

    pub fn calls(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn ok(&self) -> u64 {
        self.statuses.get("OK").copied().unwrap_or(0)
    }

    /// The latency at `quantile` (0..=1), in milliseconds.
    pub fn millis(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Failed calls by status, e.g. `UNAVAILABLE 3, FAILED_PRECONDITION 1`.
    pub fn failures(&self) -> String {
        self.statuses.iter().filter(|(name, _)| **name != "OK").map(|(name, n)| format!("{name} {n}")).collect::<Vec<_>>().join(", ")
    }

    fn merge(&mut self, other: &Tally) {
        self.latency.add(&other.latency).expect("histograms with the same bounds");
        for (name, n) in &other.statuses {
            *self.statuses.entry(name).or_default() += n;
        }
        for (reason, n) in &other.reasons {
            *self.reasons.entry(reason.clone()).or_default() += n;
        }
    }

    /// The tally as the report shows it; `seconds` turns counts into rates.
    pub fn report(&self, seconds: f64) -> Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "calls": self.calls(),
            "ok": self.ok(),
            "failed": self.calls() - self.ok(),
            "calls_per_second": round(self.calls() as f64 / seconds.max(1e-9)),
            "ok_per_second": round(self.ok() as f64 / seconds.max(1e-9)),
            "statuses": self.statuses,
            "refusal_reasons": self.reasons,
            "latency_ms": {
                "p50": round(self.millis(0.5)),
                "p90": round(self.millis(0.9)),
                "p99": round(self.millis(0.99)),
                "p99.9": round(self.millis(0.999)),
                "max": round(self.latency.max() as f64 / 1000.0),
                "mean": round(self.latency.mean() / 1000.0),
            },
        })
    }
}

#[derive(Default)]
struct Inner {
    total: Tally,
    rpcs: BTreeMap<&'static str, Tally>,
    /// Since the progress line last looked.
    interval: Tally,
    /// Operations the generator could not send, by why.
    not_sent: BTreeMap<String, u64>,
    interval_not_sent: u64,
}

/// The load's tallies, shared by every call in flight.
#[derive(Default)]
pub struct Stats(Mutex<Inner>);

impl Stats {
    /// One call to `rpc` (`/package.Service/Method`) that ended with `result` after `latency`.
    pub fn record<T>(&self, rpc: &'static str, result: &Result<T, tonic::Status>, latency: Duration) {
        let (code, reason) = match result {
            Ok(_) => (Code::Ok, None),
            Err(status) => (status.code(), status.get_error_details().error_info().map(|info| info.reason.clone())),
        };
        let mut inner = self.0.lock().expect("stats");
        inner.total.add(code, reason.as_deref(), latency);
        inner.interval.add(code, reason.as_deref(), latency);
        inner.rpcs.entry(rpc).or_default().add(code, reason.as_deref(), latency);
    }

    /// An operation the generator did not send, and why (no free slot left, too many in flight).
    pub fn not_sent(&self, why: &str) {
        let mut inner = self.0.lock().expect("stats");
        *inner.not_sent.entry(why.to_string()).or_default() += 1;
        inner.interval_not_sent += 1;
    }

    /// What happened since the last look, and how many operations were not sent meanwhile.
    pub fn take_interval(&self) -> (Tally, u64) {
        let mut inner = self.0.lock().expect("stats");
        (std::mem::take(&mut inner.interval), std::mem::take(&mut inner.interval_not_sent))
    }

    pub fn total(&self) -> Tally {
        self.0.lock().expect("stats").total.clone()
    }

    pub fn not_sent_total(&self) -> u64 {
        self.0.lock().expect("stats").not_sent.values().sum()
    }

    /// Adds `other`'s tallies to these (the bench keeps one per path and round).
    pub fn absorb(&self, other: &Stats) {
        let theirs = other.0.lock().expect("stats");
        let mut inner = self.0.lock().expect("stats");
        inner.total.merge(&theirs.total);
        for (rpc, tally) in &theirs.rpcs {
            inner.rpcs.entry(rpc).or_default().merge(tally);
        }
        for (why, n) in &theirs.not_sent {
            *inner.not_sent.entry(why.clone()).or_default() += n;
        }
    }

    /// The report's figures: in total, per RPC, and what was not sent.
    pub fn report(&self, seconds: f64) -> Value {
        let inner = self.0.lock().expect("stats");
        json!({
            "total": inner.total.report(seconds),
            "rpcs": inner.rpcs.iter().map(|(rpc, tally)| (rpc.to_string(), tally.report(seconds))).collect::<serde_json::Map<_, _>>(),
            "not_sent": inner.not_sent,
        })
    }

    /// One line per RPC, for people: calls, rate, failures, p50/p99/max.
    pub fn summary(&self, seconds: f64) -> Vec<String> {
        let inner = self.0.lock().expect("stats");
        let mut lines: Vec<String> = inner.rpcs.iter().map(|(rpc, tally)| line(rpc, tally, seconds)).collect();
        lines.push(line("all", &inner.total, seconds));
        for (why, n) in &inner.not_sent {
            lines.push(format!("not sent: {n} ({why})"));
        }
        lines
    }
}

fn line(name: &str, tally: &Tally, seconds: f64) -> String {
    let failures = tally.failures();
    format!(
        "{name:<52} {:>8} calls {:>8.1}/s  p50 {:>8.2} ms  p99 {:>8.2} ms  p99.9 {:>8.2} ms  max {:>8.2} ms{}",
        tally.calls(),
        tally.calls() as f64 / seconds.max(1e-9),
        tally.millis(0.5),
        tally.millis(0.99),
        tally.millis(0.999),
        tally.latency.max() as f64 / 1000.0,
        if failures.is_empty() { String::new() } else { format!("  failed: {failures}") }
    )
}

/// The canonical name of a gRPC status code, as the gRPC specification spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Statuses that say the platform, the deployment or the load generator is broken, rather than a
/// refusal a busy day brings (a slot taken meanwhile, a stale etag): `--strict` fails on them.
pub fn is_breakage(name: &str) -> bool {
    !matches!(name, "OK" | "FAILED_PRECONDITION" | "ABORTED" | "ALREADY_EXISTS" | "NOT_FOUND")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_is_counted_by_status_and_reason() {
        let stats = Stats::default();
        stats.record::<()>("/a.A/B", &Ok(()), Duration::from_millis(2));
        stats.record::<()>("/a.A/B", &Err(tonic::Status::unavailable("down")), Duration::from_millis(4));
        stats.record::<()>("/a.A/C", &Ok(()), Duration::from_millis(6));
        stats.not_sent("no free slot left");
        let total = stats.total();
        assert_eq!((total.calls(), total.ok()), (3, 2));
        assert_eq!(total.failures(), "UNAVAILABLE 1");
        let report = stats.report(1.0);
        assert_eq!(report["rpcs"]["/a.A/B"]["statuses"]["UNAVAILABLE"], 1);
        assert_eq!(report["not_sent"]["no free slot left"], 1);
        assert!((report["total"]["latency_ms"]["max"].as_f64().unwrap() - 6.0).abs() < 0.01);
        let (interval, not_sent) = stats.take_interval();
        assert_eq!((interval.calls(), not_sent), (3, 1));
        assert_eq!(stats.take_interval().0.calls(), 0);
    }
}
