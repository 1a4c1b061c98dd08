#!/usr/bin/env python3
"""Decode Sparkplug B payloads with a third-party decoder (pysparkplug).

Weir's Sparkplug core (shared/src/sparkplug.rs) encodes with the Rust
srad-types protobuf types; this script checks the bytes against an
independent implementation, the way a host application would read them.

Usage:
    decode.py TOPIC FILE [TOPIC FILE ...]   # binary payload files
    decode.py < messages.txt                # one "TOPIC HEX" per line

Messages are decoded in order: DDATA/NDATA aliases and datatypes are
resolved from the last DBIRTH/NBIRTH of the same device/node, as a host
does. Prints one JSON document:

    {"decoder": "pysparkplug 0.5.0",
     "messages": [{"topic", "type", "group", "edge", "device", "timestamp",
                   "seq", "bdSeq", "metrics": [{"name", "alias", "datatype",
                   "value", "timestamp", "is_historical", "is_null",
                   "properties": {key: value}}]}]}

A message that fails to decode gets an "error" key and the exit code is 1.
Exit code 2: pysparkplug is missing.
"""

import json
import math
import sys

try:
    import pysparkplug
    from pysparkplug import _protobuf as pb
except ImportError as exc:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        f"pysparkplug is not importable ({exc}); install it with: "
        "pip install pysparkplug==0.5.0\n"
    )
    sys.exit(2)


def plain(value):
    """A JSON-safe rendering of a decoded value."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def signed(value, bits):
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def property_value(pv):
    """Decode a protobuf PropertyValue (pysparkplug's Metric drops them)."""
    if pv.HasField("is_null") and pv.is_null:
        return None
    field = pv.WhichOneof("value")
    if field is None:
        return None
    value = getattr(pv, field)
    dtype = pv.type
    if dtype in (1, 2, 3):  # Int8/16/32 travel as two's complement uint32
        return signed(value, 32)
    if dtype == 4:  # Int64 as uint64
        return signed(value, 64)
    if field in ("propertyset_value", "propertysets_value"):
        return str(value)
    return plain(value)


def properties(raw_metric):
    if not raw_metric.HasField("properties"):
        return {}
    ps = raw_metric.properties
    return {k: property_value(v) for k, v in zip(ps.keys, ps.values)}


def metric_json(metric, raw_metric):
    return {
        "name": metric.name,
        "alias": metric.alias,
        "datatype": metric.datatype.name,
        "value": plain(metric.value),
        "timestamp": metric.timestamp,
        "is_historical": metric.is_historical,
        "is_null": metric.is_null,
        "properties": properties(raw_metric),
    }


def decode_one(topic_str, raw, births):
    topic = pysparkplug.Topic.from_str(topic_str)
    mtype = pysparkplug.MessageType(topic.message_type)
    out = {
        "topic": topic_str,
        "type": str(mtype.value),
        "group": topic.group_id,
        "edge": topic.edge_node_id,
        "device": topic.device_id,
    }
    if mtype == pysparkplug.MessageType.STATE:
        state = pysparkplug.State.decode(raw)
        out.update(online=state.online, timestamp=state.timestamp)
        return out
    node_key = (topic.group_id, topic.edge_node_id, None)
    key = (topic.group_id, topic.edge_node_id, topic.device_id)
    birth = None
    if mtype in (pysparkplug.MessageType.NDATA, pysparkplug.MessageType.NCMD):
        birth = births.get(node_key)
    elif mtype in (pysparkplug.MessageType.DDATA, pysparkplug.MessageType.DCMD):
        birth = births.get(key)
    payload = mtype.payload.decode(raw, birth=birth)
    raw_payload = pb.Payload.FromString(raw)

    if mtype == pysparkplug.MessageType.NDEATH:
        m = payload.bd_seq_metric
        out.update(
            timestamp=None,
            seq=raw_payload.seq if raw_payload.HasField("seq") else None,
            bdSeq=plain(m.value),
            metrics=[metric_json(m, raw_payload.metrics[0])],
        )
        return out
    if mtype in (pysparkplug.MessageType.NBIRTH, pysparkplug.MessageType.DBIRTH):
        births[key] = payload
    metrics = [metric_json(m, r) for m, r in zip(payload.metrics, raw_payload.metrics)]
    out.update(
        timestamp=payload.timestamp,
        seq=getattr(payload, "seq", None),
        bdSeq=next((m["value"] for m in metrics if m["name"] == "bdSeq"), None),
        metrics=metrics,
    )
    return out


def inputs(argv):
    if argv:
        if len(argv) % 2:
            raise SystemExit("usage: decode.py TOPIC FILE [TOPIC FILE ...]")
        for topic, path in zip(argv[::2], argv[1::2]):
            with open(path, "rb") as f:
                yield topic, f.read()
        return
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        topic, _, hexdata = line.partition(" ")
        yield topic, bytes.fromhex(hexdata.strip())


def main(argv):
    births = {}
    messages = []
    failed = False
    for topic, raw in inputs(argv):
        try:
            messages.append(decode_one(topic, raw, births))
        except Exception as exc:  # report every failure, keep going
            failed = True
            messages.append({"topic": topic, "error": f"{type(exc).__name__}: {exc}"})
    json.dump(
        {"decoder": f"pysparkplug {pysparkplug.__version__}", "messages": messages},
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
