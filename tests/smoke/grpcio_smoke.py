"""An independent client (Python grpcio, stubs generated from proto/) against a running platform:
health, reflection (v1alpha, the only version grpcio's client speaks), then register, find and update
a patient, and check the error details of a bad request.

then set up a clinic and book that patient into a slot (hold, then confirm) with the scheduling service,
then refer the patient to a service, accept the referral, book it, and see the referral booked.

then, through the gateway with a bearer token (PAC_TOKEN, from `pac token`): health and reflection,
refuse a call without one, book a slot, ask for the appointment's plain-language guide, and read the
rich error details of a bad request.

    PAC_TOKEN=$(pac token) python3 tests/smoke/grpcio_smoke.py [records] [scheduling] [referrals] [gateway]
    # defaults 127.0.0.1:50051 127.0.0.1:50052 127.0.0.1:50053 127.0.0.1:50050
"""

import pathlib
import sys
import tempfile
import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def generate_stubs() -> None:
    out = tempfile.mkdtemp(prefix="pac-stubs-")
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    protos = [str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "pac").rglob("*.proto")]
    code = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if code != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    generate_stubs()
    from pac.common.v1 import common_pb2
    from pac.records.v1 import records_pb2, records_pb2_grpc
    from google.protobuf import field_mask_pb2
    from google.rpc import status_pb2, error_details_pb2  # noqa: F401  (installed with grpcio-status)

    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)

    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="pac.records.v1.PatientRecords"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING, status

    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "pac.records.v1.PatientRecords" in services, services

    records = records_pb2_grpc.PatientRecordsStub(channel)
    suffix = uuid.uuid4().hex[:6]
    family = "Smoketest" + "".join(chr(ord("a") + int(c, 16) % 26) for c in suffix)
    patient = records_pb2.Patient(
        given_name="Grace",
        family_name=family,
        birth_date=common_pb2.Date(year=1985, month=6, day=21),
        sex=records_pb2.SEX_FEMALE,
        address=common_pb2.Address(lines=["1 Test Street"], postcode="ls1 4ap"),
        phone="07700 900777",
    )
    request_id = str(uuid.uuid4())
    created = records.RegisterPatient(
        records_pb2.RegisterPatientRequest(patient=patient, request_id=request_id, allow_possible_duplicate=True), timeout=5
    ).patient
    assert created.id and created.etag == "1", created
    assert created.address.postcode == "LS1 4AP" and created.phone == "+447700900777", created

    again = records.RegisterPatient(
        records_pb2.RegisterPatientRequest(patient=patient, request_id=request_id, allow_possible_duplicate=True), timeout=5
    ).patient
    assert again.id == created.id, "retry with the same request_id must return the same patient"

    found = records.SearchPatients(records_pb2.SearchPatientsRequest(name=f"grace {family.lower()}"), timeout=5)
    assert found.results and found.results[0].patient.id == created.id, found

    change = records_pb2.Patient(id=created.id, etag=created.etag, family_name=family + "-Hopper")
    updated = records.UpdatePatient(
        records_pb2.UpdatePatientRequest(patient=change, update_mask=field_mask_pb2.FieldMask(paths=["family_name"])), timeout=5
    ).patient
    assert updated.family_name == family + "-Hopper" and updated.etag == "2", updated

    try:
        records.UpdatePatient(
            records_pb2.UpdatePatientRequest(patient=change, update_mask=field_mask_pb2.FieldMask(paths=["family_name"])), timeout=5
        )
        sys.exit("a stale etag was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.ABORTED, error

    bad = records_pb2.Patient(given_name="X", family_name="Y", nhs_number="9434765918", sex=records_pb2.SEX_MALE,
                              birth_date=common_pb2.Date(year=1990, month=1, day=1))
    try:
        records.RegisterPatient(records_pb2.RegisterPatientRequest(patient=bad), timeout=5)
        sys.exit("an invalid NHS number was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        details = dict(error.trailing_metadata()).get("grpc-status-details-bin")
        rich = status_pb2.Status.FromString(details)
        info = error_details_pb2.ErrorInfo()
        violations = error_details_pb2.BadRequest()
        for detail in rich.details:
            if detail.Is(info.DESCRIPTOR):
                detail.Unpack(info)
            if detail.Is(violations.DESCRIPTOR):
                detail.Unpack(violations)
        assert info.reason == "NHS_NUMBER_INVALID", info
        assert violations.field_violations[0].field == "patient.nhs_number", violations

    print(f"smoke: grpcio client registered, found and updated {created.id}")
    scheduling_address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:50052"
    slot_id = book(scheduling_address, created.id, suffix)
    refer(sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1:50053", scheduling_address, created.id, suffix, slot_id)
    through_gateway(sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1:50050", suffix)


def book(address: str, patient_id: str, suffix: str) -> str:
    """Books the patient into the first of two slots; returns the second, still free."""
    import datetime
    from pac.common.v1 import common_pb2
    from pac.scheduling.v1 import scheduling_pb2 as s, scheduling_pb2_grpc

    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="pac.scheduling.v1.Scheduling"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING, status
    scheduling = scheduling_pb2_grpc.SchedulingStub(channel)
    location = scheduling.CreateLocation(s.CreateLocationRequest(location=s.Location(
        name="Smoke Test Hospital", directions="Main entrance, first left", access_notes=["step-free access"])), timeout=5).location
    code = "SMOKE-" + suffix.upper()
    # Run by RR8, the organisation `pac token` acts for: the gateway step books into it.
    clinic = scheduling.CreateClinic(s.CreateClinicRequest(clinic=s.Clinic(
        location_id=location.id, name="Smoke clinic", service_code=code, time_zone="Europe/London", organisation="RR8")),
        timeout=5).clinic
    tomorrow = datetime.date.today() + datetime.timedelta(days=1)
    created = scheduling.CreateSessionTemplate(s.CreateSessionTemplateRequest(session_template=s.SessionTemplate(
        clinic_id=clinic.id, weekday=tomorrow.isoweekday(), start=s.LocalTime(hours=9), end=s.LocalTime(hours=10),
        slot_minutes=20, capacity=1, valid_from=common_pb2.Date(year=tomorrow.year, month=tomorrow.month, day=tomorrow.day))),
        timeout=10)
    assert created.slots_created > 0, created
    slots = scheduling.SearchSlots(s.SearchSlotsRequest(service_code=code, page_size=2), timeout=5).slots
    assert len(slots) == 2 and slots[0].local_start.hours == 9, slots
    hold = scheduling.HoldSlot(s.HoldSlotRequest(slot_id=slots[0].id, patient_id=patient_id, ttl_seconds=120,
                                                 request_id=str(uuid.uuid4())), timeout=5).appointment
    assert hold.status == s.APPOINTMENT_STATUS_PENDING, hold
    booked = scheduling.BookAppointment(s.BookAppointmentRequest(held_appointment_id=hold.id,
                                                                 request_id=str(uuid.uuid4())), timeout=5).appointment
    assert booked.id == hold.id and booked.status == s.APPOINTMENT_STATUS_BOOKED, booked
    try:
        scheduling.BookAppointment(s.BookAppointmentRequest(slot_id=slots[0].id, patient_id=patient_id), timeout=5)
        sys.exit("a full slot was booked twice")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    print(f"smoke: grpcio client booked appointment {booked.id} in slot {slots[0].id}")
    return slots[1].id


def refer(address: str, scheduling_address: str, patient_id: str, suffix: str, slot_id: str) -> None:
    import time
    from pac.referrals.v1 import referrals_pb2 as r, referrals_pb2_grpc
    from pac.scheduling.v1 import scheduling_pb2 as s, scheduling_pb2_grpc

    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="pac.referrals.v1.Referrals"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING, status
    referrals = referrals_pb2_grpc.ReferralsStub(channel)
    code = "SMOKE-" + suffix.upper()
    # Provided by RR8, as its clinic is run by RR8: a booking names only a referral of the slot's
    # service and organisation.
    referrals.CreateService(r.CreateServiceRequest(service=r.Service(
        code=code, name="Smoke service", target_wait_days=42, organisation="RR8",
        rules=r.EligibilityRules(min_age=18, sources=["GP"]))), timeout=5)
    answer = referrals.CheckEligibility(r.CheckEligibilityRequest(patient_id=patient_id, service_code=code, source="DENTIST"), timeout=5)
    assert not answer.eligible and answer.reasons[0].code == "SOURCE_NOT_ACCEPTED", answer
    referral = referrals.CreateReferral(r.CreateReferralRequest(
        patient_id=patient_id, service_code=code, priority=r.PRIORITY_ROUTINE,
        referrer=r.Referrer(organisation="B86001", clinician="Dr Smoke"), source="GP", reason="Smoke test",
        request_id=str(uuid.uuid4())), timeout=5).referral
    assert referral.status == r.REFERRAL_STATUS_AWAITING_TRIAGE and referral.clock.status_code == 10, referral
    try:
        referrals.TriageReferral(r.TriageReferralRequest(referral_id=referral.id, etag=referral.etag, reject=r.Reject()), timeout=5)
        sys.exit("a rejection without a reason was accepted")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    accepted = referrals.TriageReferral(r.TriageReferralRequest(
        referral_id=referral.id, etag=referral.etag, accept=r.Accept()), timeout=5).referral
    assert accepted.status == r.REFERRAL_STATUS_AWAITING_BOOKING, accepted
    scheduling = scheduling_pb2_grpc.SchedulingStub(grpc.insecure_channel(scheduling_address))
    appointment = scheduling.BookAppointment(s.BookAppointmentRequest(
        slot_id=slot_id, patient_id=patient_id, referral_id=referral.id, request_id=str(uuid.uuid4())), timeout=5).appointment
    for _ in range(100):
        current = referrals.GetReferral(r.GetReferralRequest(id=referral.id), timeout=5).referral
        if current.status == r.REFERRAL_STATUS_BOOKED:
            assert current.current_appointment_id == appointment.id, current
            break
        time.sleep(0.1)
    else:
        sys.exit("the booking never reached the referral")
    print(f"smoke: grpcio client referred, accepted and booked referral {referral.id}")


def through_gateway(address: str, suffix: str) -> None:
    import os
    from pac.common.v1 import common_pb2
    from pac.records.v1 import records_pb2, records_pb2_grpc
    from pac.scheduling.v1 import scheduling_pb2 as s, scheduling_pb2_grpc
    from google.rpc import status_pb2, error_details_pb2

    token = os.environ.get("PAC_TOKEN") or sys.exit("set PAC_TOKEN (pac token) to smoke-test the gateway")
    auth = (("authorization", f"Bearer {token}"),)
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "pac.access.v1.Access", "pac.records.v1.PatientRecords"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING, (service, status)
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    for service in ("pac.scheduling.v1.Scheduling", "pac.access.v1.Access", "pac.audit.v1.AuditTrail"):
        assert service in services, services
    records = records_pb2_grpc.PatientRecordsStub(channel)
    patient = records_pb2.Patient(given_name="Gate", family_name="Keeper" + "".join(chr(ord("a") + int(c, 16)) for c in suffix),
                                  birth_date=common_pb2.Date(year=1975, month=1, day=2), sex=records_pb2.SEX_MALE)
    try:
        records.RegisterPatient(records_pb2.RegisterPatientRequest(patient=patient), timeout=5)
        sys.exit("the gateway let a call without a token through")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
        # The refusal says why, in the gateway's domain.
        rich = status_pb2.Status.FromString(dict(error.trailing_metadata()).get("grpc-status-details-bin"))
        info = error_details_pb2.ErrorInfo()
        assert any(detail.Unpack(info) for detail in rich.details if detail.Is(info.DESCRIPTOR)), rich
        assert (info.reason, info.domain) == ("TOKEN_MISSING", "pac.gateway"), info
    created = records.RegisterPatient(records_pb2.RegisterPatientRequest(patient=patient, allow_possible_duplicate=True),
                                      timeout=5, metadata=auth).patient
    scheduling = scheduling_pb2_grpc.SchedulingStub(channel)
    slots = scheduling.SearchSlots(s.SearchSlotsRequest(service_code="SMOKE-" + suffix.upper(), page_size=5), timeout=5, metadata=auth).slots
    booked = scheduling.BookAppointment(s.BookAppointmentRequest(slot_id=slots[-1].id, patient_id=created.id,
                                                                 request_id=str(uuid.uuid4())), timeout=5, metadata=auth).appointment
    assert booked.status == s.APPOINTMENT_STATUS_BOOKED, booked
    from pac.access.v1 import access_pb2, access_pb2_grpc
    guide = access_pb2_grpc.AccessStub(channel).GetAppointmentGuide(
        access_pb2.GetAppointmentGuideRequest(appointment_id=booked.id), timeout=5, metadata=auth).guide
    assert guide.time_zone == "Europe/London" and guide.when and guide.reference in guide.how_to_change, guide
    try:
        records.RegisterPatient(records_pb2.RegisterPatientRequest(patient=records_pb2.Patient(nhs_number="123")), timeout=5, metadata=auth)
        sys.exit("a bad registration was accepted through the gateway")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        details = dict(error.trailing_metadata()).get("grpc-status-details-bin")
        status = status_pb2.Status.FromString(details)
        reasons = set()
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                violations = error_details_pb2.BadRequest()
                detail.Unpack(violations)
                reasons |= {v.reason for v in violations.field_violations}
        assert "NHS_NUMBER_INVALID" in reasons, reasons
    print(f"smoke: grpcio client booked appointment {booked.id} through the gateway")


if __name__ == "__main__":
    main()
