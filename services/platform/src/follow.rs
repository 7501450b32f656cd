//! Following another service's `WatchEvents` stream. The consumer keeps its cursor in its own
//! schema: an event that changes something saves the cursor in the same transaction as the change
//! (so a replayed event changes nothing twice), and events passed over move the saved cursor every
//! few hundred events or when the stream goes quiet. A broken stream is reopened from the saved
//! cursor with a growing pause, so nothing is lost while either side is down.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

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

    /// Applies a message. `Ok(true)` when it changed something and saved `cursor` with the change;
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

/// Saves the cursor of `stream`; inside a transaction, it moves with the change it belongs to.
pub async fn save_stream_cursor(executor: impl sqlx::PgExecutor<'_>, stream: &str, cursor: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consumed_streams (stream, cursor, updated_at) VALUES ($1, $2, now()) \
         ON CONFLICT (stream) DO UPDATE SET cursor = EXCLUDED.cursor, updated_at = now()",
    )
    .bind(stream)
    .bind(cursor)
    .execute(executor)
    .await?;
    Ok(())
}
