//! What surrounds the API: the database role's reach, health, reflection, graceful shutdown.

use std::time::Duration;

use crate::common::*;
use pac_proto::records as pb;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn the_records_role_cannot_reach_other_schemas() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    for statement in [
        "CREATE SCHEMA scheduling",
        "CREATE TABLE scheduling.appointments (id int)",
        "INSERT INTO scheduling.appointments VALUES (1)",
        "CREATE TABLE public.shared (id int)",
        "INSERT INTO public.shared VALUES (1)",
    ] {
        sqlx::raw_sql(statement).execute(&admin).await.unwrap();
    }
    let records = pac_records::connect(&server.platform, &pac_records::RecordsConfig::development(server.addr)).await.unwrap();
    for statement in [
        "SELECT * FROM scheduling.appointments",
        "INSERT INTO scheduling.appointments VALUES (2)",
        "UPDATE scheduling.appointments SET id = 3",
        "DELETE FROM scheduling.appointments",
        "CREATE TABLE scheduling.mine (id int)",
        "SELECT * FROM public.shared",
        "INSERT INTO public.shared VALUES (2)",
        "CREATE TABLE public.mine (id int)",
        "CREATE SCHEMA elsewhere",
    ] {
        let error = sqlx::raw_sql(statement).execute(&records).await.expect_err(statement);
        let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
    }
    // Its own schema it owns.
    sqlx::raw_sql("SELECT count(*) FROM records.patients").execute(&records).await.unwrap();
    // Its sessions carry the name search's similarity floor (the trigram index prunes by it).
    let floor: String =
        sqlx::query_scalar("SELECT current_setting('pg_trgm.word_similarity_threshold')").fetch_one(&records).await.unwrap();
    assert_eq!(floor.parse::<f64>().unwrap(), pac_records::store::MIN_NAME_SCORE);
    server.stop().await;
}

#[tokio::test]
async fn health_follows_the_database_and_reflection_serves_both_versions() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel.clone());
    let check = |service: &str| HealthCheckRequest { service: service.into() };
    for service in ["", "pac.records.v1.PatientRecords"] {
        let status = health.check(check(service)).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(server.channel.clone());
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response else { panic!() };
        assert!(list.service.iter().any(|s| s.name == "pac.records.v1.PatientRecords"));
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(server.channel.clone());
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response else { panic!() };
        assert!(list.service.iter().any(|s| s.name == "grpc.health.v1.Health"));
    }

    // The database goes away: health turns NOT_SERVING, and calls fail UNAVAILABLE, not INTERNAL.
    let server_url = pac_platform::testkit::server_url().await;
    let maintenance = sqlx::PgPool::connect(&server_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {} WITH (FORCE)", server.db.name))).execute(&maintenance).await.unwrap();
    let mut status = ServingStatus::Serving as i32;
    for _ in 0..50 {
        status = health.check(check("pac.records.v1.PatientRecords")).await.unwrap().into_inner().status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, ServingStatus::NotServing as i32);
    let error = server.client().register_patient(register(patient(50), "")).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_event_streams_and_stops_serving() {
    let server = TestServer::start().await;
    let mut stream = server.client().watch_events(pb::WatchEventsRequest::default()).await.unwrap().into_inner();
    server.shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = stream.next().await {} }).await;
    assert!(ended.is_ok(), "event stream still open after shutdown");
    let result = tokio::time::timeout(Duration::from_secs(10), server.task).await.expect("server stopped").unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn an_over_size_message_is_out_of_range_and_writes_nothing() {
    let server = TestServer::start().await;
    let mut input = patient(60);
    input.accessibility_needs = vec!["x".repeat(5 * 1024 * 1024)];
    let status = server.client().register_patient(register(input, "")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert_eq!(server.patient_count().await, 0);
    server.stop().await;
}

/// Whether the pool's connection is inside a transaction block (SAVEPOINT fails outside one).
async fn inside_transaction(pool: &sqlx::PgPool) -> bool {
    sqlx::raw_sql("SAVEPOINT probe").execute(pool).await.is_ok()
}

/// A dropped `begin()` can hand its connection back to the pool inside a transaction (sqlx 0.9),
/// where later autocommit writes would answer OK and never commit. Database work runs detached, so a
/// caller that goes away mid-`begin()` cannot cause that. The same loop calling `pool.begin()`
/// directly leaks within a few dozen iterations on this kind of machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_work_is_never_cut_short_inside_begin() {
    let db = pac_platform::testkit::TestDatabase::create().await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&db.admin_url).await.unwrap();
    for attempt in 0..2000u64 {
        let work = {
            let pool = pool.clone();
            pac_platform::db::detached(async move {
                let tx = pool.begin().await?;
                tx.rollback().await?;
                Ok(())
            })
        };
        // The caller gives up at a different moment each time, often while BEGIN is in flight.
        let _ = tokio::time::timeout(Duration::from_micros(attempt % 300), work).await;
        assert!(!inside_transaction(&pool).await, "attempt {attempt}: connection returned inside a transaction");
    }
}

/// Pooled connections are not pinged before every use, only after sitting idle: one the server ended
/// while it was idle is then found dead and replaced, rather than handed out to fail its query.
#[tokio::test]
async fn a_pooled_connection_ended_while_idle_is_replaced_not_handed_out() {
    use std::str::FromStr;
    let db = pac_platform::testkit::TestDatabase::create().await;
    let mut config = db.platform_config().db;
    (config.max_connections, config.min_connections) = (1, 0);
    let options = sqlx::postgres::PgConnectOptions::from_str(&db.admin_url).unwrap();
    let pool = pac_platform::db::connect(&config, pac_platform::db::ServiceSchema::new("public", "postgres"), options).await.unwrap();
    let backend = || async { sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&pool).await };
    let first = backend().await.unwrap();
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&db.admin_url).await.unwrap();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(first).fetch_one(&admin).await.unwrap();
    assert!(ended);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = backend().await.expect("the dead connection was replaced");
    assert_ne!(first, second);
    pool.close().await;
    admin.close().await;
}

/// The duplicate-candidate query is planned afresh on every call while the patients table is small
/// (a plan cached then would read whole indexes once it is not), and keeps a cached plan only once
/// the table holds `PlanCache::ROWS` records.
#[tokio::test]
async fn the_candidate_query_keeps_a_cached_plan_only_once_the_table_is_large() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let plans = pac_records::store::PlanCache::default();
    assert!(!plans.check(&admin).await.unwrap() && !plans.ready(), "an empty table");
    let rows = pac_records::store::PlanCache::ROWS;
    sqlx::query(
        "INSERT INTO records.patients (id, nhs_number_status, given_name, family_name, birth_date, sex, postcode, \
            postcode_outward, search_name, family_phonetic, organisation, created_at, updated_at) \
         SELECT gen_random_uuid(), 3, 'Ada', 'Seed' || i, date '1950-01-01' + i, 1, '', '', 'ada seed' || i, 'S3', '', now(), now() \
         FROM generate_series(1, $1::int - 1) AS i",
    )
    .bind(rows as i32)
    .execute(&admin)
    .await
    .unwrap();
    assert!(!plans.check(&admin).await.unwrap(), "one short of the size");
    server.client().register_patient(register(patient(1), "plan-cache-1")).await.unwrap();
    assert!(plans.check(&admin).await.unwrap() && plans.ready());
    admin.close().await;
}
