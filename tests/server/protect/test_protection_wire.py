"""The signed batch format on its own: one byte form, signature first, faults that name the field."""

from __future__ import annotations

import base64
import json

import pytest
from protection_support import blocked_exec, integrity_event, sample_metrics

from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey
from medsec.errors import SignatureError
from medsec.protect.wire import (
    CONTEXT,
    MAX_BATCH_BYTES,
    MAX_EVENTS,
    BatchFormatError,
    EngineState,
    build_batch,
    parse_batch,
    verify_batch,
)
from medsec.protocol import CHECKIN_CONTEXT, signed_bytes

pytestmark = pytest.mark.req("RL-3")

ENGINE = EngineState("enforce", "7", "2026.12.1")


def _batch(events=None, **kw):
    return build_batch("IC300-0001", kw.pop("seq", 1), kw.pop("sent", 1_764_000_000), events or [], ENGINE, **kw)


def test_signed_batch_round_trips():
    key = SigningKey.generate()
    batch = _batch([blocked_exec(), integrity_event()], metrics_snapshot=sample_metrics())
    body, signature = batch.sign(key)
    assert verify_batch(body, signature, key.verify_key) == batch
    assert body == canonical_json(json.loads(body))
    assert "cache_hit_ratio" not in json.loads(body)["metrics"]  # floats have no canonical form


def test_tampered_event_fails_the_signature():
    key = SigningKey.generate()
    body, signature = _batch([blocked_exec("/tmp/x")]).sign(key)
    forged = body.replace(b'"deny"', b'"allow"')
    assert forged != body
    with pytest.raises(SignatureError):
        verify_batch(forged, signature, key.verify_key)


def test_other_devices_key_is_refused():
    body, signature = _batch([blocked_exec()]).sign(SigningKey.generate())
    with pytest.raises(SignatureError):
        verify_batch(body, signature, SigningKey.generate().verify_key)


def test_checkin_signature_cannot_pass_as_a_batch():
    # Same key, same bytes, other context: the domain separation makes it useless.
    key = SigningKey.generate()
    body = _batch([blocked_exec()]).encode()
    checkin_sig = base64.b64encode(key.sign(CHECKIN_CONTEXT + b"\n" + body)).decode()
    with pytest.raises(SignatureError):
        verify_batch(body, checkin_sig, key.verify_key)
    assert signed_bytes(CONTEXT, json.loads(body)) == CONTEXT + b"\n" + body


def test_malformed_event_names_index_and_field():
    doc = json.loads(_batch([blocked_exec(), blocked_exec()]).encode())
    doc["events"][1]["subject"]["pid"] = -3
    with pytest.raises(BatchFormatError) as e:
        parse_batch(canonical_json(doc))
    assert e.value.code == "bad_event"
    assert e.value.field == "events[1]"
    assert "subject.pid" in str(e.value)


def test_event_missing_a_field_is_refused():
    doc = json.loads(_batch([blocked_exec()]).encode())
    del doc["events"][0]["detail"]
    with pytest.raises(BatchFormatError) as e:
        parse_batch(canonical_json(doc))
    assert (e.value.code, e.value.field) == ("bad_event", "events[0]")


def test_non_canonical_body_is_refused():
    doc = json.loads(_batch([blocked_exec()]).encode())
    with pytest.raises(BatchFormatError) as e:
        parse_batch(json.dumps(doc, indent=1).encode())
    assert e.value.code == "malformed_batch"
    assert "canonical" in str(e.value)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("seq",), 0, "seq"),
        (("sent",), "yesterday", "sent"),
        (("engine", "mode"), "disabled", "engine.mode"),
        (("engine", "mode"), "off", "engine.off_reason"),  # off is a state, but never without its reason
        (("metrics", "latency_counts"), [1, 2], "metrics.latency_counts"),
        (("metrics", "cache_hits"), True, "metrics.cache_hits"),
        (("serial",), "../etc", "serial"),
    ],
)
def test_bad_batch_fields_are_named(path, value, field):
    doc = json.loads(_batch([blocked_exec()], metrics_snapshot=sample_metrics()).encode())
    target = doc
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    with pytest.raises(BatchFormatError) as e:
        parse_batch(canonical_json(doc))
    assert e.value.code == "malformed_batch"
    assert e.value.field == field


def test_too_many_events_is_refused_on_both_sides():
    events = [blocked_exec()] * (MAX_EVENTS + 1)
    with pytest.raises(BatchFormatError) as e:
        _batch(events).encode()
    assert e.value.code == "batch_too_large"
    doc = json.loads(_batch(events[:MAX_EVENTS]).encode())
    doc["events"].append(doc["events"][0])
    with pytest.raises(BatchFormatError) as e:
        parse_batch(canonical_json(doc))
    assert e.value.code == "batch_too_large"


def test_oversize_batch_is_refused_before_parsing():
    big = [blocked_exec("/opt/" + "x" * 4000)] * 70
    with pytest.raises(BatchFormatError) as e:
        _batch(big).encode()
    assert e.value.code == "batch_too_large"
    with pytest.raises(BatchFormatError) as e:
        parse_batch(b" " * (MAX_BATCH_BYTES + 1))
    assert e.value.code == "batch_too_large"
