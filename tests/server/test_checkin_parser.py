"""The one parser of check-in bodies (medsec.protocol.SignedVersionReport): strict, documented as OpenAPI says,
and run before any device is looked up."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import httpx
import pytest
from device_sim import SimDevice
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from medsec.crypto.keys import SigningKey
from medsec.errors import ProtocolError
from medsec.protocol import MAX_JSON_INT, SignedVersionReport, VersionReport
from medsec.server.api import ReportBody, SignedReport, UpdateReportBody
from medsec.server.models import AuditEntry

pytestmark = pytest.mark.req("SM-6")

KEY = SigningKey.generate()


def _body(**report: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "serial": "IC300-0001",
        "hardware_id": "ic300-rev-b",
        "installed_version": "1.0.0",
        "agent_state": "running",
        "counter": 1,
        "nonce": "n0",
        "sent_at": 1_700_000_000,
    }
    signed = VersionReport(**fields).sign(KEY)
    signed["report"].update(report)
    return signed


def test_a_signed_report_parses_to_the_same_signed_bytes() -> None:
    body = _body()
    parsed = SignedVersionReport.from_json(body)
    assert parsed.report.to_json() == body["report"]
    parsed.report.verify_signature(parsed.signature, KEY.verify_key)


@pytest.mark.parametrize(
    ("model", "prefix"),
    [(ReportBody, ()), (UpdateReportBody, ("update",))],
)
def test_documented_string_bounds_are_the_parsers(model: type[Any], prefix: tuple[str, ...]) -> None:
    """Each maxLength in the OpenAPI document is accepted by the parser, one character more is refused."""
    for name, prop in model.model_json_schema()["properties"].items():
        choice = next((c for c in prop.get("anyOf", [prop]) if c.get("type") == "string"), None)
        if choice is None or "maxLength" not in choice or (prefix and name == "state"):
            continue
        limit = choice["maxLength"]
        for length, accepted in ((limit, True), (limit + 1, False)):
            body = _body()
            target = body["report"]
            if prefix:
                target["update"] = {"state": "downloading"}
                target = target["update"]
            target[name] = "x" * length
            if accepted:
                SignedVersionReport.from_json(body)
            else:
                with pytest.raises(ProtocolError, match=name):
                    SignedVersionReport.from_json(body)


def test_documented_signature_and_integer_bounds_are_the_parsers() -> None:
    schema = SignedReport.model_json_schema()
    assert schema["properties"]["signature"]["maxLength"] == 128
    counter = ReportBody.model_json_schema()["properties"]["counter"]
    assert (counter["minimum"], counter["maximum"]) == (1, MAX_JSON_INT)
    SignedVersionReport.from_json(_body(counter=MAX_JSON_INT))
    for bad in (0, MAX_JSON_INT + 1, True, 1.0, "1"):
        with pytest.raises(ProtocolError, match="counter"):
            SignedVersionReport.from_json(_body(counter=bad))
    with pytest.raises(ProtocolError, match="signature"):
        SignedVersionReport.from_json({"report": _body()["report"], "signature": "A" * 129})


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b["report"].update(extra=1), "unknown fields"),
        (lambda b: b["report"].pop("nonce"), "missing fields"),
        (lambda b: b.update(extra=1), "exactly the fields"),
        (lambda b: b["report"].update(serial=""), "serial"),
        (lambda b: b["report"].update(sent_at=-1), "sent_at"),
        (lambda b: b["report"].update(log_checkpoint=7), "log_checkpoint"),
        (lambda b: b["report"].update(log_consistency_proof="abc"), "log_consistency_proof"),
        (lambda b: b["report"].update(log_consistency_proof=[None]), "log_consistency_proof"),
        (lambda b: b["report"].update(log_consistency_proof=["x"] * 65), "log_consistency_proof"),
        (lambda b: b["report"].update(update={"state": "pwned"}), "update.state"),
        (lambda b: b["report"].update(update={"state": "idle", "release_counter": 2**53}), "release_counter"),
        (lambda b: b["report"].update(update={"state": "idle", "root": True}), "unknown keys"),
    ],
)
def test_malformed_report_is_refused_naming_the_field(mutate: Any, field: str) -> None:
    body = _body()
    mutate(body)
    with pytest.raises(ProtocolError, match=field):
        SignedVersionReport.from_json(body)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
    )
)
def test_any_json_value_parses_or_raises_protocol_error(value: Any) -> None:
    for candidate in (value, {"report": value, "signature": "AAAA"}):
        with contextlib.suppress(ProtocolError):  # anything else (TypeError, KeyError...) fails the test
            SignedVersionReport.from_json(copy.deepcopy(candidate))


def _checkin_refusals(ctx: Any) -> int:
    with ctx.tx() as s:
        return int(
            s.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.event_type == "device.checkin_refused")
            )
            or 0
        )


def test_malformed_bodies_get_invalid_request_before_any_lookup(live_server: Any) -> None:
    d = live_server.seed.devices[0]
    dev = SimDevice(live_server.url, d.serial, d.hardware_id)
    assert dev.enroll(d.enrollment_token).status_code == 200
    before = _checkin_refusals(live_server.ctx)
    signed = dev.report().sign(dev.key)
    attacks = [
        {**signed, "report": {**signed["report"], "update": {"state": "pwned"}}},
        {**signed, "report": {**signed["report"], "serial": "x" * 101}},
        {**signed, "report": {**signed["report"], "log_consistency_proof": "not-a-list"}},
        {**signed, "report": {**signed["report"], "counter": True}},
        {**signed, "extra": "field"},
    ]
    for body in attacks:
        r = httpx.post(f"{live_server.url}/api/v1/checkin", json=body)
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), r.text
        assert r.json()["detail"][0]["loc"] == ["body"]
    assert _checkin_refusals(live_server.ctx) == before  # refused before a device was involved
    assert dev.send(signed).status_code == 200  # the well-formed report still goes through


def test_undecodable_signature_is_a_malformed_report_of_that_device(live_server: Any) -> None:
    d = live_server.seed.devices[0]
    dev = SimDevice(live_server.url, d.serial, d.hardware_id)
    assert dev.enroll(d.enrollment_token).status_code == 200
    signed = dev.report().sign(dev.key)
    r = dev.send({**signed, "signature": "!!not base64!!"})
    assert (r.status_code, r.json()["error"]) == (422, "malformed_report")
    r = dev.send({**signed, "signature": "A" * 88})
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")
