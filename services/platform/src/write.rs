//! A write's steps, the same in every service: who asked (the caller, their organisation scope and
//! the request id), a claim on the request id that gives either a fresh transaction or the response
//! recorded for an earlier attempt, the change and its events in that transaction, and a commit that
//! stores the response under the request id and then wakes the event streams.
//!
//! ```text
//! let mut tx = match writes.claim("BookAppointment", &write).await? {
//!     Claim::Replay(response) => return Ok(response),
//!     Claim::Fresh(tx) => tx,
//! };
//! store::insert_appointment(&mut tx, &appointment).await?;        // the change
//! writes.append(&mut tx, &write, event).await?;                   // its event, same transaction
//! tx.commit(&response).await?;                                    // response stored, then streams woken
//! ```
//!
//! A claim holds a lock on its request id to the end of the transaction, so two attempts with the
//! same id run one after the other and the second replays the first's response (see
//! `idempotency`). Writes that call other services first ask [`Writes::recorded`] before calling
//! out, so a retry of a finished write answers without calling anyone. Work without a request id
//! (following another service's stream, housekeeping, etag-guarded updates) uses [`Writes::begin`].

use std::ops::{Deref, DerefMut};

use prost::Message;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::caller::{Actor, Caller};
use crate::error::ApiError;
use crate::idempotency::{IdempotencyStore, parse_request_id, request_hash};
use crate::outbox::{NewEvent, Outbox};

/// Who asked for a write, within which organisations, and its idempotency key.
#[derive(Debug, Clone)]
pub struct Write {
    pub actor: Actor,
    /// The caller's organisation scope (`Caller::scope`); `None` when unscoped.
    pub scope: Option<Vec<String>>,
    pub request_id: Option<String>,
    /// SHA-256 of the request: a request id used again for a different request is refused.
    pub request_hash: Vec<u8>,
}

impl Write {
    /// A write by `caller` of `request`, whose `request_id` field is `request_id` (validated here).
    pub fn new(caller: &Caller, request: &impl Message, request_id: &str) -> Result<Self, ApiError> {
        Ok(Self {
            actor: caller.actor.clone(),
            scope: caller.scope().map(<[String]>::to_vec),
            request_id: parse_request_id(request_id)?,
            request_hash: request_hash(request),
        })
    }

    /// A write by `caller` that has no request id (an etag guards it instead).
    pub fn unkeyed(caller: &Caller) -> Self {
        Self { actor: caller.actor.clone(), scope: caller.scope().map(<[String]>::to_vec), request_id: None, request_hash: Vec::new() }
    }

    /// A write the service makes itself (following another service, housekeeping): unscoped.
    pub fn by_service(actor: Actor) -> Self {
        Self { actor, scope: None, request_id: None, request_hash: Vec::new() }
    }

    pub fn scope(&self) -> Option<&[String]> {
        self.scope.as_deref()
    }

    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

/// An event about one object, to append with a write.
pub struct Event {
    /// The event message's name, e.g. `AppointmentBooked`.
    pub event_type: &'static str,
    /// The object the event is about.
    pub aggregate_id: Uuid,
    /// The organisation that owns the object; `''` for none (see `outbox::NewEvent`).
    pub organisation: String,
    /// The patients the event is about.
    pub patient_ids: Vec<Uuid>,
    /// The service's encoded event message.
    pub payload: Vec<u8>,
}

/// One service's writes: its pool, its idempotency records and its outbox.
#[derive(Clone)]
pub struct Writes {
    pool: PgPool,
    outbox: Outbox,
    idempotency: IdempotencyStore,
}

/// A write's transaction, or the response recorded for its request id.
pub enum Claim<'w, R> {
    Fresh(WriteTx<'w>),
    Replay(R),
}

/// The recorded response, if the request id has one (`REQUEST_ID_REUSED` for a different request).
fn replayed<R: Message + Default>(recorded: Option<crate::idempotency::Recorded>, write: &Write) -> Result<Option<R>, ApiError> {
    recorded.map(|r| r.replay(&write.request_hash)).transpose()
}

impl Writes {
    /// `schema` is the service's schema, holding its `idempotency` and `outbox` tables.
    pub fn new(pool: PgPool, outbox: Outbox, schema: &'static str) -> Self {
        Self { pool, outbox, idempotency: IdempotencyStore::new(schema) }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Starts `operation`: a fresh transaction holding the lock on the write's request id, or the
    /// response an earlier attempt with the same id recorded.
    pub async fn claim<R: Message + Default>(&self, operation: &'static str, write: &Write) -> Result<Claim<'_, R>, ApiError> {
        let mut tx = self.pool.begin().await?;
        let key = match &write.request_id {
            Some(request_id) => {
                let recorded = self.idempotency.claim(&mut tx, operation, request_id).await?;
                if let Some(response) = replayed(recorded, write)? {
                    return Ok(Claim::Replay(response));
                }
                Some((request_id.clone(), write.request_hash.clone()))
            }
            None => None,
        };
        Ok(Claim::Fresh(WriteTx { tx, writes: self, operation, key }))
    }

    /// The response recorded for the write's request id, if any, read without a lock: asked before
    /// calling other services, so that a retry of a finished write calls no one.
    pub async fn recorded<R: Message + Default>(&self, operation: &str, write: &Write) -> Result<Option<R>, ApiError> {
        let Some(request_id) = &write.request_id else { return Ok(None) };
        let recorded = self.idempotency.find(&self.pool, operation, request_id).await?;
        replayed(recorded, write)
    }

    /// A transaction for work that has no request id; [`WriteTx::commit_unanswered`] commits it.
    pub async fn begin(&self) -> Result<WriteTx<'_>, ApiError> {
        Ok(WriteTx { tx: self.pool.begin().await?, writes: self, operation: "", key: None })
    }

    /// Appends `event`, by the write's actor under its request id, inside the write's transaction.
    pub async fn append(&self, conn: &mut PgConnection, write: &Write, event: Event) -> Result<(), ApiError> {
        let new = NewEvent {
            event_type: event.event_type,
            aggregate_id: event.aggregate_id,
            organisation: &event.organisation,
            patient_ids: &event.patient_ids,
            payload: event.payload,
            actor: &write.actor,
            request_id: write.request_id(),
        };
        self.outbox.append(conn, new).await?;
        Ok(())
    }

    /// Call after committing events written outside a [`WriteTx`] (a write made in one statement).
    pub fn committed(&self) {
        self.outbox.committed();
    }
}

/// A write's open transaction. It derefs to the connection, for the store's functions.
pub struct WriteTx<'w> {
    tx: Transaction<'static, Postgres>,
    writes: &'w Writes,
    operation: &'static str,
    /// The request id and request hash the response is recorded under.
    key: Option<(String, Vec<u8>)>,
}

impl WriteTx<'_> {
    /// Records `response` under the request id (if any), commits, then wakes the event streams.
    pub async fn commit<R: Message>(mut self, response: &R) -> Result<(), ApiError> {
        if let Some((request_id, request_hash)) = &self.key {
            self.writes.idempotency.record(&mut self.tx, self.operation, request_id, request_hash, response).await?;
        }
        self.commit_unanswered().await
    }

    /// Commits work that records no response, then wakes the event streams.
    pub async fn commit_unanswered(self) -> Result<(), ApiError> {
        self.tx.commit().await?;
        self.writes.outbox.committed();
        Ok(())
    }
}

impl Deref for WriteTx<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
