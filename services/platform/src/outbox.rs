//! The transactional outbox and the resumable event stream served from it.
//!
//! Writers append events inside the transaction that makes the change. Readers deliver events in
//! `(txid, id)` order and only those whose transaction id is below the oldest still-running
//! transaction (`pg_snapshot_xmin`): identity values are handed out before commit, so a plain
//! "id > cursor" reader would skip an event whose transaction commits after a later one. Delivery is
//! at-least-once; the cursor is the position of the last event the consumer has seen.
//!
//! The order is the transaction id's numeric value (`xid8`), in SQL and in [`Cursor`] alike. The id
//! travels as text (sqlx has no `xid8` type), under a name of its own: an output column named `txid`
//! would be what `ORDER BY txid` sorts, as text, and "10000" sorts before "9999".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::caller::{Actor, within};
use crate::error::ApiError;

/// A position in a service's event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor {
    pub txid: u64,
    pub id: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.txid, self.id)
    }
}

impl FromStr for Cursor {
    type Err = ApiError;
    fn from_str(value: &str) -> Result<Self, ApiError> {
        if value.is_empty() {
            return Ok(Cursor::default());
        }
        let invalid = || ApiError::invalid_field("after_cursor", "CURSOR_INVALID", "not a cursor this service issued");
        let (txid, id) = value.split_once('.').ok_or_else(invalid)?;
        Ok(Cursor { txid: txid.parse().map_err(|_| invalid())?, id: id.parse().map_err(|_| invalid())? })
    }
}

/// A service's `WatchEvents` answer: its event messages, or the error that ended the stream.
pub type EventStream<M> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<M, tonic::Status>> + Send>>;

/// The service's event message stored in `event` (`WatchEventsResponse` without its envelope).
pub fn stored_message<M: prost::Message + Default>(event: &StoredEvent) -> Result<M, ApiError> {
    M::decode(event.payload.as_slice()).map_err(|e| ApiError::internal(anyhow::anyhow!("undecodable stored event: {e}")))
}

/// An event to append.
pub struct NewEvent<'a> {
    pub event_type: &'static str,
    pub aggregate_id: Uuid,
    /// The organisation (ODS code) that owns what the event is about; `''` for none. A stream
    /// delivers the event only to callers who see that organisation.
    pub organisation: &'a str,
    /// The patients the event is about (recorded in the audit trail of the streams that deliver it).
    pub patient_ids: &'a [Uuid],
    /// The service's encoded event message.
    pub payload: Vec<u8>,
    pub actor: &'a Actor,
    pub request_id: Option<&'a str>,
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub cursor: Cursor,
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_id: Uuid,
    pub organisation: String,
    pub patient_ids: Vec<Uuid>,
    pub payload: Vec<u8>,
    pub actor: Actor,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// One service's outbox.
#[derive(Clone)]
pub struct Outbox {
    schema: &'static str,
    /// Bumped after each local commit that appended events, so local streams wake at once; streams
    /// also poll, for events written by other replicas.
    written: watch::Sender<u64>,
}

impl Outbox {
    pub fn new(schema: &'static str) -> Self {
        Self { schema, written: watch::Sender::new(0) }
    }

