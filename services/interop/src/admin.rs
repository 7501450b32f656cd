//! `pac.interop.v1.Interop`: the operator's view of the listener and the scheduling feeds, reached
//! through the gateway. Scoped like every read: a caller acting for organisations sees the
//! listener's messages from their sending facilities and the feeds that carry one of their
//! organisations' appointments; another feed is NOT_FOUND.

use chrono::{Duration, Utc};
use pac_platform::audit::with_patients;
use pac_platform::convert::{parse_timestamp, timestamp};
use pac_platform::db::run;
use pac_platform::{ApiError, Caller, CallerVerifier};
use pac_proto::interop as pb;
use pac_proto::interop::interop_server::Interop;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::feeds::Destination;
use crate::store;

pub struct InteropService {
    pool: PgPool,
    verifier: CallerVerifier,
    feeds: Vec<Destination>,
}

impl InteropService {
    pub fn new(pool: PgPool, verifier: CallerVerifier, feeds: Vec<Destination>) -> Self {
        Self { pool, verifier, feeds }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        Ok(self.verifier.caller(request.metadata())?)
    }

    /// The feeds `caller` may see.
    fn visible<'a>(&'a self, caller: &'a Caller) -> impl Iterator<Item = &'a Destination> {
        self.feeds.iter().filter(move |feed| match caller.scope() {
            None => true,
            Some(organisations) => feed.organisations.iter().any(|o| organisations.contains(o)),
        })
    }

    /// The feed named `name`, when `caller` acts for every organisation it carries: its parked
    /// patients and messages may be any of them.
    fn feed(&self, caller: &Caller, name: &str) -> Result<String, Status> {
        if name.trim().is_empty() {
            return Err(ApiError::invalid_field("feed", "FIELD_REQUIRED", "name the feed").into());
        }
        let whole = |feed: &&Destination| match caller.scope() {
            None => true,
            Some(organisations) => feed.organisations.iter().all(|o| organisations.contains(o)),
        };
        self.feeds
            .iter()
            .filter(whole)
            .find(|f| f.name == name)
            .map(|f| f.name.clone())
            .ok_or_else(|| ApiError::not_found("feed", name).into())
    }
}

#[tonic::async_trait]
impl Interop for InteropService {
    async fn list_listener_counts(
        &self,
        request: Request<pb::ListListenerCountsRequest>,
    ) -> Result<Response<pb::ListListenerCountsResponse>, Status> {
        let caller = self.caller(&request)?;
        let since = match &request.get_ref().since {
            Some(since) => parse_timestamp("since", since).map_err(|v| Status::from(ApiError::invalid(vec![v])))?,
            None => Utc::now() - Duration::hours(24),
        };
        let (pool, scope) = (self.pool.clone(), caller.scope().map(<[String]>::to_vec));
        let (counts, last) = run(async move {
            let counts = store::listener_counts(&pool, since, scope.as_deref()).await?;
            let last = store::last_listener_error(&pool, scope.as_deref()).await?;
            Ok::<_, ApiError>((counts, last))
        })
        .await?;
        let mut response = pb::ListListenerCountsResponse {
            counts: counts.into_iter().map(|(message_type, ack_code, count)| pb::ListenerCount { message_type, ack_code, count }).collect(),
            ..Default::default()
        };
        if let Some((code, text, at)) = last {
            response.last_error_code = i32::from(code);
            response.last_error_text = text;
            response.last_error_time = Some(timestamp(at));
        }
        Ok(Response::new(response))
    }

