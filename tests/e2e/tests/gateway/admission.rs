//! The gateway in front of the three services, over real gRPC on loopback: who gets in, what each
//! role may call, that the caller's identity and permissions reach the services, and how a busy
//! caller, an overloaded gateway and a flood of calls without a token are met.

use std::time::Duration;

use pac_e2e::gateway::{start, start_with, token, wait_for_audit};
use pac_gateway::auth::{Identity, mint_development};
use pac_gateway::policy::Role;
use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY};
use pac_platform::testkit::{registration, with_token};
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::referrals as refs;
use pac_proto::referrals::referrals_client::ReferralsClient;
use tonic::Code;

#[tokio::test]
async fn only_valid_tokens_of_permitted_roles_get_through() {
    let p = start().await;
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    // Each refusal says why, as the services' errors do: ErrorInfo with a stable reason, in the
    // gateway's domain.
    let mut check = async |token: Option<&str>, expected: Code, reason: &str| {
        use tonic_types::StatusExt;
        let outcome = records.register_patient(with_token(registration("Gateway"), token)).await;
        assert_eq!(outcome.as_ref().err().map_or(Code::Ok, |s| s.code()), expected, "{outcome:?}");
        if let Err(status) = &outcome {
            let details = status.get_error_details();
            let info = details.error_info().unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
            assert_eq!((info.reason.as_str(), info.domain.as_str()), (reason, pac_gateway::ERROR_DOMAIN), "{status:?}");
        }
        outcome.ok().map(|r| r.into_inner().patient.unwrap())
    };
    check(None, Code::Unauthenticated, "TOKEN_MISSING").await;
    check(Some("not-a-jwt"), Code::Unauthenticated, "TOKEN_MALFORMED").await;
    let forged = mint_development(
        b"some other key",
        DEVELOPMENT_ISSUER,
        "pac-gateway",
        &Identity { subject: "x".into(), role: Role::Admin, organisations: vec![] },
        Duration::from_secs(60),
    );
    check(Some(&forged), Code::Unauthenticated, "TOKEN_SIGNATURE_INVALID").await;
    // Expired two minutes ago, past the gateway's leeway for clock skew.
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "sub": "x", "role": "coordinator", "orgs": ["RR8"], "iss": DEVELOPMENT_ISSUER, "aud": "pac-gateway",
        "exp": now - 120, "iat": now - 600,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(DEVELOPMENT_TOKEN_KEY.as_bytes());
    let expired = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap();
    check(Some(&expired), Code::Unauthenticated, "TOKEN_EXPIRED").await;
    check(Some(&token(Role::Auditor, Duration::from_secs(60))), Code::PermissionDenied, "ROLE_NOT_PERMITTED").await;
    check(Some(&token(Role::Clinician, Duration::from_secs(60))), Code::PermissionDenied, "ROLE_NOT_PERMITTED").await;
    let created = check(Some(&token(Role::Coordinator, Duration::from_secs(60))), Code::Ok, "").await.unwrap();

    // The service saw the caller the token named.
    let mut events = records
        .watch_events(with_token(
            records_pb::WatchEventsRequest { after_cursor: String::new() },
            Some(&token(Role::Integration, Duration::from_secs(60))),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    let envelope = first.envelope.unwrap();
    assert_eq!((envelope.aggregate_id.as_str(), envelope.actor.unwrap().subject.as_str()), (created.id.as_str(), "coordinator-1"));

    // An unknown method is not forwarded.
    let mut grpc = tonic::client::Grpc::new(p.gateway.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/pac.nothing.v1.Nothing/Call");
    let request = with_token((), Some(&token(Role::Admin, Duration::from_secs(60))));
    let status = grpc.unary::<(), (), _>(request, path, tonic_prost::ProstCodec::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    use tonic_types::StatusExt;
    assert_eq!(status.get_error_details().error_info().map(|i| i.reason.as_str()), Some("UNKNOWN_METHOD"));
}

/// Found by an attack: tokens living for weeks, issued in the future, naming callers with
/// invisible characters that reorder what an auditor reads, or too large to reach the token check
/// (HTTP 431, seen as UNKNOWN). Each is UNAUTHENTICATED for its reason, and audited.
#[tokio::test]
async fn tokens_too_long_lived_from_the_future_with_invisible_names_or_too_large_are_refused_and_audited() {
    let p = start().await;
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    let now = jsonwebtoken::get_current_timestamp();
    let key = jsonwebtoken::EncodingKey::from_secret(DEVELOPMENT_TOKEN_KEY.as_bytes());
    let sign = |sub: &str, orgs: &[&str], iat: u64, exp: u64| {
        let claims = serde_json::json!({
            "sub": sub, "role": "coordinator", "orgs": orgs, "iss": DEVELOPMENT_ISSUER, "aud": "pac-gateway", "exp": exp, "iat": iat,
        });
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
    };
    let padded = {
        let claims = serde_json::json!({
            "sub": "x".repeat(40_000), "role": "coordinator", "orgs": ["RR8"], "iss": DEVELOPMENT_ISSUER, "aud": "pac-gateway",
            "exp": now + 60, "iat": now,
        });
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
    };
    let cases = [
        (sign("c1", &["RR8"], now, now + 30 * 24 * 3600), "TOKEN_LIFETIME_TOO_LONG"),
        (sign("c1", &["RR8"], now + 3600, now + 7200), "TOKEN_ISSUED_IN_FUTURE"),
        (sign("evil\u{202E}rotanidrooc", &["RR8"], now, now + 60), "TOKEN_CLAIMS_INVALID"),
        (sign("c1", &["RR8\u{200B}"], now, now + 60), "TOKEN_CLAIMS_INVALID"),
        (padded, "TOKEN_TOO_LARGE"),
    ];
    for (token, reason) in &cases {
        use tonic_types::StatusExt;
        let status = records.register_patient(with_token(registration("Token"), Some(token))).await.unwrap_err();
        let info = status.get_error_details().error_info().map(|i| i.reason.clone());
        assert_eq!((status.code(), info.as_deref()), (Code::Unauthenticated, Some(*reason)), "{status:?}");
    }
    // A day's token, issued within the clock skew, is good.
    records.register_patient(with_token(registration("Token"), Some(&sign("c1", &["RR8"], now + 10, now + 24 * 3600)))).await.unwrap();
    let pool = p.admin_pool().await;
    let audited = wait_for_audit(&pool, cases.len() as i64).await;
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT reason FROM audit.events WHERE outcome = 'UNAUTHENTICATED'").fetch_all(&pool).await.unwrap();
    for (_, reason) in &cases {
        assert!(reasons.iter().any(|r| r == reason), "{reason} audited: {reasons:?} {audited:?}");
    }
}

#[tokio::test]
async fn permissions_travel_with_the_role() {
    let p = start().await;
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    let patient = records
        .register_patient(with_token(registration("Gateway"), Some(&token(Role::Coordinator, Duration::from_secs(60)))))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    let mut referrals = ReferralsClient::new(p.gateway.clone());
    let admin = token(Role::Admin, Duration::from_secs(60));
    let service = refs::Service { code: "KNEE".into(), name: "Knee".into(), target_wait_days: 42, ..Default::default() };
    referrals
        .create_service(with_token(refs::CreateServiceRequest { service: Some(service), request_id: String::new() }, Some(&admin)))
        .await
        .unwrap();
    let coordinator = token(Role::Coordinator, Duration::from_secs(60));
    let referral = referrals
        .create_referral(with_token(
            refs::CreateReferralRequest {
                patient_id: patient.id.clone(),
                service_code: "KNEE".into(),
                priority: refs::Priority::Routine as i32,
                referrer: Some(refs::Referrer { organisation: "B86001".into(), clinician: String::new() }),
                source: "GP".into(),
                reason: "Knee pain".into(),
                ..Default::default()
            },
            Some(&coordinator),
        ))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    let accept = |etag: &str| refs::TriageReferralRequest {
        referral_id: referral.id.clone(),
        etag: etag.into(),
        decision: Some(refs::triage_referral_request::Decision::Accept(refs::Accept {})),
        request_id: String::new(),
    };
    // A coordinator may call TriageReferral, but the service refuses them a triage decision.
    let refused = referrals.triage_referral(with_token(accept(&referral.etag), Some(&coordinator))).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // A caller context of the caller's own making is replaced by the gateway's.
    let forged_context =
        pac_platform::CallerVerifier::new(&pac_platform::config::Secret::new("forged key of thirty-two characters"), false).sign(
            &pac_platform::Caller {
                actor: pac_platform::Actor { subject: "x".into(), role: "clinician".into(), organisation: "RR8".into() },
                organisations: vec!["RR8".into()],
                permissions: vec!["referral.triage".into()],
            },
            Duration::from_secs(60),
        );
    let mut forged = with_token(accept(&referral.etag), Some(&coordinator));
    forged.metadata_mut().insert(pac_platform::caller::CALLER_HEADER, forged_context.parse().unwrap());
    assert_eq!(referrals.triage_referral(forged).await.unwrap_err().code(), Code::PermissionDenied);
    let accepted = referrals
        .triage_referral(with_token(accept(&referral.etag), Some(&token(Role::Clinician, Duration::from_secs(60)))))
        .await
        .unwrap();
    assert_eq!(accepted.into_inner().referral.unwrap().status, refs::ReferralStatus::AwaitingBooking as i32);
}

/// Every RPC × every kind of credential: refused with the right code before reaching a service, or
/// let through to it.
#[tokio::test]
async fn authorisation_matrix() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use pac_gateway::policy::POLICY;

    // Every bad token of every row, from one address: more than an address may fail by default.
    let p = start_with(|c| c.limits.failures_burst = 1e6).await;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |role: &str, aud: &str, exp: u64| serde_json::json!({"sub": "matrix", "role": role, "orgs": ["RR8"], "iss": DEVELOPMENT_ISSUER, "aud": aud, "exp": exp, "iat": now});
    let sign = |claims: serde_json::Value, key: &[u8]| {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(key)).unwrap()
    };
    let key = DEVELOPMENT_TOKEN_KEY.as_bytes();
    let none_token = {
        use base64::Engine;
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(serde_json::json!({"alg": "none", "typ": "JWT"})), b64(claims("admin", "pac-gateway", now + 300)))
    };
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("expired", Some(sign(claims("admin", "pac-gateway", now - 600), key))),
        ("bad signature", Some(sign(claims("admin", "pac-gateway", now + 300), b"not the key"))),
        ("alg none", Some(none_token)),
        ("wrong audience", Some(sign(claims("admin", "someone-else", now + 300), key))),
    ];
    let mut grpc = tonic::client::Grpc::new(p.gateway.clone());
    let mut call = async |path: &str, token: Option<&str>| {
        grpc.ready().await.unwrap();
        let mut request = with_token((), token);
        request.set_timeout(Duration::from_millis(1500));
        let path = http::uri::PathAndQuery::try_from(path).unwrap();
        // A stream that was let through stays open: still open after 2 s counts as through.
        match tokio::time::timeout(Duration::from_secs(2), grpc.unary::<(), (), _>(request, path, tonic_prost::ProstCodec::default())).await
        {
            Err(_still_open) => Code::Ok,
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(status)) => status.code(),
        }
    };
    let mut denials = std::collections::BTreeMap::new();
    for (path, _, allowed) in POLICY {
        for (what, token) in &bad {
            assert_eq!(call(path, token.as_deref()).await, Code::Unauthenticated, "{path} with {what}");
        }
        // Refused before the caller is known: counted together, by address and reason.
        *denials.entry((pac_gateway::refusals::ACTION.to_string(), "UNAUTHENTICATED".to_string())).or_insert(0) += bad.len() as i64;
        for role in Role::ALL {
            let token = sign(claims(role.name(), "pac-gateway", now + 300), key);
            let code = call(path, Some(&token)).await;
            if allowed.contains(&role) {
                // Through to the service, which judges the (empty) request itself.
                assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented)
                        || path.ends_with("/TriageReferral"),
                    "{path} as {}: {code:?}",
                    role.name()
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{path} as {}", role.name());
                *denials.entry((path.to_string(), "PERMISSION_DENIED".to_string())).or_insert(0) += 1;
            }
        }
    }
    // Each refusal is in the audit trail, once, with its reason; the chain verifies.
    let pool = p.admin_pool().await;
    let recorded = wait_for_audit(&pool, denials.values().sum()).await;
    assert_eq!(recorded, denials);
    let verification = pac_gateway::audit::verify(&pool, &[pac_gateway::audit::AuditKey::development()]).await.unwrap();
    assert!(verification.problems.is_empty(), "{:?}", verification.problems);
}