    /// Appends an event inside the caller's transaction.
    pub async fn append(&self, conn: &mut PgConnection, event: NewEvent<'_>) -> Result<Uuid, sqlx::Error> {
        let event_id = Uuid::now_v7();
        let sql = format!(
            "INSERT INTO {}.outbox (event_id, event_type, aggregate_id, payload, actor_subject, actor_role, \
             actor_organisation, request_id, trace_id, organisation, patient_ids) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            self.schema
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(event_id)
            .bind(event.event_type)
            .bind(event.aggregate_id)
            .bind(event.payload)
            .bind(&event.actor.subject)
            .bind(&event.actor.role)
            .bind(&event.actor.organisation)
            .bind(event.request_id)
            .bind(crate::telemetry::current_trace_id())
            .bind(event.organisation)
            .bind(event.patient_ids)
            .execute(conn)
            .await?;
        Ok(event_id)
    }

    /// Call after a transaction that appended events has committed.
    pub fn committed(&self) {
        self.written.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A `WatchEvents` answer: [`Outbox::watch`] from the request's `after_cursor`, each event made
    /// the service's message by `message`.
    pub fn watch_messages<M, F>(
        &self,
        pool: PgPool,
        after_cursor: &str,
        scope: Option<Vec<String>>,
        poll_interval: Duration,
        shutdown: CancellationToken,
        message: F,
    ) -> Result<EventStream<M>, ApiError>
    where
        M: Send + 'static,
        F: Fn(StoredEvent) -> Result<M, ApiError> + Send + 'static,
    {
        use futures::StreamExt;
        let after: Cursor = after_cursor.parse()?;
        let events = self.watch(pool, after, scope, poll_interval, shutdown);
        Ok(Box::pin(events.map(move |item| item.and_then(&message).map_err(tonic::Status::from))))
    }

    /// Events after `after` whose transactions have all finished, oldest first.
    pub async fn read_after(&self, pool: &PgPool, after: Cursor, limit: i64) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let sql = format!(
            "SELECT o.txid::text AS txid_digits, o.id, o.event_id, o.event_type, o.aggregate_id, o.payload, o.actor_subject, \
                    o.actor_role, o.actor_organisation, o.request_id, o.trace_id, o.occurred_at, o.organisation, o.patient_ids \
             FROM {}.outbox o \
             WHERE (o.txid, o.id) > ($1::text::xid8, $2) \
               AND o.txid < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY o.txid, o.id LIMIT $3",
            self.schema
        );
        let rows: Vec<OutboxRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(after.txid.to_string()).bind(after.id).bind(limit).fetch_all(pool).await?;
        rows.into_iter().map(OutboxRow::into_event).collect()
    }

    /// Streams the events after `after` of the organisations in `scope` (`None`: every event, see
    /// [`crate::Caller::scope`]), then follows new ones until the receiver is dropped or `shutdown`
    /// fires. A slow receiver slows the reader (bounded buffer), never drops events. Events of other
    /// organisations are read past, not delivered, so a scoped stream costs what an unscoped one does.
    pub fn watch(
        &self,
        pool: PgPool,
        after: Cursor,
        scope: Option<Vec<String>>,
        poll_interval: Duration,
        shutdown: CancellationToken,
    ) -> ReceiverStream<Result<StoredEvent, ApiError>> {
        const BATCH: i64 = 256;
        let (sender, receiver) = mpsc::channel(BATCH as usize);
        let outbox = self.clone();
        let mut written = self.written.subscribe();
        tokio::spawn(async move {
            let mut cursor = after;
            loop {
                written.mark_unchanged();
                let batch = match outbox.read_after(&pool, cursor, BATCH).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        let _ = sender.send(Err(ApiError::from(error))).await;
                        return;
                    }
                };
                let full = batch.len() as i64 == BATCH;
                for event in batch {
                    cursor = event.cursor;
                    if !within(scope.as_deref(), &event.organisation) {
                        continue;
                    }
                    if sender.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sender.closed() => return,
                    _ = written.changed() => {}
                    _ = tokio::time::sleep(poll_interval) => {}
                }
            }
        });
        ReceiverStream::new(receiver)
    }
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    txid_digits: String,
    id: i64,
    event_id: Uuid,
    event_type: String,
    aggregate_id: Uuid,
    payload: Vec<u8>,
    actor_subject: String,
    actor_role: String,
    actor_organisation: String,
    request_id: Option<String>,
    trace_id: Option<String>,
    occurred_at: DateTime<Utc>,
    organisation: String,
    patient_ids: Vec<Uuid>,
}

impl OutboxRow {
    fn into_event(self) -> Result<StoredEvent, sqlx::Error> {
        let txid = self.txid_digits.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(StoredEvent {
            cursor: Cursor { txid, id: self.id },
            event_id: self.event_id,
            event_type: self.event_type,
            aggregate_id: self.aggregate_id,
            organisation: self.organisation,
            patient_ids: self.patient_ids,
            payload: self.payload,
            actor: Actor { subject: self.actor_subject, role: self.actor_role, organisation: self.actor_organisation },
            request_id: self.request_id,
            trace_id: self.trace_id,
            occurred_at: self.occurred_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_orders() {
        let cursor = Cursor { txid: 7_000_123, id: 42 };
        assert_eq!(cursor.to_string().parse::<Cursor>().unwrap(), cursor);
        assert_eq!("".parse::<Cursor>().unwrap(), Cursor::default());
        assert!(Cursor { txid: 1, id: 99 } < Cursor { txid: 2, id: 1 });
        for bad in ["x", "1", "1.x", "-1.2", "1.2.3"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }
}
