"""Attacks the device itself must refuse, even when the gateway is compromised (RA-1, RA-2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from medsec.agent.access_log import AccessLog
from medsec.crypto.keys import SigningKey
from medsec.errors import LogStoreError
from medsec.remote.authority import MemorySessionAuthority
from medsec.remote.errors import RecordingError
from medsec.remote.recording import verify_recording
from medsec.remote.ticket import SessionTicket, issue_ticket

from .world import SERIAL, World, approve, make_session, run


class ReplayingAuthority(MemorySessionAuthority):
    """A gateway that captured one ticket and plays it again."""

    captured: SessionTicket | None = None

    def ticket(self, session_id: str, now: int) -> SessionTicket:
        if self.captured is None:
            self.captured = super().ticket(session_id, now)
        return self.captured


class MisroutingAuthority(MemorySessionAuthority):
    """A gateway that sends another device's approved ticket to this device."""

    def ticket(self, session_id: str, now: int) -> SessionTicket:
        other = approve(make_session(now, serial="SN-0002"), now)
        return issue_ticket(other, self._approval_key)


class StolenCaAuthority(MemorySessionAuthority):
    """An attacker with the CA key and the gateway, but no hospital approval key."""

    def ticket(self, session_id: str, now: int) -> SessionTicket:
        return issue_ticket(self.sessions[session_id], SigningKey.generate())


def _attack(tmp_path: Path, authority_cls: type[MemorySessionAuthority], attempts: int = 1) -> World:
    w = World(tmp_path)
    results: list[tuple[int, bytes, bytes]] = []

    async def main() -> None:
        await w.start(authority=authority_cls(w.approval_key))
        try:
            now = int(time.time())
            session = w.authority.put(approve(make_session(now), now))  # type: ignore[union-attr]
            cert = w.issue_cert(session)
            for _ in range(attempts):
                results.append(await w.ssh(session.id, cert, "status"))
        finally:
            await w.close()

    run(main())
    w.results = results  # type: ignore[attr-defined]
    return w


def _refused_codes(w: World) -> list[object]:
    return [e["code"] for e in w.log_entries if e["event"] == "remote.refused"]


@pytest.mark.req("RA-1")
def test_replayed_ticket_is_refused_by_the_device(tmp_path: Path) -> None:
    w = _attack(tmp_path, ReplayingAuthority, attempts=2)
    first, second = w.results  # type: ignore[attr-defined]
    assert first[0] == 0 and b"pump" in first[1]
    assert second[0] != 0 and b"ticket_replayed" in second[2]
    assert _refused_codes(w) == ["ticket_replayed"]


@pytest.mark.req("RA-1")
def test_ticket_for_another_device_is_refused(tmp_path: Path) -> None:
    w = _attack(tmp_path, MisroutingAuthority)
    assert w.results[0][0] != 0 and b"wrong_device" in w.results[0][2]  # type: ignore[attr-defined]
    assert _refused_codes(w) == ["wrong_device"]


@pytest.mark.req("RA-1")
def test_stolen_ca_key_without_hospital_approval_is_refused(tmp_path: Path) -> None:
    w = _attack(tmp_path, StolenCaAuthority)
    assert w.results[0][0] != 0 and b"bad_ticket_signature" in w.results[0][2]  # type: ignore[attr-defined]
    assert _refused_codes(w) == ["bad_ticket_signature"]
    assert not [e for e in w.log_entries if e["event"] == "remote.login"]


@pytest.mark.req("RA-2")
def test_disallowed_command_is_refused_and_logged(tmp_path: Path) -> None:
    w = World(tmp_path)
    out: list[tuple[int, bytes, bytes]] = []

    async def main() -> None:
        await w.start()
        try:
            now = int(time.time())
            session = w.authority.put(approve(make_session(now), now))  # type: ignore[union-attr]
            cert = w.issue_cert(session)
            out.append(await w.ssh(session.id, cert, "rm -rf /"))
            out.append(await w.ssh(session.id, cert, "status; reboot"))
        finally:
            await w.close()

    run(main())
    assert all(rc != 0 for rc, _, _ in out)
    assert _refused_codes(w) == ["command_not_allowed", "shell_syntax_refused"]


@pytest.mark.req("RA-2")
def test_file_transfer_is_hashed_in_log_and_recording(tmp_path: Path) -> None:
    import hashlib

    w = World(tmp_path)
    payload = b"calibration table\n" * 1000

    async def main() -> None:
        await w.start()
        try:
            now = int(time.time())
            session = w.authority.put(approve(make_session(now), now))  # type: ignore[union-attr]
            cert = w.issue_cert(session)
            rc, _, err = await w.ssh(session.id, cert, "put cal.bin", stdin=payload)
            assert rc == 0, err
            rc, got, _ = await w.ssh(session.id, cert, "get cal.bin")
            assert rc == 0 and got == payload
        finally:
            await w.close()

    run(main())
    digest = hashlib.sha256(payload).hexdigest()
    transfers = [e for e in w.log_entries if e["event"] == "remote.file_transfer"]
    assert [t["sha256"] for t in transfers] == [digest, digest]
    recs = next(iter(w.authority.recordings.values()))  # type: ignore[union-attr]
    markers = [m for path, sha in recs for m in verify_recording(path, sha).markers]
    assert any(f"sha256={digest}" in m and m.startswith("file put") for m in markers)


@pytest.mark.req("RA-2")
def test_tampered_recording_is_detected(tmp_path: Path) -> None:
    w = _attack(tmp_path, MemorySessionAuthority)
    path, sha = next(iter(w.authority.recordings.values()))[0]  # type: ignore[union-attr]
    verify_recording(path, sha)
    text = path.read_text()
    path.write_text(text.replace("pump: idle", "pump: busy"))
    with pytest.raises(RecordingError) as e:
        verify_recording(path, sha)
    assert e.value.code == "recording_tampered"
    # Re-sealing after the edit still differs from the hash in the audit log.
    lines = path.read_text().splitlines(keepends=True)
    import hashlib

    body = "".join(lines[:-1])
    lines[-1] = json.dumps([1.0, "m", "sha256:" + hashlib.sha256(body.encode()).hexdigest()]) + "\n"
    path.write_text(body + lines[-1])
    verify_recording(path)
    with pytest.raises(RecordingError) as e:
        verify_recording(path, sha)
    assert e.value.code == "recording_tampered"


@pytest.mark.req("RA-2")
def test_tampered_device_log_is_detected(tmp_path: Path) -> None:
    w = _attack(tmp_path, MemorySessionAuthority)
    log_dir = tmp_path / f"log-{SERIAL}"
    entries = log_dir / "entries.dat"
    data = entries.read_bytes()
    assert b"remote.command" in data
    entries.write_bytes(data.replace(b'"status"', b'"reboot"'))
    with pytest.raises(LogStoreError):
        log = AccessLog(log_dir, SERIAL, w.device_key)
        try:
            log.verify()
        finally:
            log.close()
