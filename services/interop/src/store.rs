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
    /// Handle it: new, or its last answer was AR (or never sent, its claim lapsed) so it may be
    /// tried again. The log row's id; the message is claimed for the lease.
    Handle(i64),
    /// Answered before with AA or AE: send this ACK again, change nothing.
    Replay(Vec<u8>),
    /// The key was used by a message with another body.
    Conflict,
    /// The same message is being handled right now (another connection or replica).
    Busy,
}

/// The answer a message got.
pub struct Answer<'a> {
    pub ack_code: &'a str,
    pub error_code: Option<u16>,
    pub error_text: Option<&'a str>,
    pub ack: &'a [u8],
}

/// Logs `message` unless its key is known, and says what to do with it; a message handled is
/// claimed for `lease`.
pub async fn claim(pool: &PgPool, message: &Received<'_>, lease: Duration) -> Result<Claim, sqlx::Error> {
    let lease = lease.as_secs_f64();
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO inbound_messages (listener, sending_application, sending_facility, control_id, body_sha256, message_type, request_id, raw, claimed_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9)) \
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
    .bind(lease)
    .fetch_optional(pool)
    .await?;
    if let Some(id) = inserted {
        return Ok(Claim::Handle(id));
    }
    // Known: take it over if it may be handled again (AR, or unanswered with its claim lapsed).
    let taken: Option<i64> = sqlx::query_scalar(
        "UPDATE inbound_messages SET claimed_until = now() + make_interval(secs => $5) \
         WHERE sending_application = $1 AND sending_facility = $2 AND control_id = $3 AND control_id <> '' AND body_sha256 = $4 \
           AND (ack_code IS NULL OR ack_code = 'AR') AND (claimed_until IS NULL OR claimed_until < now()) RETURNING id",
    )
    .bind(&message.key.sending_application)
    .bind(&message.key.sending_facility)
    .bind(&message.key.control_id)
    .bind(&message.body_sha256[..])
    .bind(lease)
    .fetch_optional(pool)
    .await?;
    if let Some(id) = taken {
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
        // Pruned meanwhile: handle it as new.
        None => return Box::pin(claim(pool, message, Duration::from_secs_f64(lease))).await,
        Some((_, hash, _, _)) if hash != message.body_sha256[..] => Claim::Conflict,
        Some((_, _, Some(code), Some(ack))) if code != "AR" => Claim::Replay(ack),
        Some(_) => Claim::Busy,
    })
}

/// A logged message's id, body hash, ACK code and ACK.
type Logged = (i64, Vec<u8>, Option<String>, Option<Vec<u8>>);

/// Records the answer to the message logged as `id`.
pub async fn answer(pool: &PgPool, id: i64, answer: &Answer<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE inbound_messages SET answered_at = now(), ack_code = $2, error_code = $3, error_text = $4, ack = $5, claimed_until = NULL WHERE id = $1",
    )
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
    reply: &Answer<'_>,
) -> Result<(), sqlx::Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO inbound_messages (listener, sending_application, sending_facility, control_id, body_sha256, message_type, request_id, raw) \
         VALUES ($1, '', '', '', $2, '', '', $3) RETURNING id",
    )
    .bind(listener)
    .bind(&body_sha256[..])
    .bind(raw)
    .fetch_one(pool)
    .await?;
    answer(pool, id, reply).await
}

/// Forgets keys older than `keys` and clears message text older than `messages` (at most `keys`),
/// but for messages a review task still waits on; forgets feed messages delivered longer than
/// `messages` ago. Returns (keys forgotten, messages cleared, feed messages forgotten).
pub async fn prune(pool: &PgPool, keys: Duration, messages: Duration) -> Result<(u64, u64, u64), sqlx::Error> {
    const NO_OPEN_TASK: &str =
        "NOT EXISTS (SELECT 1 FROM review_tasks t WHERE t.message_id = inbound_messages.id AND t.resolved_at IS NULL)";
    let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM inbound_messages WHERE received_at < now() - make_interval(secs => $1) AND {NO_OPEN_TASK}"
    )))
    .bind(keys.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    let cleared = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE inbound_messages SET raw = NULL, raw_cleared = true \
         WHERE NOT raw_cleared AND received_at < now() - make_interval(secs => $1) AND {NO_OPEN_TASK}"
    )))
    .bind(messages.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    let sent = sqlx::query("DELETE FROM outbound_messages WHERE state = 'delivered' AND delivered_at < now() - make_interval(secs => $1)")
        .bind(messages.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
    Ok((deleted, cleared, sent))
}

/// A feed's message waiting to be sent.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Outbound {
    pub sequence: i64,
    pub patient_id: String,
    pub control_id: String,
    pub message: Vec<u8>,
}

/// A feed's state for an operator.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedStatus {
    pub destination: String,
    pub cursor: String,
    pub pending: i64,
    /// Seconds since the oldest pending message was made (0 when none is pending).
    pub lag_seconds: f64,
    pub delivered: i64,
    pub parked_patients: i64,
    pub last_error: Option<String>,
}

