//! What every resource's interactions share: search parameters, Bundles and their next links, ids
//! and references, the headers of versioned and conditional writes (`ETag`, `If-Match`,
//! `If-None-Exist`), JSON Patch.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;

use super::outcome::Failure;

pub(super) fn checked_id(id: &str, what: &str) -> Result<(), Failure> {
    uuid::Uuid::parse_str(id).map(drop).map_err(|_| Failure::invalid(format!("the id is not a {what} id"), Some(&format!("{what}.id"))))
}

/// The query's parameters, each once unless `repeatable`; any not in `known` is refused.
pub(super) fn parameters(pairs: Vec<(String, String)>, known: &[&str], repeatable: &[&str]) -> Result<Vec<(String, String)>, Failure> {
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            return Err(Failure::invalid(format!("search parameter {name} is not supported here"), Some(name)));
        }
        if !repeatable.contains(&name.as_str()) && pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(Failure::invalid(format!("search parameter {name} is given twice"), Some(name)));
        }
    }
    Ok(pairs)
}

pub(super) fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

pub(super) fn count(pairs: &[(String, String)]) -> Result<i32, Failure> {
    match first(pairs, "_count") {
        None => Ok(20),
        Some(n) => {
            n.parse().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| Failure::invalid("_count must be 1 to 100", Some("_count")))
        }
    }
}

pub(super) fn searchset(entries: Vec<serde_json::Value>, next: Option<String>) -> serde_json::Value {
    let mut bundle = serde_json::json!({ "resourceType": "Bundle", "type": "searchset", "entry": entries });
    if let Some(next) = next {
        bundle["link"] = serde_json::json!([{ "relation": "next", "url": next }]);
    }
    bundle
}

pub(super) fn entry(resource: serde_json::Value, mode: &str) -> serde_json::Value {
    let url = format!("{}/{}", resource["resourceType"].as_str().unwrap_or_default(), resource["id"].as_str().unwrap_or_default());
    serde_json::json!({ "fullUrl": url, "resource": resource, "search": { "mode": mode } })
}

/// `value` percent-encoded for a query string.
pub(super) fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The next page of a search: the same parameters with the service's page token.
pub(super) fn next_link(kind: &str, pairs: &[(String, String)], page_token: &str) -> Option<String> {
    if page_token.is_empty() {
        return None;
    }
    let mut query: Vec<(&str, &str)> = pairs.iter().filter(|(n, _)| n != "_page_token").map(|(n, v)| (n.as_str(), v.as_str())).collect();
    query.push(("_page_token", page_token));
    let encoded = query.iter().map(|(n, v)| format!("{n}={}", percent(v))).collect::<Vec<_>>().join("&");
    Some(format!("{kind}?{encoded}"))
}

/// The id of `Kind/<id>` (or of a bare id, as a search parameter may be), when it is one.
pub(super) fn reference_id(reference: &str, kind: &str) -> Option<String> {
    typed_id(reference, kind).or_else(|| uuid::Uuid::parse_str(reference).ok().map(|_| reference.to_string()))
}

/// The id of `Kind/<id>`, when it is one.
pub(super) fn typed_id(reference: &str, kind: &str) -> Option<String> {
    let id = reference.strip_prefix(kind)?.strip_prefix('/')?;
    uuid::Uuid::parse_str(id).ok().map(|_| id.to_string())
}

pub(super) fn date(text: &str) -> Option<pac_proto::common::Date> {
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    use chrono::Datelike;
    Some(pac_proto::common::Date { year: day.year(), month: day.month() as i32, day: day.day() as i32 })
}

/// An instant for `start`: a date (midnight UTC) or a date-time with its offset.
pub(super) fn instant_param(text: &str) -> Option<prost_types::Timestamp> {
    use chrono::TimeZone;
    let at = match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(at) => at.with_timezone(&chrono::Utc),
        // A day starts at midnight in the UK, where the clinics are.
        Err(_) => {
            let midnight = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0)?;
            chrono_tz::Europe::London.from_local_datetime(&midnight).earliest()?.with_timezone(&chrono::Utc)
        }
    };
    Some(pac_platform::convert::timestamp(at))
}

/// A search parameter's value split into its prefix (`ge`, `lt`, …) and the rest; `eq` when it
/// has none.
pub(super) fn prefixed(value: &str) -> (&str, &str) {
    ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
        .into_iter()
        .find_map(|prefix| value.strip_prefix(prefix).map(|rest| (prefix, rest)))
        .unwrap_or(("eq", value))
}

/// The query string's parameters, in order; an undecodable one is a 400 like any other mistake.
pub(super) fn query(raw: Option<String>) -> Result<Vec<(String, String)>, Failure> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or_default())
        .map_err(|e| Failure::invalid(format!("the query string does not decode: {e}"), None))
}

pub(super) fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("W/\"{etag}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

pub(super) fn with_location(mut response: Response, location: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The version `If-Match` names (`W/"<etag>"`), which every change needs.
pub(super) fn if_match(headers: &HeaderMap) -> Result<String, Failure> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|v| !v.is_empty() && v != "*")
        .ok_or_else(|| Failure::invalid("If-Match is required: the ETag of the version you read, e.g. W/\"3\" (not *)", Some("If-Match")))
}

/// The resource an update asks for: a `PUT`'s body as sent, or a `PATCH` applied to `current` (as
/// read, at version `current_etag`), which must be the version `If-Match` named (`etag`).
pub(super) fn updated(
    method: &Method,
    etag: &str,
    current_etag: &str,
    current: impl FnOnce() -> serde_json::Value,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, Failure> {
    // A change made to another version than the one read is refused before anything is compared.
    if current_etag != etag {
        return Err(Failure::stale());
    }
    if method != Method::PATCH {
        return Ok(body.to_vec());
    }
    Ok(serde_json::to_vec(&patched(current(), headers, body)?).unwrap_or_default())
}

/// `current` with the JSON Patch (RFC 6902) in `body` applied; PATCH takes no other kind.
fn patched(current: serde_json::Value, headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Value, Failure> {
    let json_patch = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().starts_with("application/json-patch+json"));
    if !json_patch {
        return Err(Failure::unsupported_media("PATCH takes a JSON Patch: Content-Type application/json-patch+json"));
    }
    let patch: json_patch::Patch =
        serde_json::from_slice(body).map_err(|e| Failure::invalid(format!("the body is not a JSON Patch: {e}"), None))?;
    let mut document = current;
    json_patch::patch(&mut document, &patch).map_err(|e| Failure::unprocessable(format!("the patch does not apply: {e}")))?;
    Ok(document)
}

/// The search of an `If-None-Exist` header (a conditional create), when there is one; only the
/// parameters in `known`, each once.
pub(super) fn condition(headers: &HeaderMap, known: &[&str]) -> Result<Option<Vec<(String, String)>>, Failure> {
    let Some(value) = headers.get("if-none-exist") else { return Ok(None) };
    let refused = || Failure::invalid(format!("If-None-Exist is a search by {}", known.join(", ")), Some("If-None-Exist"));
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(value.to_str().map_err(|_| refused())?.trim_start_matches('?')).map_err(|_| refused())?;
    if pairs.is_empty() {
        return Err(refused());
    }
    parameters(pairs, known, &[]).map(Some).map_err(|_| refused())
}
