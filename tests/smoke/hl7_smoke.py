"""The ADT listener of a running platform with independent HL7 peers: python-hl7's MLLP client plays
the trust's PAS and sends UK ITK-shaped ADT messages (Latin-1, `\\r` segment ends, the NHS number in
PID-3 with its verification status in PID-32, the GP practice in PD1-3); hl7apy validates every ACK
strictly for its version; the effects are read back through the gateway with grpcio (a
coordinator's token).

    PAC_TOKEN=$(pac token) python3 tests/smoke/hl7_smoke.py [mllp] [gateway] [feed report]
    # defaults 127.0.0.1:2575 127.0.0.1:50050 (pac dev's listener acts for RR8)

With a feed report (written by hl7_receiver.py, the receiving engine of pac dev's scheduling feed),
it also checks that the bookings made before it (the grpcio smoke's) arrived as SIU S12 messages,
each valid in hl7apy, strictly, as HL7 v2.5.
"""

import json
import os
import random
import time
import sys
import uuid

import hl7.client
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message, parse_segments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpcio_smoke import generate_stubs  # noqa: E402


def nhs_number() -> str:
    """A valid number in the 999 test range."""
    while True:
        digits = [9, 9, 9] + [random.randrange(10) for _ in range(6)]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11
        check = 0 if check == 11 else check
        if check != 10:
            return "".join(map(str, digits + [check]))


def adt(trigger: str, structure: str, control: str, version: str, body: str, facility: str = "RR8") -> str:
    msg_type = f"ADT^{trigger}" if version == "2.3" else f"ADT^{trigger}^{structure}"
    return (f"MSH|^~\\&|PAS|{facility}|PAC|PAC|20261205091500||{msg_type}|{control}|P|{version}|||AL|NE|GBR|8859/1\r"
            f"EVN|{trigger}|20261205091500\r{body}")


def pid(identifiers: str, name: str, rest: str = "") -> str:
    return f"PID|1||{identifiers}||{name}||{rest}\r"


def validate(ack: str, version: str) -> None:
    """hl7apy, strict, for the ACK's version (2.3's ACK structure is named explicitly: hl7apy
    derives a structure name only from MSH-9's third component, which 2.3 does not have)."""
    if version == "2.3":
        message = Message("ACK", version="2.3", validation_level=VALIDATION_LEVEL.STRICT)
        segments = parse_segments(ack, version="2.3", validation_level=VALIDATION_LEVEL.STRICT)
        message.msh = segments[0]
        for segment in segments[1:]:
            message.add(segment)
    else:
        message = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert message.validate(), ack


class Pas:
    def __init__(self, host: str, port: int):
        self.client = hl7.client.MLLPClient(host, port, encoding="latin-1")

    def send(self, message: str) -> str:
        raw = self.client.send_message(message)
        assert raw.startswith(b"\x0b") and raw.endswith(b"\x1c\r"), raw
        return raw[1:-2].decode("latin-1")

    def expect(self, message: str, code: str, err: str = "") -> str:
        ack = self.send(message)
        request = hl7.parse(message)
        version = str(request.segment("MSH")[12])
        validate(ack, version)
        parsed = hl7.parse(ack)
        msa = parsed.segment("MSA")
        assert str(msa[1]) == code, f"{code} expected: {ack!r}"
        assert str(msa[2]) == str(request.segment("MSH")[10]), ack
        msh = parsed.segment("MSH")
        assert (str(msh[5]), str(msh[6])) == ("PAS", str(request.segment("MSH")[4])), ack
        assert str(msh[18]) == "8859/1", "the ACK names the message's character set"
        if err:
            assert err in str(parsed.segment("ERR")), f"{err} expected: {ack!r}"
        return ack


