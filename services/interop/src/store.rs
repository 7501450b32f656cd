//! The interop schema's SQL: the inbound message log, which is also the idempotency record.

use std::time::Duration;

use sqlx::PgPool;

/// A message's idempotency key: MSH-3, MSH-4 and MSH-10.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub sending_application: String,
    pub sending_facility: String,
    pub control_id: String,
}

/// A received message, as logged.
pub struct Received<'a> {
    pub listener: &'a str,
    pub key: &'a Key,
    pub body_sha256: &'a [u8; 32],
    pub message_type: &'a str,
    pub request_id: &'a str,
    pub raw: &'a [u8],
}

/// What the log says about a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Handle it: new, or its last answer was AR (or never sent) so it may be tried again. The
    /// log row's id.
    Handle(i64),
    /// Answered before with AA or AE: send this ACK again, change nothing.
    Replay(Vec<u8>),
    /// The key was used by a message with another body.
    Conflict,
}

/// The answer a message got.
pub struct Answer<'a> {
    pub ack_code: &'a str,
    pub error_code: Option<u16>,
    pub error_text: Option<&'a str>,
    pub ack: &'a [u8],
}

/// Logs `message` unless its key is known, and says what to do with it.
pub async fn claim(pool: &PgPool, message: &Received<'_>) -> Result<Claim, sqlx::Error> {
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO inbound_messages (listener, sending_application, sending_facility, control_id, body_sha256, message_type, request_id, raw) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (sending_application, sending_facility, control_id) WHERE control_id <> '' DO NOTHING RETURNING id",
    )
    .bind(message.listener)
    .bind(&message.key.sending_application)
    .bind(&message.key.sending_facility)
    .bind(&message.key.control_id)
    .bind(&message.body_sha256[..])
    .bind(message.message_type)
    .bind(message.request_id)
    .bind(message.raw)
    .fetch_optional(pool)
    .await?;
    if let Some(id) = inserted {
        return Ok(Claim::Handle(id));
    }
    let known: Option<Logged> = sqlx::query_as(
        "SELECT id, body_sha256, ack_code, ack FROM inbound_messages \
         WHERE sending_application = $1 AND sending_facility = $2 AND control_id = $3 AND control_id <> ''",
    )
    .bind(&message.key.sending_application)
    .bind(&message.key.sending_facility)
    .bind(&message.key.control_id)
    .fetch_optional(pool)
    .await?;
    Ok(match known {
        // Pruned between the insert and the read: handle it as new.
        None => return Box::pin(claim(pool, message)).await,
        Some((_, hash, _, _)) if hash != message.body_sha256[..] => Claim::Conflict,
        Some((_, _, Some(code), Some(ack))) if code != "AR" => Claim::Replay(ack),
        Some((id, ..)) => Claim::Handle(id),
    })
}

/// A logged message's id, body hash, ACK code and ACK.
type Logged = (i64, Vec<u8>, Option<String>, Option<Vec<u8>>);

/// Records the answer to the message logged as `id`.
pub async fn answer(pool: &PgPool, id: i64, answer: &Answer<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE inbound_messages SET answered_at = now(), ack_code = $2, error_code = $3, error_text = $4, ack = $5 WHERE id = $1")
        .bind(id)
        .bind(answer.ack_code)
        .bind(answer.error_code.map(|c| c as i16))
        .bind(answer.error_text)
        .bind(answer.ack)
        .execute(pool)
        .await?;
    Ok(())
}

/// Logs a message that could not be read (no key), with its answer.
pub async fn log_unreadable(
    pool: &PgPool,
    listener: &str,
    body_sha256: &[u8; 32],
    raw: &[u8],
    answer: &Answer<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO inbound_messages (listener, sending_application, sending_facility, control_id, body_sha256, message_type, request_id, raw, \
                                       answered_at, ack_code, error_code, error_text, ack) \
         VALUES ($1, '', '', '', $2, '', '', $3, now(), $4, $5, $6, $7)",
    )
    .bind(listener)
    .bind(&body_sha256[..])
    .bind(raw)
    .bind(answer.ack_code)
    .bind(answer.error_code.map(|c| c as i16))
    .bind(answer.error_text)
    .bind(answer.ack)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets keys older than `keys` and clears message text older than `messages` (at most `keys`).
/// Returns (rows deleted, messages cleared).
pub async fn prune(pool: &PgPool, keys: Duration, messages: Duration) -> Result<(u64, u64), sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM inbound_messages WHERE received_at < now() - make_interval(secs => $1)")
        .bind(keys.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
    let cleared = sqlx::query(
        "UPDATE inbound_messages SET raw = NULL, raw_cleared = true \
         WHERE NOT raw_cleared AND received_at < now() - make_interval(secs => $1)",
    )
    .bind(messages.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    Ok((deleted, cleared))
}