/// The feed's stream position, the feed made known first.
pub async fn feed_cursor(pool: &PgPool, destination: &str) -> Result<String, sqlx::Error> {
    sqlx::query("INSERT INTO feeds (destination) VALUES ($1) ON CONFLICT DO NOTHING").bind(destination).execute(pool).await?;
    sqlx::query_scalar("SELECT cursor FROM feeds WHERE destination = $1").bind(destination).fetch_one(pool).await
}

/// The stream moved past events the feed sends nothing for.
pub async fn advance_cursor(pool: &PgPool, destination: &str, cursor: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE feeds SET cursor = $2 WHERE destination = $1").bind(destination).bind(cursor).execute(pool).await?;
    Ok(())
}

/// Stores the message `make(sequence)` returns (its control id and bytes) for the event at
/// `cursor`, with the feed's next sequence number, and moves the feed's position past the event,
/// in one transaction. An event stored before (a stream resumed from an older position) is not
/// stored again.
pub async fn enqueue(
    pool: &PgPool,
    destination: &str,
    event_id: &str,
    cursor: &str,
    patient_id: &str,
    message_type: &str,
    make: impl FnOnce(i64) -> (String, Vec<u8>),
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let known: Option<i64> = sqlx::query_scalar("SELECT sequence FROM outbound_messages WHERE destination = $1 AND event_id = $2")
        .bind(destination)
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_none() {
        let sequence: i64 =
            sqlx::query_scalar("UPDATE feeds SET next_sequence = next_sequence + 1 WHERE destination = $1 RETURNING next_sequence - 1")
                .bind(destination)
                .fetch_one(&mut *tx)
                .await?;
        let (control_id, message) = make(sequence);
        sqlx::query(
            "INSERT INTO outbound_messages (destination, sequence, event_id, event_cursor, patient_id, message_type, control_id, message) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(destination)
        .bind(sequence)
        .bind(event_id)
        .bind(cursor)
        .bind(patient_id)
        .bind(message_type)
        .bind(control_id)
        .bind(message)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("UPDATE feeds SET cursor = $2 WHERE destination = $1").bind(destination).bind(cursor).execute(&mut *tx).await?;
    tx.commit().await
}

/// The feed's next message to send: the first pending one, in order, of a patient not parked.
pub async fn next_outbound(pool: &PgPool, destination: &str) -> Result<Option<Outbound>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.sequence, m.patient_id, m.control_id, m.message FROM outbound_messages m \
         WHERE m.destination = $1 AND m.state = 'pending' \
           AND NOT EXISTS (SELECT 1 FROM parked_patients p WHERE p.destination = m.destination AND p.patient_id = m.patient_id) \
         ORDER BY m.sequence LIMIT 1",
    )
    .bind(destination)
    .fetch_optional(pool)
    .await
}

/// The destination answered AA.
pub async fn delivered(pool: &PgPool, destination: &str, sequence: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbound_messages SET state = 'delivered', delivered_at = now(), attempts = attempts + 1 \
         WHERE destination = $1 AND sequence = $2",
    )
    .bind(destination)
    .bind(sequence)
    .execute(pool)
    .await?;
    Ok(())
}

/// The destination answered AE: the message and its patient are parked.
pub async fn park(pool: &PgPool, destination: &str, message: &Outbound, reason: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE outbound_messages SET state = 'parked', attempts = attempts + 1, last_error = $3 WHERE destination = $1 AND sequence = $2",
    )
    .bind(destination)
    .bind(message.sequence)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO parked_patients (destination, patient_id, sequence, reason) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(destination)
        .bind(&message.patient_id)
        .bind(message.sequence)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// A try that got no AA or AE (AR, no answer in time, no connection): recorded, to be tried again.
pub async fn attempt_failed(pool: &PgPool, destination: &str, sequence: Option<i64>, error: &str) -> Result<(), sqlx::Error> {
    if let Some(sequence) = sequence {
        sqlx::query("UPDATE outbound_messages SET attempts = attempts + 1, last_error = $3 WHERE destination = $1 AND sequence = $2")
            .bind(destination)
            .bind(sequence)
            .bind(error)
            .execute(pool)
            .await?;
    }
    sqlx::query("UPDATE feeds SET last_error = $2, last_error_at = now() WHERE destination = $1")
        .bind(destination)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// Every feed's state; pending messages and lag count those of patients not parked.
pub async fn feed_status(pool: &PgPool) -> Result<Vec<FeedStatus>, sqlx::Error> {
    const NOT_PARKED: &str =
        "NOT EXISTS (SELECT 1 FROM parked_patients p WHERE p.destination = m.destination AND p.patient_id = m.patient_id)";
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT f.destination, f.cursor, \
                (SELECT count(*) FROM outbound_messages m WHERE m.destination = f.destination AND m.state = 'pending' AND {NOT_PARKED}) AS pending, \
                coalesce(extract(epoch FROM now() - (SELECT min(created_at) FROM outbound_messages m \
                          WHERE m.destination = f.destination AND m.state = 'pending' AND {NOT_PARKED}))::float8, 0) AS lag_seconds, \
                (SELECT count(*) FROM outbound_messages m WHERE m.destination = f.destination AND m.state = 'delivered') AS delivered, \
                (SELECT count(*) FROM parked_patients p WHERE p.destination = f.destination) AS parked_patients, \
                f.last_error \
         FROM feeds f ORDER BY f.destination"
    )))
    .fetch_all(pool)
    .await
}

