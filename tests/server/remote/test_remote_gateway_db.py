"""The gateway over the database authority, with the stock OpenSSH client and a device endpoint (RA-1, RA-2)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import asyncssh
import pytest
from sqlalchemy import select

from medsec.agent.access_log import AccessLog
from medsec.crypto.keys import SigningKey
from medsec.remote.device_side import CommandResult, DeviceEndpoint, DeviceLinkConfig, RestrictedShell
from medsec.remote.gateway import Gateway
from medsec.remote.recording import verify_recording
from medsec.remote.ticket import MemoryNonceStore
from medsec.server.context import ServerContext
from medsec.server.models import AuditEntry, Device, DeviceStatus
from medsec.server.remote_authority import DatabaseSessionAuthority, load_remote_keys
from medsec.server.seed import Seed
from medsec.server.services import remote_sessions as remote
from support.remote import approved_session
from support.remote import people as _people

pytestmark = [
    pytest.mark.req("RA-1"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client"),
]
SERIAL = "IC300-0001"


def test_engineer_reaches_device_through_db_gateway_and_revocation_cuts(
    ctx: ServerContext, seeded: Seed, tmp_path: Path
) -> None:
    device_key = SigningKey.generate()
    with ctx.tx() as db:
        device = db.scalar(select(Device).where(Device.serial == SERIAL))
        assert device is not None
        device.public_key = device_key.verify_key.to_base64()
        device.status = DeviceStatus.ACTIVE.value
    people = _people(ctx)
    now = int(time.time())
    sid = approved_session(ctx, SERIAL, now, purpose="inspection")
    keys = load_remote_keys(ctx.settings)
    engineer_key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = tmp_path / "eng_key"
    key_path.write_bytes(engineer_key.export_private_key("openssh"))
    os.chmod(key_path, 0o600)
    with ctx.tx() as db:
        cert = remote.issue_certificate(
            db,
            ctx.audit,
            people["maker-service"],
            keys.ca,
            sid,
            bytes(engineer_key.export_public_key("openssh")).decode(),
            now=now,
        )
    cert_path = tmp_path / "eng_key-cert.pub"
    cert_path.write_bytes(cert)
    (tmp_path / "rec").mkdir()

    async def main() -> tuple[int, bytes, bytes, float]:
        gateway = Gateway(
            DatabaseSessionAuthority(ctx, keys),
            keys.ca.public_key,
            asyncssh.generate_private_key("ssh-ed25519"),
            tmp_path / "rec",
            revocation_poll=0.5,
        )
        eng_port, dev_port = await gateway.start()
        log = AccessLog(tmp_path / "log", SERIAL, device_key)
        endpoint = DeviceEndpoint(
            DeviceLinkConfig(
                serial=SERIAL,
                gateway_host="127.0.0.1",
                gateway_port=dev_port,
                gateway_host_key=gateway.host_key_line(),
                approval_key=keys.approval_verify_key,
                transfer_dir=tmp_path / "transfer",
                source_address="127.0.0.1",
            ),
            device_key,
            RestrictedShell({"status": lambda argv: CommandResult("pump: idle\n")}),
            log,
            MemoryNonceStore(),
        )
        await endpoint.connect()
        (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{eng_port} {gateway.host_key_line()}\n")
        args = [
            "ssh", "-F", "/dev/null", "-i", str(key_path), "-o", f"CertificateFile={cert_path}",
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "BatchMode=yes",
            "-p", str(eng_port),
        ]  # fmt: skip
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, f"{sid}@127.0.0.1", "status", stdout=-1, stderr=-1, stdin=-1, env=env
            )
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            # A second, interactive connection stays open until the hospital revokes the session.
            live = await asyncio.create_subprocess_exec(
                *args, "-tt", f"{sid}@127.0.0.1", stdout=-1, stderr=-1, stdin=-1, env=env
            )
            await asyncio.sleep(1.5)
            with ctx.tx() as db:
                remote.revoke(db, ctx.audit, people["a-responsible"], sid, reason="stop", now=int(time.time()))
            t0 = time.monotonic()
            await asyncio.wait_for(live.communicate(), 10)
            cut_after = time.monotonic() - t0
        finally:
            await endpoint.close()
            await gateway.close()
            log.close()
        assert proc.returncode is not None
        return proc.returncode, out, err, cut_after

    rc, out, err, cut_after = asyncio.run(main())
    assert rc == 0, err
    assert b"pump: idle" in out
    assert cut_after < 5  # RA-1: revocation ends live sessions within 5 s
    with ctx.tx() as db:
        row = remote.get_session(db, people["maker-admin"], sid)
        assert row.state == "revoked"
        recordings = [(r.path, r.sha256) for r in row.recordings]
        sealed = list(db.scalars(select(AuditEntry).where(AuditEntry.event_type == "remote.recording_sealed")))
    assert recordings and len(sealed) == len(recordings)
    for path, sha in recordings:
        verify_recording(Path(path), sha)
