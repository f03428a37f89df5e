"""Allowlisting "off" on the wire, in the database and over the API (RL-1): an explicit state with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from protection_support import blocked_exec, enroll
from sqlalchemy import inspect, select, text

from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey
from medsec.protect.wire import BatchFormatError, EngineState, build_batch, parse_batch
from medsec.server.db import make_engine
from medsec.server.migrate import downgrade, upgrade
from medsec.server.models import AuditEntry, Device
from medsec.server.models_protect import ProtectionStatus
from support.migrations import model_diffs

pytestmark = pytest.mark.req("RL-1")

A_SERIAL = "IC300-0001"
OFF = EngineState("off", "3", None, off_reason="not root")


def _body(engine: Any) -> bytes:
    """A batch body with a hand-made engine object (the dataclass refuses bad ones before encoding)."""
    value = build_batch(A_SERIAL, 1, 1_764_000_000, [], EngineState("enforce", "3")).to_json()
    value["engine"] = engine
    return canonical_json(value)


# -- the format -------------------------------------------------------------------------------------------


def test_off_engine_round_trips_with_its_reason() -> None:
    body, _sig = build_batch(A_SERIAL, 1, 1_764_000_000, [], OFF).sign(SigningKey.generate())
    assert json.loads(body)["engine"] == {
        "mode": "off",
        "off_reason": "not root",
        "policy_version": "3",
        "trustdb_version": None,
    }
    assert parse_batch(body).engine == OFF


def test_running_engine_keeps_the_old_shape_and_old_batches_are_accepted() -> None:
    old = {"mode": "monitor", "policy_version": "3 (off: not root)", "trustdb_version": None}
    assert parse_batch(_body(old)).engine == EngineState("monitor", "3 (off: not root)", None)
    assert "off_reason" not in EngineState("enforce", "3").to_json()


@pytest.mark.parametrize(
    ("engine", "field"),
    [
        ({"mode": "off", "policy_version": "3", "trustdb_version": None}, "engine.off_reason"),
        ({"mode": "off", "off_reason": "", "policy_version": "3", "trustdb_version": None}, "engine.off_reason"),
        ({"mode": "off", "off_reason": "x" * 201, "policy_version": "3", "trustdb_version": None}, "engine.off_reason"),
        ({"mode": "off", "off_reason": None, "policy_version": "3", "trustdb_version": None}, "engine.off_reason"),
        (
            {"mode": "enforce", "off_reason": "hidden", "policy_version": "3", "trustdb_version": None},
            "engine.off_reason",
        ),
        ({"mode": "disabled", "policy_version": "3", "trustdb_version": None}, "engine.mode"),
        ({"mode": "off", "why": "x", "policy_version": "3", "trustdb_version": None}, "engine"),
    ],
)
def test_bad_off_states_name_the_field(engine: dict[str, Any], field: str) -> None:
    with pytest.raises(BatchFormatError) as refused:
        parse_batch(_body(engine))
    assert refused.value.code == "malformed_batch" and refused.value.field == field


# -- the server ---------------------------------------------------------------------------------------------


def _status(live_server: Any) -> dict[str, Any]:
    token = live_server.seed.tokens["a-responsible"]
    r = httpx.get(
        f"{live_server.url}/api/v1/devices/{A_SERIAL}/protection-status",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _fleet_row(live_server: Any) -> dict[str, Any]:
    token = live_server.seed.tokens["a-responsible"]
    r = httpx.get(
        f"{live_server.url}/api/v1/protection/fleet", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    return next(row for row in r.json() if row["serial"] == A_SERIAL)


def test_off_state_is_stored_audited_and_cleared_when_the_engine_runs(live_server: Any) -> None:
    dev = enroll(live_server, A_SERIAL)
    dev.engine = OFF
    assert dev.send([blocked_exec()]).status_code == 200
    status = _status(live_server)
    assert (status["mode"], status["off_reason"], status["policy_version"]) == ("off", "not root", "3")
    assert (_fleet_row(live_server)["mode"], _fleet_row(live_server)["off_reason"]) == ("off", "not root")
    with live_server.ctx.tx() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.event_type == "protection.events")).one()
        details = json.loads(entry.body)["details"]
    assert (details["mode"], details["off_reason"]) == ("off", "not root")
    dev.engine = EngineState("enforce", "3", "1.0.0")
    assert dev.send([]).status_code == 200
    status = _status(live_server)
    assert (status["mode"], status["off_reason"]) == ("enforce", None)


def test_older_agents_off_report_is_stored_as_off(live_server: Any) -> None:
    dev = enroll(live_server, A_SERIAL)
    dev.engine = EngineState("monitor", "3 (off: fanotify unavailable)", "1.0.0")
    assert dev.send([]).status_code == 200
    status = _status(live_server)
    assert (status["mode"], status["off_reason"], status["policy_version"]) == ("off", "fanotify unavailable", "3")
    dev.engine = EngineState("monitor", "3", "1.0.0")  # a real monitor mode stays monitor
    assert dev.send([]).status_code == 200
    assert (_status(live_server)["mode"], _status(live_server)["off_reason"]) == ("monitor", None)


# -- the migration --------------------------------------------------------------------------------------------


def test_migration_matches_the_model(database_url: str) -> None:
    assert model_diffs(database_url, {"protection_status"}) == []
    assert ProtectionStatus.__table__.c.off_reason.nullable


def test_migration_goes_down_keeping_the_reason_in_the_version_and_up_again(
    database_url: str, ctx: Any, seeded: Any
) -> None:
    with ctx.tx() as s:
        device_id = s.scalar(select(Device.id).where(Device.serial == A_SERIAL))
        s.add(
            ProtectionStatus(
                device_id=device_id,
                mode="off",
                off_reason="not root",
                policy_version="3",
                trustdb_version=None,
                metrics=None,
                last_seq=1,
                updated_at=datetime.now(UTC),
            )
        )
    ctx.engine.dispose()
    downgrade(database_url, "0010@-1")
    engine = make_engine(database_url)
    try:
        assert "off_reason" not in {c["name"] for c in inspect(engine).get_columns("protection_status")}
        with engine.connect() as conn:
            row = conn.execute(text("SELECT mode, policy_version FROM protection_status")).one()
        assert tuple(row) == ("monitor", "3 (off: not root)")  # what the older portal understood
        upgrade(database_url)
        assert "off_reason" in {c["name"] for c in inspect(engine).get_columns("protection_status")}
    finally:
        engine.dispose()
