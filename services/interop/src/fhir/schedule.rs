//! Schedule: a clinic, its actor the clinic's Location, its service type the service code. Read
//! and search; the clinics a request's answers name, fetched once each.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use pac_proto::scheduling as sched;
use serde_json::{Value, json};

use super::outcome::Failure;
use super::rest::{checked_id, count, entry, first, parameters, query, searchset};
use super::{Api, json};
use crate::gateway::{Call, Gateway};

/// `Schedule` for a clinic: its actor the clinic's Location, its service type the service code.
pub fn schedule(clinic: &sched::Clinic) -> Value {
    json!({
        "resourceType": "Schedule",
        "id": clinic.id,
        "active": true,
        "serviceType": [{ "coding": [{ "system": super::SERVICE_SYSTEM, "code": clinic.service_code }], "text": clinic.specialty }],
        "actor": [{ "reference": format!("Location/{}", clinic.location_id), "display": clinic.name }],
        "comment": clinic.name,
    })
}

/// The clinics a request's slots and appointments belong to, each fetched once.
pub(super) struct Clinics<'a> {
    gateway: &'a Gateway,
    call: &'a Call,
    pub(super) known: HashMap<String, sched::Clinic>,
}

impl<'a> Clinics<'a> {
    pub(super) fn new(gateway: &'a Gateway, call: &'a Call) -> Self {
        Self { gateway, call, known: HashMap::new() }
    }

    /// Fetches the clinics of `ids` not yet known, all at once.
    pub(super) async fn load<'i>(&mut self, ids: impl IntoIterator<Item = &'i str>) -> Result<(), Failure> {
        let mut missing: Vec<&str> = ids.into_iter().filter(|id| !self.known.contains_key(*id)).collect();
        missing.sort_unstable();
        missing.dedup();
        let fetched = futures::future::try_join_all(missing.iter().map(|id| self.gateway.get_clinic(id, self.call))).await?;
        self.known.extend(missing.into_iter().map(str::to_string).zip(fetched));
        Ok(())
    }

    pub(super) async fn get(&mut self, id: &str) -> Result<&sched::Clinic, Failure> {
        if !self.known.contains_key(id) {
            let clinic = self.gateway.get_clinic(id, self.call).await?;
            self.known.insert(id.to_string(), clinic);
        }
        Ok(&self.known[id])
    }

    /// The FHIR Appointment, with its clinic's Location as a participant.
    pub(super) async fn appointment(&mut self, appointment: &sched::Appointment) -> Result<serde_json::Value, Failure> {
        Ok(super::appointment::appointment(appointment, self.get(&appointment.clinic_id).await?))
    }
}

pub(super) async fn read(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    checked_id(&id, "Schedule")?;
    let (gateway, call) = api.caller(&headers);
    let clinic = gateway.get_clinic(&id, &call).await?;
    Ok(json(StatusCode::OK, &schedule(&clinic)))
}

pub(super) async fn search(State(api): State<Api>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Result<Response, Failure> {
    let pairs = parameters(query(raw)?, &["actor", "service-type", "_count"], &[])?;
    let location_id = match first(&pairs, "actor") {
        None => String::new(),
        Some(actor) => actor
            .strip_prefix("Location/")
            .map(str::to_string)
            .ok_or_else(|| Failure::invalid("actor must be Location/<id>", Some("actor")))?,
    };
    let service_code = first(&pairs, "service-type").map(|s| s.rsplit('|').next().unwrap_or(s).to_string()).unwrap_or_default();
    let (gateway, call) = api.caller(&headers);
    let request =
        pac_proto::scheduling::ListClinicsRequest { service_code, location_id, page_size: count(&pairs)?, page_token: String::new() };
    let clinics = gateway.scheduling().list_clinics(gateway.request(request, &call)?).await?.into_inner().clinics;
    let entries = clinics.iter().map(|c| entry(schedule(c), "match")).collect();
    Ok(json(StatusCode::OK, &searchset(entries, None)))
}
