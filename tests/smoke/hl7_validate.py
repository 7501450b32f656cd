"""Validates HL7 v2 messages, one a line (segments separated by \\r), strictly with hl7apy for the
version each names; exits 1 naming every message that is not valid. CI runs it over one SIU message
of every kind the scheduling feeds send:

    cargo run -q -p pac-interop --example siu_samples | python3 tests/smoke/hl7_validate.py
"""

import sys

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message


def main() -> None:
    kinds, failures = set(), []
    for number, line in enumerate(sys.stdin, 1):
        text = line.rstrip("\n")
        if not text:
            continue
        msh = text.split("\r", 1)[0].split("|")
        kinds.add(msh[8])
        try:
            message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
            if not message.validate():
                failures.append((number, msh[8], "not valid"))
        except Exception as error:  # noqa: BLE001 (any refusal of hl7apy's is a finding)
            failures.append((number, msh[8], f"{type(error).__name__}: {error}"))
    for failure in failures:
        print("not valid:", *failure)
    print(f"hl7apy (strict): {len(kinds)} message kinds, {len(failures)} invalid: {sorted(kinds)}")
    sys.exit(1 if failures or not kinds else 0)


if __name__ == "__main__":
    main()
