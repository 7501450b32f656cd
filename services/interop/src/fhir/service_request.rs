//! ServiceRequest from the referrals service's referral: its status and priority mapped, the
//! patient, the referrer (an ODS code) as requester, the receiving service as performer.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use pac_proto::referrals as refs;
use serde_json::{Value, json};

use super::instant;
use super::outcome::Failure;
use super::patient::ODS_SYSTEM;
use super::rest::{checked_id, count, entry, first, next_link, parameters, query, searchset, with_etag};
use super::{Api, json};

/// The FHIR status of a referral status: awaiting triage, awaiting booking and booked are `active`;
/// awaiting information `on-hold`; rejected, returned, redirected and cancelled `revoked`;
/// completed `completed`.
pub fn status(status: refs::ReferralStatus) -> &'static str {
    use refs::ReferralStatus as S;
    match status {
        S::AwaitingTriage | S::AwaitingBooking | S::Booked => "active",
        S::AwaitingInformation => "on-hold",
        S::Rejected | S::Returned | S::Redirected | S::Cancelled => "revoked",
        S::Completed => "completed",
        S::Unspecified => "unknown",
    }
}

/// The referral statuses a FHIR `status` search token stands for.
pub fn statuses(token: &str) -> Option<&'static [refs::ReferralStatus]> {
    use refs::ReferralStatus as S;
    Some(match token {
        "active" => &[S::AwaitingTriage, S::AwaitingBooking, S::Booked],
        "on-hold" => &[S::AwaitingInformation],
        "revoked" => &[S::Rejected, S::Returned, S::Redirected, S::Cancelled],
        "completed" => &[S::Completed],
        _ => return None,
    })
}

/// The FHIR priority: routine, urgent, and `asap` for a two-week-wait (suspected cancer) referral.
fn priority(priority: refs::Priority) -> &'static str {
    match priority {
        refs::Priority::Urgent => "urgent",
        refs::Priority::TwoWeekWait => "asap",
        refs::Priority::Routine | refs::Priority::Unspecified => "routine",
    }
}

/// `ServiceRequest` for `referral`.
pub fn service_request(referral: &refs::Referral) -> Value {
    let referrer = referral.referrer.clone().unwrap_or_default();
    let mut value = json!({
        "resourceType": "ServiceRequest",
        "id": referral.id,
        "meta": { "versionId": referral.etag, "lastUpdated": referral.update_time.as_ref().and_then(instant) },
        "status": status(referral.status()),
        "intent": "order",
        "priority": priority(referral.priority()),
        "subject": { "reference": format!("Patient/{}", referral.patient_id) },
        "authoredOn": referral.receive_time.as_ref().and_then(instant),
        "requester": {
            "identifier": { "system": ODS_SYSTEM, "value": referrer.organisation },
            "display": referrer.clinician,
        },
        "performer": [{
            "identifier": { "system": super::SERVICE_SYSTEM, "value": referral.service_code },
            "display": referral.service_code,
        }],
        "reasonCode": [{ "text": referral.reason }],
    });
    if !referral.redirected_from.is_empty() {
        value["replaces"] = json!([{ "reference": format!("ServiceRequest/{}", referral.redirected_from) }]);
    }
    if referrer.organisation.is_empty() {
        value.as_object_mut().map(|v| v.remove("requester"));
    }
    value
}

/// A ServiceRequest search: by `patient`, `status` (comma-separated tokens) or both.
pub fn list_request(
    patient: Option<&str>,
    status: Option<&str>,
    page_size: i32,
    page_token: String,
) -> Result<refs::ListReferralsRequest, Failure> {
    let patient_id = match patient {
        None => String::new(),
        Some(patient) => super::rest::reference_id(patient, "Patient")
            .ok_or_else(|| Failure::invalid("patient must be Patient/<id>", Some("patient")))?,
    };
    let mut wanted = Vec::new();
    for token in status.into_iter().flat_map(|s| s.split(',')) {
        let found = statuses(token.trim())
            .ok_or_else(|| Failure::invalid(format!("status {token} is not one of active, on-hold, revoked, completed"), Some("status")))?;
        wanted.extend(found.iter().map(|s| *s as i32));
    }
    if patient_id.is_empty() && wanted.is_empty() {
        return Err(Failure::invalid("search ServiceRequests by patient, status or both", None));
    }
    Ok(refs::ListReferralsRequest { statuses: wanted, patient_id, page_size, page_token, ..Default::default() })
}

// The interactions.

pub(super) async fn read(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    checked_id(&id, "ServiceRequest")?;
    let (gateway, call) = api.caller(&headers);
    let request = gateway.request(refs::GetReferralRequest { id }, &call)?;
    let referral = gateway.referrals().get_referral(request).await?.into_inner().referral.unwrap_or_default();
    Ok(with_etag(json(StatusCode::OK, &service_request(&referral)), &referral.etag))
}

pub(super) async fn search(State(api): State<Api>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Result<Response, Failure> {
    let pairs = parameters(query(raw)?, &["patient", "status", "_count", "_page_token"], &[])?;
    let page_token = first(&pairs, "_page_token").unwrap_or_default().to_string();
    let request = list_request(first(&pairs, "patient"), first(&pairs, "status"), count(&pairs)?, page_token)?;
    let (gateway, call) = api.caller(&headers);
    let found = gateway.referrals().list_referrals(gateway.request(request, &call)?).await?.into_inner();
    let entries = found.referrals.iter().map(|r| entry(service_request(r), "match")).collect();
    Ok(json(StatusCode::OK, &searchset(entries, next_link("ServiceRequest", &pairs, &found.next_page_token))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_both_ways() {
        use refs::ReferralStatus as S;
        for s in [
            S::AwaitingTriage,
            S::AwaitingBooking,
            S::Booked,
            S::AwaitingInformation,
            S::Rejected,
            S::Returned,
            S::Redirected,
            S::Cancelled,
            S::Completed,
        ] {
            assert!(statuses(status(s)).unwrap().contains(&s), "{s:?}");
        }
        assert_eq!(status(S::AwaitingInformation), "on-hold");
        assert!(statuses("draft").is_none());
    }

    #[test]
    fn a_redirected_urgent_referral() {
        let referral = refs::Referral {
            id: "r2".into(),
            patient_id: "p1".into(),
            service_code: "KNEE".into(),
            priority: refs::Priority::TwoWeekWait as i32,
            status: refs::ReferralStatus::Redirected as i32,
            redirected_from: "r1".into(),
            ..Default::default()
        };
        let json = service_request(&referral);
        assert_eq!((json["status"].as_str(), json["priority"].as_str()), (Some("revoked"), Some("asap")));
        assert_eq!(json["replaces"][0]["reference"], "ServiceRequest/r1");
        assert!(json.get("requester").is_none());
        assert_eq!(json["performer"][0]["identifier"]["value"], "KNEE");
    }
}
