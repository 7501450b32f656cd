//! Pacing the load. Open loop: operations are sent at fixed intervals whatever the answers' pace,
//! and each call's latency is counted from the moment it was due to be sent, not from when it was
//! sent, so a stall delays nothing unseen (no coordinated omission). Closed loop: a fixed number of
//! callers, each sending its next operation when its last one is answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::stats::Stats;

/// One operation: its sequence number and the moment it was due; it records its calls in the stats.
pub type Operation = Arc<dyn Fn(u64, Instant) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Operations per second, sent on schedule.
    Open { rate: f64 },
    /// Operations in flight at once.
    Closed { concurrency: usize },
}

/// Most operations an open loop keeps in flight; beyond it an operation due is counted as not sent
/// (the deployment is not keeping up and the generator would only pile up memory).
pub const MAX_IN_FLIGHT: usize = 20_000;

/// Runs `operation` for `duration` at `pace`, numbering operations from `first`; waits for those
/// in flight to end (at most `grace`). Returns how many operations were started.
pub async fn drive(pace: Pace, duration: Duration, first: u64, operation: Operation, stats: Arc<Stats>, grace: Duration) -> u64 {
    match pace {
        Pace::Open { rate } => open_loop(rate, duration, first, operation, stats, grace).await,
        Pace::Closed { concurrency } => closed_loop(concurrency, duration, first, operation, stats).await,
    }
}

async fn open_loop(rate: f64, duration: Duration, first: u64, operation: Operation, stats: Arc<Stats>, grace: Duration) -> u64 {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let end = start + duration;
    let mut n = 0u64;
    loop {
        let due = start + interval.mul_f64(n as f64);
        if due >= end {
            break;
        }
        // Timers tick each millisecond: operations due within the same tick go out together,
        // each still timed from its own due moment.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = operation(first + n, due);
                tokio::spawn(async move {
                    call.await;
                    drop(permit);
                });
            }
            Err(_) => stats.not_sent("the deployment fell behind: too many operations in flight"),
        }
        n += 1;
    }
    let _ = tokio::time::timeout(grace, permits.acquire_many(MAX_IN_FLIGHT as u32)).await;
    n
}

async fn closed_loop(concurrency: usize, duration: Duration, first: u64, operation: Operation, stats: Arc<Stats>) -> u64 {
    let end = Instant::now() + duration;
    let next = Arc::new(AtomicU64::new(first));
    let mut callers = Vec::new();
    for _ in 0..concurrency {
        let (operation, next, stats) = (operation.clone(), next.clone(), stats.clone());
        callers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let unsent = stats.not_sent_total();
                operation(n, Instant::now()).await;
                // Nothing to send (no free slot left): wait a little rather than spin.
                if stats.not_sent_total() > unsent {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for caller in callers {
        let _ = caller.await;
    }
    next.load(Ordering::Relaxed) - first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_times_a_stalled_call_from_when_it_was_due() {
        // The "deployment" answers in 1 ms, except that every call due in the second 100 ms waits
        // until 300 ms: those calls' latencies must include the wait, though they were sent on time.
        let stats = Arc::new(Stats::default());
        let started = Instant::now();
        let operation: Operation = {
            let stats = stats.clone();
            Arc::new(move |_, due| {
                let stats = stats.clone();
                Box::pin(async move {
                    let since = due - started;
                    if since >= Duration::from_millis(100) && since < Duration::from_millis(200) {
                        tokio::time::sleep_until(started + Duration::from_millis(300)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    stats.record::<()>("/t.T/Call", &Ok(()), due.elapsed());
                })
            })
        };
        let sent = drive(Pace::Open { rate: 100.0 }, Duration::from_millis(400), 0, operation, stats.clone(), Duration::from_secs(1)).await;
        assert_eq!(sent, 40);
        let total = stats.total();
        assert_eq!(total.calls(), 40);
        // The first call due in the stall waited 200 ms; the last ~110 ms.
        assert!(total.millis(1.0) >= 199.0, "max {}", total.millis(1.0));
        assert!(total.millis(0.5) < 5.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_loop_keeps_its_callers_busy() {
        let stats = Arc::new(Stats::default());
        let operation: Operation = {
            let stats = stats.clone();
            Arc::new(move |_, sent| {
                let stats = stats.clone();
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    stats.record::<()>("/t.T/Call", &Ok(()), sent.elapsed());
                })
            })
        };
        let sent = drive(Pace::Closed { concurrency: 4 }, Duration::from_millis(100), 0, operation, stats.clone(), Duration::ZERO).await;
        assert_eq!(sent, 40);
        assert_eq!(stats.total().calls(), 40);
    }
}
