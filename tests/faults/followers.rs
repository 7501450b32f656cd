//! A follower of an event stream (`pac_platform::follow`, as scheduling and referrals follow the
//! other services) killed again and again while 10,000 events are written: each event it applies is
//! applied exactly once, in cursor order, and it reaches the end of the stream.
//!
//! A kill here aborts the follower's task and drops its database pool, closing its connections as a
//! killed process's would: a transaction in flight is rolled back, or committed whole.

use std::str::FromStr;
use std::time::{Duration, Instant};

use pac_platform::follow::{self, Follower};
use pac_platform::outbox::Cursor;
use pac_proto::records as pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::common::InProcess;
use pac_platform::testkit::{channel, eventually, free_port};

const EVENTS: usize = 10_000;
const RESTARTS: usize = 100;
const STREAM: &str = "records";

/// Applies `PatientUpdated` events (a row each, with the cursor saved in the same transaction) and
/// passes over the others, as the platform's followers do.
struct Recorder {
    pool: PgPool,
    records: PatientRecordsClient<Channel>,
}

fn failed(error: sqlx::Error) -> String {
    pac_platform::error::safe_description(&error)
}

impl Follower for Recorder {
    type Message = pb::WatchEventsResponse;

    fn stream(&self) -> &'static str {
        STREAM
    }

    async fn saved_cursor(&self) -> Result<Option<String>, String> {
        follow::stream_cursor(&self.pool, STREAM).await.map_err(failed)
    }

    async fn save_cursor(&self, cursor: &str) -> Result<(), String> {
        follow::save_stream_cursor(&self.pool, STREAM, cursor).await.map_err(failed)
    }

    async fn open(&self, cursor: String) -> Result<tonic::Streaming<Self::Message>, tonic::Status> {
        Ok(self.records.clone().watch_events(pb::WatchEventsRequest { after_cursor: cursor }).await?.into_inner())
    }

    fn cursor_of(message: &Self::Message) -> String {
        message.envelope.as_ref().map(|e| e.cursor.clone()).unwrap_or_default()
    }

    async fn apply(&self, message: Self::Message, cursor: &str) -> Result<bool, String> {
        let envelope = message.envelope.unwrap_or_default();
        if envelope.event_type != "PatientUpdated" {
            return Ok(false);
        }
        let mut tx = self.pool.begin().await.map_err(failed)?;
        let applied = record(&mut tx, &envelope.event_id, cursor).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(applied)
    }
}

/// What applying an event does, inside the applying transaction.
async fn record(tx: &mut sqlx::PgConnection, event_id: &str, cursor: &str) -> Result<bool, sqlx::Error> {
    if !follow::advance_stream_cursor(&mut *tx, STREAM, cursor).await? {
        return Ok(false);
    }
    sqlx::query("INSERT INTO applied (event_id, cursor) VALUES ($1::uuid, $2)").bind(event_id).bind(cursor).execute(&mut *tx).await?;
    Ok(true)
}

/// A pool of the follower's own (two connections), in its schema.
async fn follower_pool(url: &str) -> PgPool {
    let options = PgConnectOptions::from_str(url).unwrap().options([("search_path", "follower_faults")]);
    PgPoolOptions::new().max_connections(2).connect_with(options).await.unwrap()
}

async fn follower_schema(admin: &PgPool) {
    sqlx::raw_sql(
        "CREATE SCHEMA follower_faults; \
         CREATE TABLE follower_faults.consumed_streams (stream text PRIMARY KEY, cursor text NOT NULL, updated_at timestamptz NOT NULL); \
         CREATE TABLE follower_faults.applied (seq bigint GENERATED ALWAYS AS IDENTITY, event_id uuid NOT NULL, cursor text NOT NULL)",
    )
    .execute(admin)
    .await
    .unwrap();
}

