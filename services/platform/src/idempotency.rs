//! Idempotent writes (AIP-155): a write carries a `request_id`; the first successful response is kept
//! with a hash of the request, a retry with the same id and the same request gets that response back,
//! and the same id with a different request is refused.

use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::error::ApiError;

/// A validated request id: 1..=128 printable ASCII characters.
pub fn parse_request_id(value: &str) -> Result<Option<String>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid_field(
            "request_id",
            "REQUEST_ID_INVALID",
            "must be 1 to 128 printable ASCII characters without spaces (a UUID is recommended)",
        ));
    }
    Ok(Some(value.to_string()))
}

/// SHA-256 of the request's canonical protobuf encoding.
pub fn request_hash(request: &impl Message) -> Vec<u8> {
    Sha256::digest(request.encode_to_vec()).to_vec()
}

/// A previously recorded response.
pub struct Recorded {
    pub request_hash: Vec<u8>,
    pub response: Vec<u8>,
}

impl Recorded {
    /// The recorded response if the request is the same one, else REQUEST_ID_REUSED.
    pub fn replay<R: Message + Default>(&self, request_hash: &[u8]) -> Result<R, ApiError> {
        if self.request_hash != request_hash {
            return Err(ApiError::failed_precondition("REQUEST_ID_REUSED", "this request_id was already used for a different request")
                .with_precondition("REQUEST_ID_REUSED", "request_id", "use a new request_id for a new request"));
        }
        R::decode(self.response.as_slice()).map_err(ApiError::internal)
    }
}

/// One service's idempotency records.
#[derive(Clone, Copy)]
pub struct IdempotencyStore {
    schema: &'static str,
}

impl IdempotencyStore {
    pub const fn new(schema: &'static str) -> Self {
        Self { schema }
    }

    pub async fn find(
        &self,
        executor: impl sqlx::PgExecutor<'_>,
        operation: &str,
        request_id: &str,
    ) -> Result<Option<Recorded>, sqlx::Error> {
        let sql = format!("SELECT request_hash, response FROM {}.idempotency WHERE operation = $1 AND request_id = $2", self.schema);
        let row: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(operation).bind(request_id).fetch_optional(executor).await?;
        Ok(row.map(|(request_hash, response)| Recorded { request_hash, response }))
    }

    /// Inside a write's transaction: waits for any concurrent request with the same id to finish, then
    /// returns its recorded response if it succeeded. The lock is held to the end of the transaction.
    pub async fn claim(&self, conn: &mut PgConnection, operation: &str, request_id: &str) -> Result<Option<Recorded>, sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("{}:{operation}:{request_id}", self.schema))
            .execute(&mut *conn)
            .await?;
        self.find(&mut *conn, operation, request_id).await
    }

    /// Records the response inside the write's transaction. Returns false when the id was recorded
    /// first by a concurrent request (which this call waited for): the caller rolls back and replays.
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        operation: &str,
        request_id: &str,
        request_hash: &[u8],
        response: &impl Message,
    ) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "INSERT INTO {}.idempotency (operation, request_id, request_hash, response) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            self.schema
        );
        let result = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(operation)
            .bind(request_id)
            .bind(request_hash)
            .bind(response.encode_to_vec())
            .execute(conn)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Prunes records older than `retention` every hour until `shutdown`.
    pub fn prune_hourly(self, pool: PgPool, retention: Duration, shutdown: tokio_util::sync::CancellationToken) {
        crate::grpc::every(Duration::from_secs(3600), shutdown, move || {
            let pool = pool.clone();
            async move {
                if let Err(error) = self.prune(&pool, retention).await {
                    tracing::warn!(error = crate::error::safe_description(&error), "pruning idempotency records failed");
                }
            }
        });
    }

    /// Forgets records older than `retention`.
    pub async fn prune(&self, pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
        let sql = format!("DELETE FROM {}.idempotency WHERE created_at < now() - make_interval(secs => $1)", self.schema);
        let result = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(retention.as_secs_f64()).execute(pool).await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_printable_ascii() {
        assert_eq!(parse_request_id("").unwrap(), None);
        assert!(parse_request_id("0192f0a4-7c1e-7000-8000-000000000001").unwrap().is_some());
        assert!(parse_request_id("has space").is_err());
        assert!(parse_request_id(&"x".repeat(129)).is_err());
        assert!(parse_request_id("naïve").is_err());
    }
}