def main() -> None:
    mllp = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:2575"
    gateway = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:50050"
    host, port = mllp.rsplit(":", 1)
    run = uuid.uuid4().hex[:8].upper()
    first, second, number = f"K{run}A", f"K{run}B", nhs_number()

    pas = Pas(host, int(port))
    a28 = adt("A28", "ADT_A05", f"{run}01", "2.4", pid(
        f"{number}^^^NHS^NH~{first}^^^RR8^PI", "Ní Bhriain^Áine^^^Ms^^L",
        "19750412|F|||3 Mill Lane^^Leeds^^LS6 2AB^^H||0113 496 0002^PRN^PH" + "|" * 19 + "NSTS01") + "PD1|||Park Surgery^^B86001\r")
    registered = pas.expect(a28, "AA")
    assert pas.send(a28) == registered, "a resend is answered with the stored ACK"
    pas.expect(adt("A08", "ADT_A01", f"{run}02", "2.3", pid(f"{first}^^^RR8^PI", "Ní Bhriain^Áine Máire")), "AA")
    pas.expect(adt("A28", "ADT_A05", f"{run}03", "2.5", pid(f"{second}^^^RR8^PI", "Brien^Anne", "19750412|F")), "AA")
    pas.expect(adt("A40", "ADT_A39", f"{run}04", "2.3.1", pid(f"{first}^^^RR8^PI", "Ní Bhriain^Áine") + f"MRG|{second}^^^RR8^PI\r"), "AA")
    pas.expect(adt("A03", "ADT_A03", f"{run}05", "2.5", pid(f"{first}^^^RR8^PI", "Ní Bhriain^Áine") + "PV1|1|I\r"), "AA")
    pas.expect(adt("A28", "ADT_A05", f"{run}06", "2.5", pid(f"K{run}C^^^RR8^PI", "Smith^Jo", "19751312|F")), "AE",
               "PID^1^7|102^Data type error^HL70357|E")
    bad_nhs = number[:9] + str((int(number[9]) + 1) % 10)
    pas.expect(adt("A28", "ADT_A05", f"{run}07", "2.4", pid(f"{bad_nhs}^^^NHS^NH~K{run}D^^^RR8^PI", "Smith^Jo", "19750101|F")), "AE",
               "PID^1^3^102&Data type error&HL70357")
    pas.expect(adt("A40", "ADT_A39", f"{run}08", "2.4", pid(f"{first}^^^RR8^PI", "X^Y") + f"MRG|K{run}NONE^^^RR8^PI\r"), "AE", "204")
    pas.expect(adt("A28", "ADT_A05", f"{run}09", "2.4", pid(f"K{run}E^^^RAE^PI", "Smith^Jo", "19750101|F"), facility="RAE"), "AR")
    pas.expect(adt("A28", "ADT_A05", f"{run}03", "2.5", pid(f"{second}^^^RR8^PI", "Brien^Annie", "19750412|F")), "AE", "205")
    print("hl7 smoke: 10 ACKs (2.3, 2.3.1, 2.4, 2.5) valid in hl7apy, strict")

    # The effects, through the gateway.
    generate_stubs()
    import grpc
    from pac.records.v1 import records_pb2, records_pb2_grpc

    channel = grpc.insecure_channel(gateway)
    records = records_pb2_grpc.PatientRecordsStub(channel)
    metadata = [("authorization", f"Bearer {os.environ['PAC_TOKEN']}")]

    def lookup(value: str):
        request = records_pb2.LookupPatientRequest(local_identifier=records_pb2.LocalIdentifier(issuer="RR8", value=value))
        return records.LookupPatient(request, metadata=metadata, timeout=5)

    found = lookup(first)
    assert (found.patient.given_name, found.patient.nhs_number, found.patient.gp_practice_code) == ("Áine Máire", number, "B86001"), found
    assert found.patient.nhs_number_status == records_pb2.NHS_NUMBER_STATUS_VERIFIED, found
    merged = lookup(second)
    assert merged.patient.id == found.patient.id and merged.merged_from, merged
    try:
        lookup(f"K{run}D")
        raise AssertionError("a refused message registered a patient")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
    print("hl7 smoke: registration, update, merge and refusals seen through the gateway")

    if len(sys.argv) > 3:
        check_feed(sys.argv[3])


def check_feed(path: str) -> None:
    """The receiving engine's report: S12s arrived, every message valid, in sequence."""
    deadline = time.time() + 30
    while True:
        with open(path, encoding="utf-8") as report:
            lines = [json.loads(line) for line in report if line.strip()]
        booked = [line for line in lines if line["type"] == "SIU^S12^SIU_S12"]
        if len(booked) >= 3 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert len(booked) >= 3, f"the grpcio smoke's three bookings as S12 messages: {lines}"
    invalid = [line for line in lines if line["problem"]]
    assert not invalid, invalid
    controls = [line["control"] for line in lines]
    assert controls == sorted(controls) and len(set(controls)) == len(controls), controls
    print(f"hl7 smoke: {len(lines)} SIU messages from the scheduling feed, each valid in hl7apy (v2.5, strict)")


if __name__ == "__main__":
    main()