/// A follower killed while committing an event, and started again before the commit lands (a
/// slow database): the new life reads the cursor saved before the event, receives the event again,
/// and must not apply it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_life_of_a_follower_does_not_apply_what_the_last_one_was_committing() {
    let db = pac_platform::testkit::TestDatabase::create().await;
    let admin = db.admin_pool().await;
    follower_schema(&admin).await;
    let (event_id, cursor) = (Uuid::now_v7().to_string(), "5000.7");
    follow::save_stream_cursor(&follower_pool(&db.admin_url).await, STREAM, "5000.6").await.unwrap();

    // The first life has written all of its transaction and sent the commit.
    let first = follower_pool(&db.admin_url).await;
    let mut committing = first.begin().await.unwrap();
    assert!(record(&mut committing, &event_id, cursor).await.unwrap());
    // The second life receives the same event and applies it.
    let second = Recorder { pool: follower_pool(&db.admin_url).await, records: PatientRecordsClient::new(channel(free_port())) };
    let envelope = pac_proto::common::EventEnvelope {
        cursor: cursor.into(),
        event_id: event_id.clone(),
        event_type: "PatientUpdated".into(),
        ..Default::default()
    };
    let message = pb::WatchEventsResponse { envelope: Some(envelope), event: None };
    let applying = tokio::spawn(async move { second.apply(message, cursor).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    committing.commit().await.unwrap();
    let second_applied = applying.await.unwrap().unwrap();

    let times: i64 = sqlx::query_scalar("SELECT count(*) FROM follower_faults.applied WHERE event_id = $1::uuid")
        .bind(&event_id)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!((times, second_applied), (1, false), "the event was applied by both lives");
    let saved: String = sqlx::query_scalar("SELECT cursor FROM follower_faults.consumed_streams").fetch_one(&admin).await.unwrap();
    assert_eq!(saved, cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_a_hundred_times_applies_each_of_ten_thousand_events_once() {
    let p = InProcess::start().await;
    let admin = p.db.admin_pool().await;
    follower_schema(&admin).await;

    // The writer: events in transactions of 50, half of them for the follower to apply.
    let writer = tokio::spawn({
        let admin = admin.clone();
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut applied = Vec::new();
            for _ in 0..EVENTS / 50 {
                let ids: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
                let types: Vec<&str> = (0..50).map(|n| if n % 2 == 0 { "PatientUpdated" } else { "PatientRegistered" }).collect();
                sqlx::query(
                    "INSERT INTO records.outbox (event_id, event_type, aggregate_id, payload, actor_subject, actor_role, actor_organisation) \
                     SELECT id, kind, gen_random_uuid(), '', 'fault-suite', 'service', '' FROM unnest($1::uuid[], $2::text[]) AS t(id, kind)",
                )
                .bind(&ids)
                .bind(&types)
                .execute(&admin)
                .await
                .unwrap();
                applied.extend(ids.iter().zip(&types).filter(|(_, t)| **t == "PatientUpdated").map(|(id, _)| *id));
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
            }
            applied
        }
    });

    let records = PatientRecordsClient::new(p.records.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let started = Instant::now();
    for _ in 0..RESTARTS {
        let recorder = Recorder { pool: follower_pool(&p.db.admin_url).await, records: records.clone() };
        let running = tokio::spawn(follow::follow(recorder, CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..120))).await;
        running.abort();
        let _ = running.await;
    }
    let killing = started.elapsed();
    let expected = writer.await.unwrap();

    // The last life of the follower catches up.
    let shutdown = CancellationToken::new();
    let recorder = Recorder { pool: follower_pool(&p.db.admin_url).await, records: records.clone() };
    let running = tokio::spawn(follow::follow(recorder, shutdown.clone()));
    let count = "SELECT count(*) FROM follower_faults.applied";
    let caught_up = eventually(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>(count).fetch_one(&admin).await.unwrap() >= expected.len() as i64
    })
    .await;
    // Passed-over events after the last applied one move the saved cursor once the stream is quiet.
    let last: String = sqlx::query_scalar("SELECT txid::text || '.' || id FROM records.outbox ORDER BY txid DESC, id DESC LIMIT 1")
        .fetch_one(&admin)
        .await
        .unwrap();
    let saved_to_end = eventually(Duration::from_secs(10), || async {
        let saved: Option<String> =
            sqlx::query_scalar("SELECT cursor FROM follower_faults.consumed_streams").fetch_optional(&admin).await.unwrap();
        saved.as_deref() == Some(last.as_str())
    })
    .await;
    shutdown.cancel();
    let _ = running.await;

    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT event_id, cursor FROM follower_faults.applied ORDER BY seq").fetch_all(&admin).await.unwrap();
    eprintln!(
        "{} events written, {} to apply, follower killed {RESTARTS} times in {killing:?}; applied {} ({} distinct)",
        EVENTS,
        expected.len(),
        rows.len(),
        rows.iter().map(|r| r.0).collect::<std::collections::HashSet<_>>().len()
    );
    assert!(caught_up, "the follower never caught up");
    assert!(saved_to_end, "the saved cursor never reached the end of the stream");
    let applied: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    let mut applied_sorted = applied.clone();
    applied_sorted.sort();
    assert_eq!(applied_sorted, expected_sorted, "each event applied exactly once");
    let cursors: Vec<Cursor> = rows.iter().map(|r| r.1.parse().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "applied in cursor order");
}
