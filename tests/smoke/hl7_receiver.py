"""A trust's receiving engine for the scheduling feeds, built on python-hl7's MLLP server: every SIU
message that arrives is validated strictly by hl7apy as HL7 v2.5, answered AA when valid and AE
when not, and written, one JSON line each, to a report that `hl7_smoke.py --feed-report` checks.

    python3 tests/smoke/hl7_receiver.py 127.0.0.1:2576 /tmp/pac-ci-siu.jsonl &
    # pac dev with PAC_INTEROP_FEEDS='[{"name":"smoke","address":"127.0.0.1:2576","organisations":["RR8"]}]'
"""

import asyncio
import json
import sys

import hl7
import hl7.mllp
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message


def check(text: str) -> str:
    """'' when hl7apy finds the message valid, strictly, for its version; else why not."""
    try:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        return "" if message.validate() else "not valid"
    except Exception as error:  # noqa: BLE001 (any refusal of hl7apy's is a finding)
        return f"{type(error).__name__}: {error}"


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    report = open(sys.argv[2], "a", encoding="utf-8")

    async def connected(reader, writer):
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                text = str(message).replace("\n", "\r")
                problem = check(text)
                msh = message.segment("MSH")
                report.write(json.dumps({"type": str(msh[9]), "control": str(msh[10]), "problem": problem, "message": text}) + "\n")
                report.flush()
                writer.writemessage(message.create_ack("AE" if problem else "AA"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def serve():
        async with await hl7.mllp.start_hl7_server(connected, host=host, port=int(port), encoding="latin-1") as server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
