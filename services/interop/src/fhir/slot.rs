//! Slot: `free` while it has room, else `busy`. Search by schedule or service type, start window,
//! `_include=Slot:schedule`, next-page links.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use pac_proto::scheduling as sched;
use serde_json::{Value, json};

use super::instant;
use super::outcome::Failure;
use super::rest::{count, entry, first, instant_param, next_link, parameters, prefixed, query, reference_id, searchset};
use super::schedule::Clinics;
use super::{Api, json};

/// `Slot`: `free` while it has room, else `busy`.
pub fn slot(slot: &sched::Slot, service_code: &str) -> Value {
    let mut value = json!({
        "resourceType": "Slot",
        "id": slot.id,
        "schedule": { "reference": format!("Schedule/{}", slot.clinic_id) },
        "status": if slot.occupied < slot.capacity { "free" } else { "busy" },
        "start": slot.start_time.as_ref().and_then(instant),
        "end": slot.end_time.as_ref().and_then(instant),
    });
    if !service_code.is_empty() {
        value["serviceType"] = json!([{ "coding": [{ "system": super::SERVICE_SYSTEM, "code": service_code }] }]);
    }
    value
}

pub(super) async fn search(State(api): State<Api>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Result<Response, Failure> {
    let pairs = parameters(query(raw)?, &["schedule", "service-type", "start", "status", "_count", "_include", "_page_token"], &["start"])?;
    if first(&pairs, "status").is_some_and(|s| s != "free") {
        return Err(Failure::invalid("status: only free slots are searched (status=free)", Some("status")));
    }
    if first(&pairs, "_include").is_some_and(|i| i != "Slot:schedule") {
        return Err(Failure::invalid("_include: only Slot:schedule", Some("_include")));
    }
    let target = match (first(&pairs, "schedule"), first(&pairs, "service-type")) {
        (Some(schedule), None) => {
            let id =
                reference_id(schedule, "Schedule").ok_or_else(|| Failure::invalid("schedule must be Schedule/<id>", Some("schedule")))?;
            sched::search_slots_request::Target::ClinicId(id)
        }
        (None, Some(service)) => {
            sched::search_slots_request::Target::ServiceCode(service.rsplit('|').next().unwrap_or(service).to_string())
        }
        _ => return Err(Failure::invalid("search slots by schedule or by service-type (one of them)", None)),
    };
    let (mut start_time, mut end_time) = (None, None);
    for (_, value) in pairs.iter().filter(|(n, _)| n == "start") {
        let (prefix, rest) = prefixed(value);
        let at = instant_param(rest)
            .ok_or_else(|| Failure::invalid("start must be ge<date or date-time> or lt<date or date-time>", Some("start")))?;
        match prefix {
            "ge" | "gt" => start_time = Some(at),
            "lt" | "le" => end_time = Some(at),
            _ => return Err(Failure::invalid("start takes the prefixes ge and lt", Some("start"))),
        }
    }
    let page_token = first(&pairs, "_page_token").unwrap_or_default().to_string();
    let request = sched::SearchSlotsRequest {
        target: Some(target),
        start_time,
        end_time,
        location_id: String::new(),
        page_size: count(&pairs)?,
        page_token,
    };
    let (gateway, call) = api.caller(&headers);
    let found = gateway.scheduling().search_slots(gateway.request(request, &call)?).await?.into_inner();
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let mut clinics = Clinics::new(&gateway, &call);
    clinics.load(found.slots.iter().map(|s| s.clinic_id.as_str())).await?;
    for listed in &found.slots {
        entries.push(entry(slot(listed, &clinics.get(&listed.clinic_id).await?.service_code), "match"));
    }
    if first(&pairs, "_include") == Some("Slot:schedule") {
        entries.extend(clinics.known.values().map(|c| entry(super::schedule::schedule(c), "include")));
    }
    Ok(json(StatusCode::OK, &searchset(entries, next_link("Slot", &pairs, &found.next_page_token))))
}