#[tokio::test]
async fn a_busy_caller_is_slowed_and_an_overloaded_gateway_sheds() {
    use tonic_types::StatusExt;
    let p = start_with(|c| {
        c.limits = pac_gateway::proxy::Limits { max_in_flight: 64, per_second: 1.0, burst: 2.0, ..pac_gateway::proxy::DEFAULT_LIMITS }
    })
    .await;
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    let search =
        |token: &str| with_token(records_pb::SearchPatientsRequest { phone: "07700 900001".into(), ..Default::default() }, Some(token));
    let busy = token(Role::Coordinator, Duration::from_secs(60));
    records.search_patients(search(&busy)).await.unwrap();
    records.search_patients(search(&busy)).await.unwrap();
    let limited = records.search_patients(search(&busy)).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let info = limited.get_error_details().error_info().cloned().expect("error info");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("RATE_LIMITED", pac_gateway::ERROR_DOMAIN));
    let wait = limited.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("retry info");
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
    // Another caller is not held back.
    records.search_patients(search(&token(Role::Clinician, Duration::from_secs(60)))).await.unwrap();

    let shedding = start_with(|c| {
        c.limits = pac_gateway::proxy::Limits { max_in_flight: 0, per_second: 100.0, burst: 100.0, ..pac_gateway::proxy::DEFAULT_LIMITS }
    })
    .await;
    let mut records = PatientRecordsClient::new(shedding.gateway.clone());
    let shed = records.search_patients(search(&busy)).await.unwrap_err();
    assert_eq!(shed.code(), Code::Unavailable);
    assert_eq!(
        shed.get_error_details().error_info().map(|i| (i.reason.clone(), i.domain.clone())),
        Some(("OVERLOADED".into(), pac_gateway::ERROR_DOMAIN.into()))
    );
    assert!(shed.get_error_details().retry_info().is_some());
}

