"""The server's audit log: verification, tampering in the database, witnesses, offline export checks."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import delete, select, update

from medsec.auditlog import merkle
from medsec.auditlog.checkpoint import Checkpoint, sign_checkpoint
from medsec.cli.witness import cosign_once, init_witness
from medsec.errors import LogStoreError, WitnessError
from medsec.server.models import AuditCheckpoint, AuditEntry, AuditHead, AuditNode, Organization

pytestmark = pytest.mark.req("RA-2")


def _bearer(live_server, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {live_server.seed.tokens[user]}"}


def _verify_cli(path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medsec", "audit", "verify", str(path), "--json", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_login_token_and_enrollment_event_is_logged(live_server):
    with live_server.ctx.tx() as s:
        types = set(s.scalars(select(AuditEntry.event_type)))
    assert {"organization.created", "user.created", "token.created", "device.registered"} <= types


def test_fresh_log_verifies(live_server):
    r = httpx.post(f"{live_server.url}/api/v1/audit/verify", headers=_bearer(live_server, "maker-auditor"))
    assert r.status_code == 200, r.text
    assert r.json()["size"] > 10


def test_flipped_byte_in_stored_entry_is_detected(live_server):
    with live_server.ctx.tx() as s:
        row = s.get(AuditEntry, 3)
        body = bytearray(row.body)
        body[10] ^= 0x01
        row.body = bytes(body)
    r = httpx.post(f"{live_server.url}/api/v1/audit/verify", headers=_bearer(live_server, "maker-auditor"))
    assert r.status_code == 409
    assert r.json()["error"] == "audit_log_verification_failed"
    assert "entry 3" in r.json()["detail"]


def test_truncated_log_is_detected(live_server):
    ctx = live_server.ctx
    with ctx.tx() as s:
        size = ctx.audit.size(s)
        # An insider removes the newest entries and rewinds the head, below a signed checkpoint.
        s.execute(delete(AuditEntry).where(AuditEntry.idx >= size - 2))
        s.execute(delete(AuditNode).where(AuditNode.level == 0, AuditNode.idx >= size - 2))
        s.execute(update(AuditHead).values(size=size - 2))
    with ctx.tx() as s, pytest.raises(LogStoreError, match="beyond the stored log"):
        ctx.audit.verify(s)


def test_rewritten_history_is_detected_even_with_rebuilt_tree(live_server):
    ctx = live_server.ctx
    with ctx.tx() as s:
        size = ctx.audit.size(s)
        bodies = [body for (body,) in s.execute(select(AuditEntry.body).order_by(AuditEntry.idx))]
        bodies[1] = bodies[1].replace(b"hospital", b"h0spital", 1)
        s.execute(update(AuditEntry).where(AuditEntry.idx == 1).values(body=bodies[1]))
        tree = merkle.MemoryNodes.from_entries(bodies)
        s.execute(delete(AuditNode))
        for level in range(size.bit_length()):
            for idx in range(size >> level):
                s.add(AuditNode(level=level, idx=idx, hash=tree.node(level, idx)))
    with ctx.tx() as s, pytest.raises(LogStoreError, match="does not match the stored entries"):
        ctx.audit.verify(s)


def test_witness_cosigns_and_a_hospital_export_verifies_offline(live_server, tmp_path):
    ctx = live_server.ctx
    witness = init_witness(tmp_path / "witness", "witness.sakura.example")
    ctx.settings.witness_keys.append(witness.vkey)
    result = cosign_once(witness, live_server.url, ctx.audit.vkey)
    assert result["size"] > 0

    r = httpx.get(f"{live_server.url}/api/v1/audit/export?witnessed=true", headers=_bearer(live_server, "a-auditor"))
    assert r.status_code == 200, r.text
    export = r.json()
    with ctx.tx() as s:
        hospital_a = s.scalar(select(Organization.id).where(Organization.slug == "hospital-a"))
        own = set(s.scalars(select(AuditEntry.idx).where(AuditEntry.organization_id == hospital_a)))
    exported = {e["index"] for e in export["entries"]}
    assert exported, "hospital A has entries of its own"
    assert exported <= own, "a hospital export holds only its own entries"
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))

    ok = _verify_cli(path, "--log-key", ctx.audit.vkey, "--witness-key", witness.vkey)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["witnesses"] == ["witness.sakura.example"]

    tampered = json.loads(path.read_text())
    tampered["entries"][0]["entry"]["type"] = "nothing.happened"
    path.write_text(json.dumps(tampered))
    bad = _verify_cli(path, "--log-key", ctx.audit.vkey)
    assert bad.returncode == 1
    assert f"entry {tampered['entries'][0]['index']}" in bad.stdout


def test_export_verification_needs_the_right_key(live_server, tmp_path):
    r = httpx.get(f"{live_server.url}/api/v1/audit/export", headers=_bearer(live_server, "maker-auditor"))
    path = tmp_path / "export.json"
    path.write_text(r.text)
    other = "other.example/audit+00000000+AaeT0j4bW4S/6TG7GbfGl9yMmZmB84BW1NXf2yzY0jdb"
    bad = _verify_cli(path, "--log-key", other)
    assert bad.returncode == 1
    missing = _verify_cli(path)
    assert missing.returncode == 1
    assert "--log-key is required" in missing.stdout


def test_witness_refuses_a_forked_log(live_server, tmp_path):
    ctx = live_server.ctx
    witness = init_witness(tmp_path / "witness", "witness.auditor.example")
    ctx.settings.witness_keys.append(witness.vkey)
    cosign_once(witness, live_server.url, ctx.audit.vkey)
    # An insider holding the log key rewrites an old entry, rebuilds the tree and signs a new checkpoint.
    with ctx.tx() as s:
        bodies = [body for (body,) in s.execute(select(AuditEntry.body).order_by(AuditEntry.idx))]
        bodies[0] = bodies[0].replace(b"organization.created", b"organization.deleted")
        s.execute(update(AuditEntry).where(AuditEntry.idx == 0).values(body=bodies[0]))
        tree = merkle.MemoryNodes.from_entries(bodies)
        s.execute(delete(AuditNode))
        for level in range(len(bodies).bit_length()):
            for idx in range(len(bodies) >> level):
                s.add(AuditNode(level=level, idx=idx, hash=tree.node(level, idx)))
        ctx.audit.append(s, "test.event", actor="insider", organization_id=None)
        bodies.append(s.get(AuditEntry, len(bodies)).body)
        forged = merkle.MemoryNodes.from_entries(bodies)
        note = sign_checkpoint(Checkpoint(ctx.audit.origin, forged.size, forged.root()), ctx.audit.signer)
        s.add(AuditCheckpoint(size=forged.size, root_hash=forged.root(), note=note))
    with pytest.raises(WitnessError, match="fork"):
        cosign_once(witness, live_server.url, ctx.audit.vkey)


def test_cosignature_from_an_unconfigured_witness_is_refused(live_server, tmp_path):
    witness = init_witness(tmp_path / "witness", "witness.unknown.example")
    r = httpx.get(f"{live_server.url}/api/v1/audit/checkpoint")
    note = witness.cosign(r.json()["note"], live_server.ctx.audit.vkey, [], 1_700_000_000)
    r = httpx.post(f"{live_server.url}/api/v1/audit/cosignatures", json={"note": note})
    assert r.status_code == 403
    assert r.json()["error"] == "cosignature_refused"
