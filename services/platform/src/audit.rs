//! What a service tells the gateway's audit trail about a call: which patients it touched. A
//! handler adds their ids to its response (`with_patients`); the gateway records them with the call
//! and removes the header before the answer reaches the caller.

use tonic::Response;
use tonic::metadata::MetadataValue;

/// Response metadata naming the patients (ids, comma-separated) a call read or changed.
pub const PATIENTS_HEADER: &str = "x-pac-audit-patients";

/// Marks `response` as touching `patients` (ids; empty and repeated ids are dropped).
pub fn with_patients<T, I, S>(mut response: Response<T>, patients: I) -> Response<T>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut ids: Vec<String> = Vec::new();
    for id in patients {
        let id = id.as_ref();
        if !id.is_empty() && !ids.iter().any(|known| known == id) {
            ids.push(id.to_string());
        }
    }
    if !ids.is_empty()
        && let Ok(value) = MetadataValue::try_from(ids.join(","))
    {
        response.metadata_mut().insert(PATIENTS_HEADER, value);
    }
    response
}

/// The patient ids a response header names.
pub fn patients_in(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|id| !id.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_travel_once_each() {
        let response = with_patients(Response::new(()), ["a", "", "b", "a"]);
        let value = response.metadata().get(PATIENTS_HEADER).unwrap().to_str().unwrap();
        assert_eq!(value, "a,b");
        assert_eq!(patients_in(value), vec!["a", "b"]);
        assert!(with_patients(Response::new(()), Vec::<String>::new()).metadata().get(PATIENTS_HEADER).is_none());
    }
}