/// Releases a parked patient: its parked messages are sent again, in order, before its later ones.
/// Whether the patient was parked.
pub async fn release(pool: &PgPool, destination: &str, patient_id: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query("DELETE FROM parked_patients WHERE destination = $1 AND patient_id = $2")
        .bind(destination)
        .bind(patient_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("UPDATE outbound_messages SET state = 'pending' WHERE destination = $1 AND patient_id = $2 AND state = 'parked'")
        .bind(destination)
        .bind(patient_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(released > 0)
}

/// Sends a feed's messages again from `sequence` on (their stored bytes, the same control ids).
/// How many will be sent again.
pub async fn replay(pool: &PgPool, destination: &str, sequence: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE outbound_messages SET state = 'pending', delivered_at = NULL WHERE destination = $1 AND sequence >= $2 AND state = 'delivered'",
    )
    .bind(destination)
    .bind(sequence)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Listener messages received since `since`, by type and ACK code; `scope` limits them to those
/// sending facilities (None: all).
pub async fn listener_counts(
    pool: &PgPool,
    since: chrono::DateTime<chrono::Utc>,
    scope: Option<&[String]>,
) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT message_type, coalesce(ack_code, ''), count(*) FROM inbound_messages \
         WHERE received_at >= $1 AND ($2::text[] IS NULL OR sending_facility = ANY($2)) \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(since)
    .bind(scope)
    .fetch_all(pool)
    .await
}

/// The latest AE or AR a listener sent (its 0357 code, text and time), within `scope`.
pub async fn last_listener_error(
    pool: &PgPool,
    scope: Option<&[String]>,
) -> Result<Option<(i16, String, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce(error_code, 0::smallint), coalesce(error_text, ''), answered_at FROM inbound_messages \
         WHERE ack_code IN ('AE', 'AR') AND ($1::text[] IS NULL OR sending_facility = ANY($1)) \
         ORDER BY answered_at DESC LIMIT 1",
    )
    .bind(scope)
    .fetch_optional(pool)
    .await
}

/// The patients parked on a feed: id, refused message's sequence, reason, when; oldest first.
pub async fn parked(pool: &PgPool, destination: &str) -> Result<Vec<(String, i64, String, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT patient_id, sequence, reason, parked_at FROM parked_patients WHERE destination = $1 ORDER BY parked_at, patient_id",
    )
    .bind(destination)
    .fetch_all(pool)
    .await
}

/// Opens a review task for the message logged as `message_id` (once per message and reason).
pub async fn open_review(pool: &PgPool, message_id: i64, facility: &str, reason: &str, candidates: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO review_tasks (message_id, sending_facility, reason, candidate_ids) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (message_id, reason) DO UPDATE SET candidate_ids = EXCLUDED.candidate_ids",
    )
    .bind(message_id)
    .bind(facility)
    .bind(reason)
    .bind(candidates)
    .execute(pool)
    .await?;
    Ok(())
}

/// An open review task, with its message's control id and type.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReviewTask {
    pub id: i64,
    pub control_id: String,
    pub message_type: String,
    pub sending_facility: String,
    pub reason: String,
    pub candidate_ids: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The open review tasks of `scope`'s sending facilities (None: all), oldest first.
pub async fn open_reviews(pool: &PgPool, scope: Option<&[String]>) -> Result<Vec<ReviewTask>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.id, m.control_id, m.message_type, t.sending_facility, t.reason, t.candidate_ids, t.created_at \
         FROM review_tasks t JOIN inbound_messages m ON m.id = t.message_id \
         WHERE t.resolved_at IS NULL AND ($1::text[] IS NULL OR t.sending_facility = ANY($1)) \
         ORDER BY t.created_at, t.id LIMIT 500",
    )
    .bind(scope)
    .fetch_all(pool)
    .await
}

/// Resolves an open task of `scope`'s sending facilities; its candidates, or None when there is no
/// such open task.
pub async fn resolve_review(
    pool: &PgPool,
    id: i64,
    scope: Option<&[String]>,
    by: &str,
    resolution: &str,
) -> Result<Option<Vec<String>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE review_tasks SET resolved_at = now(), resolved_by = $3, resolution = $4 \
         WHERE id = $1 AND resolved_at IS NULL AND ($2::text[] IS NULL OR sending_facility = ANY($2)) RETURNING candidate_ids",
    )
    .bind(id)
    .bind(scope)
    .bind(by)
    .bind(resolution)
    .fetch_optional(pool)
    .await
}
