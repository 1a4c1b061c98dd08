#!/usr/bin/env python3
"""Encode a Sparkplug B command the way a host application does.

The end-to-end test (tests/tests/sparkplug.rs) sends these to weir-rx
through the broker; building them with pysparkplug, not with Weir's own
protobuf types, checks that a third-party host's commands are understood.

Usage:
    command.py rebirth              # NCMD: Node Control/Rebirth = true
    command.py write METRIC VALUE   # NCMD/DCMD writing a Double to METRIC

Prints the payload as hex on stdout. Exit code 2: pysparkplug is missing.
"""

import sys

try:
    import pysparkplug
except ImportError as exc:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        f"pysparkplug is not importable ({exc}); install it with: "
        "pip install pysparkplug==0.5.0\n"
    )
    sys.exit(2)


def main(argv):
    now = pysparkplug.get_current_timestamp()
    if argv == ["rebirth"]:
        metric = pysparkplug.Metric(
            timestamp=now,
            name="Node Control/Rebirth",
            datatype=pysparkplug.DataType.BOOLEAN,
            value=True,
        )
    elif len(argv) == 3 and argv[0] == "write":
        metric = pysparkplug.Metric(
            timestamp=now,
            name=argv[1],
            datatype=pysparkplug.DataType.DOUBLE,
            value=float(argv[2]),
        )
    else:
        raise SystemExit("usage: command.py rebirth | command.py write METRIC VALUE")
    # NCmd and DCmd encode the same payload; only the topic differs.
    payload = pysparkplug.NCmd(timestamp=now, metrics=(metric,))
    sys.stdout.write(payload.encode(include_dtypes=True).hex() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
