"""Campaigns: two-person approval, cascading groups, thresholds, and progress only from signed reports (SM-1, SM-5)."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner
from update_support import (
    PRODUCT,
    SimDevice,
    bearer,
    create_and_approve,
    director_client,
    enrolled_devices,
    report_update,
    setup_updates,
    start,
    test_keys_fixture,  # noqa: F401 (the test_keys fixture)
)

from medsec.cli.main import app as cli_app
from medsec.server.models import AuditEntry

pytestmark = [pytest.mark.req("SM-1"), pytest.mark.req("SM-5")]
TARGET = f"{PRODUCT}/1.1.0/release.tar"


def _campaign(live_server, campaign_id):
    r = httpx.get(f"{live_server.url}/api/v1/campaigns/{campaign_id}", headers=bearer(live_server, "maker-admin"))
    assert r.status_code == 200, r.text
    return r.json()


def _assigned(live_server, device) -> list[str]:
    with director_client(device) as c:
        r = c.get(f"{live_server.url}/director/{device.serial}/metadata/timestamp.json")
        assert r.status_code == 200
        targets = c.get(f"{live_server.url}/director/{device.serial}/metadata/targets.json").json()
    return sorted(targets["signed"]["targets"])


def _events(live_server, event_type):
    with live_server.ctx.tx() as s:
        return [
            json.loads(e.body)
            for e in s.scalars(select(AuditEntry).where(AuditEntry.event_type == event_type).order_by(AuditEntry.idx))
        ]


def test_two_person_rule_cannot_be_bypassed(live_server, test_keys, tmp_path):
    setup_updates(live_server, test_keys, tmp_path)
    enrolled_devices(live_server)
    url = live_server.url
    body = {"name": "canary", "product": PRODUCT, "version": "1.1.0"}
    r = httpx.post(f"{url}/api/v1/campaigns", json=body, headers=bearer(live_server, "maker-release"))
    assert r.status_code == 201
    cid = r.json()["id"]
    # The creator approves their own campaign.
    r = httpx.post(f"{url}/api/v1/campaigns/{cid}/approve", headers=bearer(live_server, "maker-release"))
    assert (r.status_code, r.json()["error"]) == (403, "two_person_rule")
    # Starting without any approval.
    r = httpx.post(f"{url}/api/v1/campaigns/{cid}/start", headers=bearer(live_server, "maker-release"))
    assert (r.status_code, r.json()["error"]) == (409, "approval_required")
    # People without a release role, and hospitals, cannot approve.
    for username in ("maker-psirt", "a-responsible", "a-admin"):
        r = httpx.post(f"{url}/api/v1/campaigns/{cid}/approve", headers=bearer(live_server, username))
        assert (r.status_code, r.json()["error"]) == (403, "role_required"), username
    assert _campaign(live_server, cid)["status"] == "draft"
    refusals = _events(live_server, "campaign.approval_refused")
    assert refusals and refusals[-1]["actor"] == "maker-release"
    assert _events(live_server, "campaign.start_refused")
    r = httpx.post(f"{url}/api/v1/campaigns/{cid}/approve", headers=bearer(live_server, "maker-admin"))
    assert r.status_code == 200
    assert r.json()["status"] == "approved"
    assert _events(live_server, "campaign.approved")


def test_campaign_cascades_through_groups_from_signed_reports(live_server, test_keys, tmp_path):
    setup_updates(live_server, test_keys, tmp_path)
    d1, d2, d3 = enrolled_devices(live_server)
    body = {
        "name": "1.1.0 everywhere",
        "product": PRODUCT,
        "version": "1.1.0",
        "groups": [1, "rest"],
        "error_threshold": 50,
    }
    campaign = create_and_approve(live_server, body)
    cid, label = campaign["id"], f"c-{campaign['id']}"
    start(live_server, cid)
    # Group 1 is the first device only.
    assert _assigned(live_server, d1) == [TARGET]
    assert _assigned(live_server, d2) == []
    for state in ("downloading", "waiting_for_window", "installing"):
        assert report_update(d1, state, label, 2, target=TARGET).status_code == 200
    assert _campaign(live_server, cid)["current_group"] == 0
    d1.version = "1.1.0"
    assert report_update(d1, "committed", label, 2, target=TARGET).status_code == 200
    c = _campaign(live_server, cid)
    assert c["current_group"] == 1
    assert _assigned(live_server, d2) == [TARGET]
    assert _assigned(live_server, d3) == [TARGET]
    d2.version = "1.1.0"
    assert report_update(d2, "committed", label, 2).status_code == 200
    assert report_update(d3, "rolled_back", label, 2, reason="health check 'pump-selftest' failed").status_code == 200
    c = _campaign(live_server, cid)
    assert c["status"] == "completed"
    states = {d["serial"]: d["state"] for d in c["devices"]}
    assert states == {d1.serial: "committed", d2.serial: "committed", d3.serial: "rolled_back"}
    history = {d["serial"]: d["history"] for d in c["devices"]}
    assert [h["state"] for h in history[d1.serial]] == [
        "offered",
        "downloading",
        "waiting_for_window",
        "installing",
        "committed",
    ]
    assert all(h["source"] == "device" and h["report_counter"] for h in history[d1.serial][1:])
    assert history[d3.serial][-1]["reason"] == "health check 'pump-selftest' failed"
    # A failed device is no longer offered the release; a committed one keeps it listed.
    assert _assigned(live_server, d3) == []
    assert _assigned(live_server, d1) == [TARGET]
    assert _events(live_server, "campaign.completed")


def test_error_threshold_stops_the_campaign_by_itself(live_server, test_keys, tmp_path):
    setup_updates(live_server, test_keys, tmp_path)
    d1, d2, _d3 = enrolled_devices(live_server)
    campaign = create_and_approve(
        live_server,
        {"name": "canary", "product": PRODUCT, "version": "1.1.0", "groups": [1, "rest"], "error_threshold": 10},
    )
    cid, label = campaign["id"], f"c-{campaign['id']}"
    start(live_server, cid)
    assert _assigned(live_server, d1) == [TARGET]
    assert report_update(d1, "failed", label, 2, reason="bundle hash mismatch").status_code == 200
    c = _campaign(live_server, cid)
    assert c["status"] == "stopped"
    assert "error threshold" in c["stop_reason"]
    assert {d["state"] for d in c["devices"] if d["serial"] != d1.serial} == {"skipped"}
    assert _assigned(live_server, d2) == []
    stopped = _events(live_server, "campaign.stopped")
    assert stopped and stopped[-1]["actor"] == "system"


def test_forged_update_report_does_not_move_a_campaign(live_server, test_keys, tmp_path):
    setup_updates(live_server, test_keys, tmp_path)
    d1, d2, _d3 = enrolled_devices(live_server)
    campaign = create_and_approve(
        live_server, {"name": "one", "product": PRODUCT, "version": "1.1.0", "selection": {"hospitals": ["hospital-a"]}}
    )
    cid, label = campaign["id"], f"c-{campaign['id']}"
    start(live_server, cid)
    assert _assigned(live_server, d1) == [TARGET]
    # An attacker without the device key signs "committed" for device 1.
    forger = SimDevice(live_server.url, d1.serial, d1.hardware_id, counter=d1.counter, nonce=d1.nonce, version="1.1.0")
    r = report_update(forger, "committed", label, 2)
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")
    # The report's update object was changed after signing.
    signed = d1.report(update={"state": "downloading", "release_counter": 2, "campaign": label}).sign(d1.key)
    signed["report"]["update"]["state"] = "committed"
    signed["report"]["installed_version"] = "1.1.0"
    r = d1.send(signed)
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")
    # Hospital B's device, with its own valid key, claims a state for a campaign it is not in.
    d3 = _d3
    d3.version = "1.1.0"
    assert report_update(d3, "committed", label, 2).status_code == 200
    # A "committed" that the device's own installed version contradicts is not believed.
    assert report_update(d1, "committed", label, 2).status_code == 200
    c = _campaign(live_server, cid)
    assert {d["serial"]: d["state"] for d in c["devices"]} == {d1.serial: "offered", d2.serial: "pending"}
    assert c["status"] == "running"


def test_pause_resume_cancel_and_cli(live_server, test_keys, tmp_path):
    setup_updates(live_server, test_keys, tmp_path)
    enrolled_devices(live_server)
    runner = CliRunner()
    common = ["--server", live_server.url]
    r = runner.invoke(
        cli_app,
        [
            "campaign",
            "create",
            *common,
            "--token",
            live_server.seed.tokens["maker-release"],
            "--name",
            "cli",
            "--product",
            PRODUCT,
            "--version",
            "1.1.0",
            "--group",
            "1",
            "--group",
            "rest",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    cid = str(json.loads(r.output)["id"])
    admin = ["--token", live_server.seed.tokens["maker-admin"]]
    r = runner.invoke(cli_app, ["campaign", "start", *common, *admin, cid, "--json"])
    assert r.exit_code == 1 and "approval_required" in r.output
    for action, status in (("approve", "approved"), ("start", "running"), ("pause", "paused"), ("resume", "running")):
        r = runner.invoke(cli_app, ["campaign", action, *common, *admin, cid, "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["status"] == status
    r = runner.invoke(cli_app, ["campaign", "cancel", *common, *admin, cid])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli_app, ["campaign", "status", *common, *admin, cid, "--json"])
    assert json.loads(r.output)["status"] == "cancelled"
    r = runner.invoke(cli_app, ["campaign", "status", *common, *admin])
    assert r.exit_code == 0 and "cancelled" in r.output
    for event in (
        "campaign.created",
        "campaign.approved",
        "campaign.started",
        "campaign.paused",
        "campaign.resumed",
        "campaign.cancelled",
    ):
        assert _events(live_server, event), event
