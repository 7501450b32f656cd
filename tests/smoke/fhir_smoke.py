"""The FHIR R4 API of a running platform with an independent FHIR library: every resource it
returns is validated with `fhir.resources` (its R4B models, close to R4 for what is served), and
the UK Core NHS number system and verification-status extension URLs are checked literally. Run
after `hl7_smoke.py`, whose PAS registered the patients searched for here.

    PAC_TOKEN=$(pac token) python3 tests/smoke/fhir_smoke.py [fhir base URL]
    # default http://127.0.0.1:8080/fhir/R4
"""

import json
import os
import random
import sys
import urllib.error
import urllib.request

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.schedule import Schedule
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.slot import Slot

NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
VERIFICATION = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"


def get(base: str, path: str, token: str | None, method: str = "GET", body: dict | None = None,
        headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Accept": "application/fhir+json", **(headers or {})})
    if data is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/fhir+json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/fhir+json"), response.headers
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def nhs_number() -> str:
    """A random NHS number in the 999 test range with a valid check digit (modulus 11): a number
    drawn from all ten digits may start where no NHS number is issued, and be refused."""
    while True:
        digits = [9, 9, 9] + [random.randint(0, 9) for _ in range(6)]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11
        if check == 11:
            check = 0
        if check != 10:
            return "".join(map(str, digits)) + str(check)


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/fhir/R4"
    token = os.environ["PAC_TOKEN"]

    status, body = get(base, "/metadata", None)
    assert status == 200, body
    CapabilityStatement.model_validate(body)

    # The patients python-hl7 registered as the PAS (hl7_smoke.py): found by family name.
    status, body = get(base, "/Patient?family=Bhriain&_count=50", token)
    assert status == 200, body
    bundle = Bundle.model_validate(body)
    patients = [entry.resource for entry in bundle.entry or []]
    assert patients, "the hl7 smoke's patients are found"
    checked = 0
    for patient in patients:
        status, read = get(base, f"/Patient/{patient.id}", token)
        assert status == 200, read
        Patient.model_validate(read)
        checked += 1
        for identifier in read.get("identifier", []):
            if identifier["system"] == NHS_SYSTEM:
                assert identifier["extension"][0]["url"] == VERIFICATION, identifier
                status, found = get(base, f"/Patient?identifier={NHS_SYSTEM}|{identifier['value']}", token)
                assert status == 200 and found["entry"][0]["resource"]["id"] == read["id"], found
                Bundle.model_validate(found)

    for path, token_used, expected in [("/Patient?name=smith", token, 400), (f"/Patient/{patients[0].id}", None, 401)]:
        status, outcome = get(base, path, token_used)
        assert status == expected, (path, status, outcome)
        OperationOutcome.model_validate(outcome)
    # A schedule, its free slots, a booking and its cancellation.
    status, body = get(base, "/Schedule", token)
    assert status == 200, body
    schedules = Bundle.model_validate(body).entry or []
    assert schedules, "the grpcio smoke's clinics are schedules"
    for entry in schedules:
        Schedule.model_validate(entry.resource.model_dump(mode="json"))
    booked = None
    for entry in schedules:
        status, body = get(base, f"/Slot?schedule=Schedule/{entry.resource.id}&status=free&_include=Slot:schedule&_count=5", token)
        assert status == 200, body
        Bundle.model_validate(body)
        slots = [e["resource"] for e in body.get("entry", []) if e["resource"]["resourceType"] == "Slot"]
        for slot in slots:
            Slot.model_validate(slot)
        if slots and booked is None:
            appointment = {"resourceType": "Appointment", "status": "booked", "slot": [{"reference": f"Slot/{slots[0]['id']}"}],
                           "participant": [{"actor": {"reference": f"Patient/{patients[0].id}"}, "status": "accepted"}]}
            status, booked = get(base, "/Appointment", token, "POST", appointment)
            assert status == 201, booked
    assert booked is not None, "a free slot was found and booked"
    Appointment.model_validate(booked)
    status, read = get(base, f"/Appointment/{booked['id']}", token)
    assert status == 200, read
    Appointment.model_validate(read)
    read["status"] = "cancelled"
    read["cancelationReason"] = {"coding": [{"system": "urn:pac:cancellation-reason", "code": "PATIENT_UNWELL"},
                                            {"system": "urn:pac:cancelled-by", "code": "patient"}]}
    status, cancelled = get(base, f"/Appointment/{booked['id']}", token, "PUT", read, {"If-Match": f"W/\"{read['meta']['versionId']}\""})
    assert status == 200 and cancelled["status"] == "cancelled", cancelled
    Appointment.model_validate(cancelled)

    # The patient's appointments, and the organisation's referrals as ServiceRequests.
    status, body = get(base, f"/Appointment?patient=Patient/{patients[0].id}", token)
    assert status == 200 and body.get("entry"), body
    for entry in Bundle.model_validate(body).entry:
        Appointment.model_validate(entry.resource.model_dump(mode="json"))
    status, requests = get(base, "/ServiceRequest?status=active,on-hold,revoked,completed&_count=20", token)
    assert status == 200 and requests.get("entry"), ("the grpcio smoke's referrals", requests)
    for entry in requests["entry"]:
        ServiceRequest.model_validate(entry["resource"])
        status, read = get(base, f"/ServiceRequest/{entry['resource']['id']}", token)
        assert status == 200, read
        ServiceRequest.model_validate(read)
    Bundle.model_validate(requests)

    # A new patient (If-None-Exist on its NHS number), a new phone number (PUT), a new postcode
    # (JSON Patch), each with If-Match.
    number = nhs_number()
    new = {"resourceType": "Patient",
           "identifier": [{"system": NHS_SYSTEM, "value": number}],
           "name": [{"use": "official", "family": "Fhirsmoke", "given": ["Niamh"]}],
           "gender": "female", "birthDate": "1990-04-05",
           "address": [{"use": "home", "line": ["1 Infirmary Street"], "city": "Leeds", "postalCode": "LS1 2JP"}],
           "telecom": [{"system": "phone", "value": "07700900111"}]}
    Patient.model_validate(new)
    status, created = get(base, "/Patient", token, "POST", new, {"If-None-Exist": f"identifier={NHS_SYSTEM}|{number}"})
    assert status == 201, created
    Patient.model_validate(created)
    status, again = get(base, "/Patient", token, "POST", new, {"If-None-Exist": f"identifier={NHS_SYSTEM}|{number}"})
    assert status == 200 and again["id"] == created["id"], again
    created["telecom"] = [{"system": "phone", "value": "07700900222"}]
    status, updated = get(base, f"/Patient/{created['id']}", token, "PUT", created,
                          {"If-Match": f"W/\"{created['meta']['versionId']}\""})
    assert status == 200 and updated["telecom"][0]["value"] == "+447700900222", updated
    Patient.model_validate(updated)
    patch = [{"op": "replace", "path": "/address/0/postalCode", "value": "LS2 9JT"}]
    status, patched = get(base, f"/Patient/{created['id']}", token, "PATCH", patch,
                          {"If-Match": f"W/\"{updated['meta']['versionId']}\"", "Content-Type": "application/json-patch+json"})
    assert status == 200 and patched["address"][0]["postalCode"] == "LS2 9JT", patched
    Patient.model_validate(patched)
    print(f"fhir smoke: capability statement, {checked} patients, schedules, slots, a booking and its cancellation, "
          f"appointments, {len(requests['entry'])} service requests, a patient created and changed twice, "
          "searches and refusals valid in fhir.resources (R4B)")


if __name__ == "__main__":
    main()
