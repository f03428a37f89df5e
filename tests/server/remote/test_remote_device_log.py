"""The device's own access-log entries of a session, over the real server (RA-2, RA-5).

A device with a real Merkle access log enrols and checks in (so the server cosigns its checkpoint),
its remote link sends the session's entries with inclusion proofs, the service report lists them and
``medsec audit verify`` checks them offline. Every refusal the server promises has an attack here.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from medsec.agent.access_log import AccessLog
from medsec.agent.remote_link import RemoteLink, RemoteLinkConfig, SessionLogUploader
from medsec.auditlog.export import verify_bundle
from medsec.crypto.keys import SigningKey
from medsec.errors import ProofError
from medsec.protocol import EnrollmentRequest, VersionReport
from medsec.remote.device_side import DeviceLinkConfig
from medsec.remote.session_log import SessionLogUpload, build_uploads, session_entries
from medsec.server.context import ServerContext
from medsec.server.models import AuditEntry
from medsec.server.models_remote import RemoteDeviceEntry
from medsec.server.remote_authority import load_remote_keys
from medsec.server.services import remote_sessions as remote
from support.remote import approved_session
from support.remote import people as _people

pytestmark = [pytest.mark.req("RA-2"), pytest.mark.req("RA-5")]
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk5aW1wbGVrZXlmb3J0ZXN0c29ubHkwMDAwMDAwMDA="


class Device:
    """A simulated device: its key, its real access log, enrolment and signed check-ins."""

    def __init__(self, live_server: Any, index: int, tmp_path: Path) -> None:
        seed = live_server.seed.devices[index]
        self.url = live_server.url
        self.serial = seed.serial
        self.hardware_id = seed.hardware_id
        self.key = SigningKey.generate()
        self.log = AccessLog(tmp_path / f"log-{self.serial}", self.serial, self.key)
        self.counter = 0
        request = EnrollmentRequest(
            seed.enrollment_token, self.serial, self.hardware_id, self.key.verify_key.to_base64()
        )
        answer = httpx.post(f"{self.url}/api/v1/enroll", json=request.sign(self.key))
        assert answer.status_code == 200, answer.text
        self.nonce = answer.json()["nonce"]
        self.cosigned_size = 0

    def checkin(self) -> str:
        """One check-in with the log's checkpoint; the server's cosigned note comes back."""
        self.counter += 1
        note = self.log.checkpoint()
        size = self.log.size
        report = VersionReport(
            serial=self.serial,
            hardware_id=self.hardware_id,
            installed_version="1.0.0",
            agent_state="running",
            counter=self.counter,
            nonce=self.nonce,
            sent_at=int(time.time()),
            log_checkpoint=note,
            log_consistency_proof=self.log.consistency_proof_b64(self.cosigned_size, size),
        )
        answer = httpx.post(f"{self.url}/api/v1/checkin", json=report.sign(self.key))
        assert answer.status_code == 200, answer.text
        self.nonce = answer.json()["nonce"]
        self.cosigned_size = size
        cosigned = answer.json()["cosigned_checkpoint"]
        assert cosigned
        return str(cosigned)

    def post(self, signed: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.url}/api/v1/remote/devices/{self.serial}/log-entries", json=signed)

    def upload(self, session: str, size: int, indexes: list[int] | None = None) -> SessionLogUpload:
        chosen = indexes if indexes is not None else session_entries(self.log, 0, size)[session]
        return build_uploads(self.log, self.serial, session, chosen, size, int(time.time()))[0]


def _session(ctx: ServerContext, serial: str) -> str:
    """An approved session that the gateway started (the first engineer connection)."""
    now = int(time.time())
    approval_key = load_remote_keys(ctx.settings).approval_key
    sid = approved_session(
        ctx,
        serial,
        now,
        comment="go ahead",
        planned_work="read status and version",
        rollback="nothing to roll back",
        file_transfer=True,
    )
    with ctx.tx() as db:
        remote.gateway_ticket(db, ctx.audit, approval_key, sid, now)
    return str(sid)


def _work(log: AccessLog, sid: str) -> None:
    """What the device endpoint logs during a session (device_side), with unrelated entries between."""
    log.record("remote.login", session=sid, engineer="maker-service", approvers=["a-responsible"], emergency=False)
    log.record("remote.command", session=sid, argv=["status"], status=0)
    log.record("agent.checkin", installed_version="1.0.0", agent_state="running", counter=1)
    log.record("remote.refused", session=sid, code="command_not_allowed", reason="'rm' is not allowed", channel="exec")
    log.record("remote.file_transfer", session=sid, direction="put", name="calib.bin", sha256="ab" * 32, size=1024)
    log.record("remote.session_end", session=sid, reason="completed", commands=1, seconds=42)


def _refusals(ctx: ServerContext) -> list[str]:
    with ctx.tx() as db:
        bodies = db.scalars(
            select(AuditEntry.body).where(AuditEntry.event_type == "remote.device_log_refused").order_by(AuditEntry.idx)
        )
        return [json.loads(b)["details"]["code"] for b in bodies]


def _link(device: Device, tmp_path: Path, approval_key: str, client: httpx.Client) -> RemoteLink:
    settings = RemoteLinkConfig.from_mapping(
        {"approval_key": approval_key, "enabled": True, "gateway": {"host": "127.0.0.1", "host_key": HOST_KEY}}
    )

    def no_endpoint(config: DeviceLinkConfig) -> Any:
        raise AssertionError("no session is pending, the link must not dial out")

    return RemoteLink(
        device.serial,
        settings,
        device.key,
        device.log,
        client,
        device.url,
        no_endpoint,
        tmp_path / "transfer",
        uploader=SessionLogUploader(
            device.serial, device.key, device.log, device.log, client, device.url, tmp_path / "upload.json"
        ),
    )


def test_device_entries_reach_the_report_and_verify_offline(live_server: Any, tmp_path: Path) -> None:
    import asyncio

    ctx: ServerContext = live_server.ctx
    device = Device(live_server, 0, tmp_path)
    sid = _session(ctx, device.serial)
    _work(device.log, sid)
    with ctx.tx() as db:
        remote.end_session(db, ctx.audit, _people(ctx)["maker-service"], sid, now=int(time.time()))
    device.checkin()  # the server cosigns the checkpoint that covers the session end
    approval = load_remote_keys(ctx.settings).approval_verify_key.to_base64()
    with httpx.Client(timeout=30) as client:
        link = _link(device, tmp_path, approval, client)
        asyncio.run(link.step())
        asyncio.run(link.step())  # nothing new: the position was saved, nothing is sent twice
    assert json.loads((tmp_path / "upload.json").read_text()) == {"position": device.log.size}

    with ctx.tx() as db:
        kept = db.scalars(select(RemoteDeviceEntry).where(RemoteDeviceEntry.session_id == sid)).all()
        events = [e.event for e in sorted(kept, key=lambda e: e.log_index)]
    assert events == [
        "remote.login",
        "remote.command",
        "remote.refused",
        "remote.file_transfer",
        "remote.session_end",
    ]
    assert _refusals(ctx) == []

    headers = {"Authorization": f"Bearer {live_server.seed.tokens['a-responsible']}"}
    base = f"{live_server.url}/api/v1/remote/sessions/{sid}/report"
    html = httpx.get(base, params={"format": "html", "lang": "en"}, headers=headers, timeout=60)
    assert html.status_code == 200, html.text
    assert "From the device log (medsec-device/IC300-0001)" in html.text
    assert f"checkpoint {device.cosigned_size}" in html.text
    assert "status (status 0)" in html.text and "command_not_allowed" in html.text
    ja = httpx.get(base, params={"format": "html", "lang": "ja"}, headers=headers, timeout=60)
    assert "機器ログ(medsec-device/IC300-0001)より" in ja.text

    answer = httpx.get(base, params={"format": "bundle"}, headers=headers, timeout=60)
    bundle = answer.json()
    summary = verify_bundle(bundle, ctx.audit.vkey)
    (attached,) = summary.attached
    assert attached.key_source == "vouched" and len(attached.entries) == 5
    assert [cp.size for cp in attached.checkpoints] == [device.cosigned_size]
    # the device's own key, given directly, is accepted too
    verify_bundle(bundle, ctx.audit.vkey, attached_keys=[device.log._signer.vkey])

    path = tmp_path / "proof.json"
    path.write_text(json.dumps(bundle))
    cli = [sys.executable, "-m", "medsec", "audit", "verify", str(path), "--log-key", ctx.audit.vkey, "--json"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["attached_entries_verified"] == 5

    # an entry altered after the fact fails offline, naming the entry
    altered = copy.deepcopy(bundle)
    target = altered["attached_logs"][0]["entries"][1]
    target["entry"]["argv"] = ["status", "--all"]
    with pytest.raises(ProofError, match=rf"entry {target['index']}: not included"):
        verify_bundle(altered, ctx.audit.vkey)
    path.write_text(json.dumps(altered))
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert f"attached log medsec-device/IC300-0001 entry {target['index']}: not included" in done.stdout + done.stderr


@pytest.mark.req("RA-2")
def test_upload_attacks_are_refused_with_their_codes(live_server: Any, tmp_path: Path) -> None:
    ctx: ServerContext = live_server.ctx
    device = Device(live_server, 0, tmp_path)
    other = Device(live_server, 1, tmp_path)
    sid = _session(ctx, device.serial)
    second = _session(ctx, device.serial)
    other_sid = _session(ctx, other.serial)
    _work(device.log, sid)
    _work(other.log, other_sid)
    device.checkin()
    other.checkin()
    size = device.log.size
    good = device.upload(sid, size)

    # an entry from another session of the same device
    moved = SessionLogUpload(device.serial, second, size, good.sent_at, good.entries)
    r = device.post(moved.sign(device.key))
    assert (r.status_code, r.json()["error"]) == (422, "entry_not_for_session")

    # another device's entries, signed by that device, sent as this one
    theirs = other.upload(other_sid, other.log.size)
    forged = SessionLogUpload(device.serial, other_sid, theirs.checkpoint_size, theirs.sent_at, theirs.entries)
    r = device.post(forged.sign(other.key))
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")
    # ... and this device reporting on the other device's session
    r = device.post(SessionLogUpload(device.serial, other_sid, size, good.sent_at, good.entries).sign(device.key))
    assert (r.status_code, r.json()["error"]) == (403, "session_not_for_device")

    # a proof against a checkpoint the server never cosigned
    device.log.record("remote.command", session=sid, argv=["version"], status=0)
    late = device.upload(sid, device.log.size, [device.log.size - 1])
    r = device.post(late.sign(device.key))
    assert (r.status_code, r.json()["error"]) == (409, "unknown_checkpoint")

    # an entry changed by the device before sending: its proof no longer leads to the cosigned root
    entries = list(good.entries)
    entries[1] = type(entries[1])(
        entries[1].index, {**entries[1].entry, "argv": ["reboot"]}, entries[1].inclusion_proof
    )
    r = device.post(SessionLogUpload(device.serial, sid, size, good.sent_at, tuple(entries)).sign(device.key))
    assert (r.status_code, r.json()["error"]) == (422, "bad_inclusion_proof")

    # the real upload is kept; sending the same signed body again is a replay
    signed = good.sign(device.key)
    r = device.post(signed)
    assert r.status_code == 200 and r.json()["stored"] == 5, r.text
    r = device.post(signed)
    assert (r.status_code, r.json()["error"]) == (409, "replayed_upload")

    # an old upload, replayed long after: refused as stale before anything else
    stale = SessionLogUpload(device.serial, sid, size, good.sent_at - 3600, good.entries)
    r = device.post(stale.sign(device.key))
    assert (r.status_code, r.json()["error"]) == (409, "stale_upload")

    assert _refusals(ctx) == [
        "entry_not_for_session",
        "bad_signature",
        "session_not_for_device",
        "unknown_checkpoint",
        "bad_inclusion_proof",
        "replayed_upload",
        "stale_upload",
    ]
    with ctx.tx() as db:
        assert len(db.scalars(select(RemoteDeviceEntry)).all()) == 5
