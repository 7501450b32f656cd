//! Following another service's `WatchEvents` stream. The consumer keeps its cursor in its own
//! schema: an event that changes something moves the cursor first in the same transaction as the
//! change ([`advance_stream_cursor`], which refuses to move it back, so a replayed event changes
//! nothing twice, even one replayed by a new life of the follower while the last one's commit was
//! on its way), and events passed over move the saved cursor every few hundred events or when the
//! stream goes quiet. A broken stream is reopened from the saved cursor with a growing pause, so
//! nothing is lost while either side is down.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::outbox::Cursor;

/// Events passed over between cursor saves.
const SAVE_EVERY: u32 = 256;

/// One consumer of one stream.
pub trait Follower: Send + Sync {
    type Message: Send + 'static;

    /// The stream's name in log lines.
    fn stream(&self) -> &'static str;

    /// The saved cursor, if any.
    fn saved_cursor(&self) -> impl Future<Output = Result<Option<String>, String>> + Send;

    fn save_cursor(&self, cursor: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// Opens the stream after `cursor`.
    fn open(&self, cursor: String) -> impl Future<Output = Result<tonic::Streaming<Self::Message>, tonic::Status>> + Send;

    /// The message's resume position.
    fn cursor_of(message: &Self::Message) -> String;

    /// Applies a message. `Ok(true)` when it changed something and moved the saved cursor to `cursor`
    /// in the change's transaction (see [`advance_stream_cursor`]);
    /// `Ok(false)` when it was passed over. An error pauses the follower and retries from the saved
    /// cursor.
    fn apply(&self, message: Self::Message, cursor: &str) -> impl Future<Output = Result<bool, String>> + Send;
}

/// Follows until `shutdown` fires.
pub async fn follow<F: Follower>(follower: F, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    while !shutdown.is_cancelled() {
        match follow_once(&follower, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(reason) => {
                tracing::warn!(stream = follower.stream(), reason, retry_in_ms = backoff.as_millis() as u64, "following events paused");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn follow_once<F: Follower>(follower: &F, shutdown: &CancellationToken) -> Result<(), String> {
    let cursor = follower.saved_cursor().await?.unwrap_or_default();
    let mut stream = follower.open(cursor).await.map_err(|s| format!("stream refused: {:?}", s.code()))?;
    let mut unsaved: Option<String> = None;
    let mut passed = 0u32;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => None,
            next = tokio::time::timeout(Duration::from_secs(1), stream.next()) => Some(next),
        };
        let message = match next {
            None => break,
            // Quiet: keep the position reached so far.
            Some(Err(_elapsed)) => {
                if let Some(cursor) = unsaved.take() {
                    follower.save_cursor(&cursor).await?;
                }
                continue;
            }
            Some(Ok(None)) => return Err("stream ended".into()),
            Some(Ok(Some(Err(status)))) => return Err(format!("stream failed: {:?}", status.code())),
            Some(Ok(Some(Ok(message)))) => message,
        };
        let cursor = F::cursor_of(&message);
        if follower.apply(message, &cursor).await? {
            unsaved = None;
            continue;
        }
        unsaved = Some(cursor);
        passed += 1;
        if passed >= SAVE_EVERY {
            passed = 0;
            if let Some(cursor) = unsaved.take() {
                follower.save_cursor(&cursor).await?;
            }
        }
    }
    if let Some(cursor) = unsaved {
        follower.save_cursor(&cursor).await?;
    }
    Ok(())
}

/// The saved cursor of `stream` in the `consumed_streams` table of the connection's schema.
pub async fn stream_cursor(executor: impl sqlx::PgExecutor<'_>, stream: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT cursor FROM consumed_streams WHERE stream = $1").bind(stream).fetch_optional(executor).await
}

/// Moves the saved position of `stream` (in the `consumed_streams` table of the connection's schema)
/// forward to `cursor`, never back; `false` when it is there or beyond already. A follower applying
/// an event calls it first, inside the event's transaction, and applies nothing when it answers
/// `false`: it holds the position's row lock to the end of the transaction, so a new life of the
/// follower (started while the last one's commit was still on its way) waits for that commit, then
/// finds the event applied.
pub async fn advance_stream_cursor(conn: &mut PgConnection, stream: &str, cursor: &str) -> Result<bool, sqlx::Error> {
    let to: Cursor = cursor.parse().map_err(|_| sqlx::Error::Protocol(format!("not a stream cursor: {cursor:?}")))?;
    sqlx::query("INSERT INTO consumed_streams (stream, cursor, updated_at) VALUES ($1, '', now()) ON CONFLICT DO NOTHING")
        .bind(stream)
        .execute(&mut *conn)
        .await?;
    let saved: String =
        sqlx::query_scalar("SELECT cursor FROM consumed_streams WHERE stream = $1 FOR UPDATE").bind(stream).fetch_one(&mut *conn).await?;
    if saved.parse::<Cursor>().is_ok_and(|saved| saved >= to) {
        return Ok(false);
    }
    sqlx::query("UPDATE consumed_streams SET cursor = $2, updated_at = now() WHERE stream = $1")
        .bind(stream)
        .bind(cursor)
        .execute(conn)
        .await?;
    Ok(true)
}

/// Saves the position reached by passing events over (no change of the follower's goes with it):
/// forward only, as [`advance_stream_cursor`].
pub async fn save_stream_cursor(pool: &PgPool, stream: &str, cursor: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    advance_stream_cursor(&mut tx, stream, cursor).await?;
    tx.commit().await
}