/// Found by an attack: 10 s of calls without a token wrote 229,985 permanent audit rows. Calls
/// refused before their caller is known are counted into one record per address, reason and
/// interval, every refusal counted; an address that keeps failing is slowed, while callers whose
/// tokens were already verified carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_calls_without_a_token_writes_a_few_counted_records_and_is_slowed() {
    let p = start_with(|c| c.refusals_every = Duration::from_millis(500)).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    // A caller already verified before the flood.
    let id =
        records.register_patient(with_token(registration("Flood"), Some(&coordinator))).await.unwrap().into_inner().patient.unwrap().id;
    let read = |token: Option<&str>| with_token(records_pb::GetPatientRequest { id: id.clone() }, token);

    let started = std::time::Instant::now();
    let mut flood = Vec::new();
    for task in 0..16 {
        let channel = p.gateway.clone();
        let id = id.clone();
        flood.push(tokio::spawn(async move {
            let mut records = PatientRecordsClient::new(channel);
            let mut codes = std::collections::BTreeMap::<String, u64>::new();
            for n in 0..250 {
                let token = if (task + n) % 2 == 0 { None } else { Some("not-a-jwt") };
                let code = match records.get_patient(with_token(records_pb::GetPatientRequest { id: id.clone() }, token)).await {
                    Ok(_) => "OK".to_string(),
                    Err(status) => format!("{:?}", status.code()),
                };
                *codes.entry(code).or_default() += 1;
            }
            codes
        }));
    }
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    for task in flood {
        for (code, n) in task.await.unwrap() {
            *codes.entry(code).or_default() += n;
        }
    }
    // The verified caller was not held back.
    records.get_patient(read(Some(&coordinator))).await.unwrap();
    let took = started.elapsed();
    assert_eq!(codes.values().sum::<u64>(), 4_000);
    assert!(codes.get("ResourceExhausted").is_some_and(|n| *n > 1_000), "the address was slowed: {codes:?}");
    assert!(codes.get("Unauthenticated").is_some_and(|n| *n >= 200), "{codes:?}");

    let pool = p.admin_pool().await;
    let counted = wait_for_audit(&pool, 4_000).await;
    let action = pac_gateway::refusals::ACTION.to_string();
    let total: i64 = counted.iter().filter(|((a, _), _)| *a == action).map(|(_, n)| n).sum();
    assert_eq!(total, 4_000, "every refusal counted: {counted:?}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE action = $1").bind(&action).fetch_one(&pool).await.unwrap();
    // One per reason (missing, malformed, rate limited) and half-second interval, at most.
    let intervals = took.as_millis() as i64 / 500 + 2;
    assert!(rows <= 3 * intervals, "{rows} records for 4,000 refusals over {took:?}");
    eprintln!("4,000 calls without a valid token in {took:?}: {codes:?}; {rows} audit records counting them");
}