    async fn list_feeds(&self, request: Request<pb::ListFeedsRequest>) -> Result<Response<pb::ListFeedsResponse>, Status> {
        let caller = self.caller(&request)?;
        let pool = self.pool.clone();
        let states = run(async move { store::feed_status(&pool).await }).await?;
        let feeds = self
            .visible(&caller)
            .map(|feed| {
                let state = states.iter().find(|s| s.destination == feed.name);
                pb::Feed {
                    name: feed.name.clone(),
                    organisations: feed.organisations.clone(),
                    pending: state.map_or(0, |s| s.pending),
                    lag_seconds: state.map_or(0.0, |s| s.lag_seconds),
                    delivered: state.map_or(0, |s| s.delivered),
                    parked_patients: state.map_or(0, |s| s.parked_patients),
                    last_error: state.and_then(|s| s.last_error.clone()).unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListFeedsResponse { feeds }))
    }

    async fn list_parked_patients(
        &self,
        request: Request<pb::ListParkedPatientsRequest>,
    ) -> Result<Response<pb::ListParkedPatientsResponse>, Status> {
        let caller = self.caller(&request)?;
        let feed = self.feed(&caller, &request.get_ref().feed)?;
        let pool = self.pool.clone();
        let parked = run(async move { store::parked(&pool, &feed).await }).await?;
        let ids: Vec<String> = parked.iter().map(|p| p.0.clone()).collect();
        let patients = parked
            .into_iter()
            .map(|(patient_id, sequence, reason, at)| pb::ParkedPatient { patient_id, sequence, reason, park_time: Some(timestamp(at)) })
            .collect();
        Ok(with_patients(Response::new(pb::ListParkedPatientsResponse { patients }), ids))
    }

    async fn release_patient(&self, request: Request<pb::ReleasePatientRequest>) -> Result<Response<pb::ReleasePatientResponse>, Status> {
        let caller = self.caller(&request)?;
        let feed = self.feed(&caller, &request.get_ref().feed)?;
        let patient_id = request.get_ref().patient_id.trim().to_string();
        if patient_id.is_empty() {
            return Err(ApiError::invalid_field("patient_id", "FIELD_REQUIRED", "name the parked patient").into());
        }
        let (pool, id) = (self.pool.clone(), patient_id.clone());
        let released = run(async move { store::release(&pool, &feed, &id).await }).await?;
        if !released {
            return Err(ApiError::not_found("parked patient", &patient_id).into());
        }
        Ok(with_patients(Response::new(pb::ReleasePatientResponse {}), [patient_id]))
    }

    async fn replay_feed(&self, request: Request<pb::ReplayFeedRequest>) -> Result<Response<pb::ReplayFeedResponse>, Status> {
        let caller = self.caller(&request)?;
        let feed = self.feed(&caller, &request.get_ref().feed)?;
        let from = request.get_ref().from_sequence;
        if from < 1 {
            return Err(ApiError::invalid_field("from_sequence", "SEQUENCE_INVALID", "must be 1 or more").into());
        }
        let pool = self.pool.clone();
        let replayed = run(async move { store::replay(&pool, &feed, from).await }).await?;
        Ok(Response::new(pb::ReplayFeedResponse { replayed: replayed as i64 }))
    }

    async fn list_review_tasks(
        &self,
        request: Request<pb::ListReviewTasksRequest>,
    ) -> Result<Response<pb::ListReviewTasksResponse>, Status> {
        let caller = self.caller(&request)?;
        let (pool, scope) = (self.pool.clone(), caller.scope().map(<[String]>::to_vec));
        let open = run(async move { store::open_reviews(&pool, scope.as_deref()).await }).await?;
        let patients: Vec<String> = open.iter().flat_map(|t| t.candidate_ids.clone()).collect();
        let tasks = open
            .into_iter()
            .map(|t| pb::ReviewTask {
                id: t.id,
                control_id: t.control_id,
                message_type: t.message_type,
                sending_facility: t.sending_facility,
                reason: t.reason,
                candidate_patient_ids: t.candidate_ids,
                create_time: Some(timestamp(t.created_at)),
            })
            .collect();
        Ok(with_patients(Response::new(pb::ListReviewTasksResponse { tasks }), patients))
    }

    async fn resolve_review_task(
        &self,
        request: Request<pb::ResolveReviewTaskRequest>,
    ) -> Result<Response<pb::ResolveReviewTaskResponse>, Status> {
        let caller = self.caller(&request)?;
        let pb::ResolveReviewTaskRequest { task_id, resolution } = request.into_inner();
        let resolution = resolution.trim().to_string();
        if resolution.is_empty() || resolution.chars().count() > 500 {
            return Err(ApiError::invalid_field("resolution", "RESOLUTION_INVALID", "say what was done, in 1-500 characters").into());
        }
        let (pool, scope, by) = (self.pool.clone(), caller.scope().map(<[String]>::to_vec), caller.actor.subject.clone());
        let resolved = run(async move { store::resolve_review(&pool, task_id, scope.as_deref(), &by, &resolution).await }).await?;
        let candidates = resolved.ok_or_else(|| Status::from(ApiError::not_found("open review task", task_id.to_string())))?;
        Ok(with_patients(Response::new(pb::ResolveReviewTaskResponse {}), candidates))
    }
}
