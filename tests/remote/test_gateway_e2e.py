from __future__ import annotations

import time
from pathlib import Path

import pytest

from medsec.remote.recording import verify_recording

from .world import World, approve, make_session, run


@pytest.mark.req("RA-1")
@pytest.mark.req("RA-2")
def test_engineer_reaches_device_shell_with_openssh(tmp_path: Path) -> None:
    async def main() -> None:
        w = World(tmp_path)
        await w.start()
        try:
            now = int(time.time())
            session = w.authority.put(approve(make_session(now), now))  # type: ignore[union-attr]
            cert = w.issue_cert(session)
            rc, out, err = await w.ssh(session.id, cert, "status")
            assert rc == 0, err
            assert b"pump: idle" in out
        finally:
            await w.close()
        entries = [e["event"] for e in w.log_entries]
        assert "remote.login" in entries and "remote.command" in entries and "remote.session_end" in entries
        recs = w.authority.recordings[session.id]  # type: ignore[union-attr]
        summary = verify_recording(recs[0][0], recs[0][1])
        assert any(m.startswith("approval dr.sato") for m in summary.markers)

    run(main())


def _scenario(tmp_path: Path, body, **start_kwargs) -> World:  # type: ignore[no-untyped-def]
    w = World(tmp_path)

    async def main() -> None:
        await w.start(**start_kwargs)
        try:
            await body(w)
        finally:
            await w.close()

    run(main())
    return w


@pytest.mark.req("RA-1")
def test_session_without_approval_is_refused(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        now = int(time.time())
        session = w.authority.put(make_session(now))  # type: ignore[union-attr]
        assert w.engineer_key is not None
        cert = w.ca.sign(
            w.engineer_key,
            engineer="eng.tanaka",
            session_id=session.id,
            valid_after=now - 60,
            valid_before=now + 600,
            permit_pty=True,
            permit_port_forwarding=False,
        )
        path = tmp_path / "c-cert.pub"
        path.write_bytes(cert.export_certificate("openssh"))
        rc, _, err = await w.ssh(session.id, path, "status")
        assert rc == 255 and b"Permission denied" in err

    w = _scenario(tmp_path, body)
    assert "session_not_approved" in w.gateway.refusals()  # type: ignore[union-attr]


@pytest.mark.req("RA-1")
def test_expired_window_is_refused(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        now = int(time.time())
        session = w.authority.put(approve(make_session(now, start=now - 600, length=300), now - 500))  # type: ignore[union-attr]
        assert w.engineer_key is not None
        cert = w.ca.sign(
            w.engineer_key,
            engineer="eng.tanaka",
            session_id=session.id,
            valid_after=now - 600,
            valid_before=now + 600,
            permit_pty=True,
            permit_port_forwarding=False,
        )
        path = tmp_path / "c-cert.pub"
        path.write_bytes(cert.export_certificate("openssh"))
        rc, _, _ = await w.ssh(session.id, path, "status")
        assert rc == 255

    w = _scenario(tmp_path, body)
    assert "window_closed" in w.gateway.refusals()  # type: ignore[union-attr]


@pytest.mark.req("RA-1")
def test_certificate_of_another_session_is_refused(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        now = int(time.time())
        a = w.authority.put(approve(make_session(now), now))  # type: ignore[union-attr]
        b = w.authority.put(approve(make_session(now), now))  # type: ignore[union-attr]
        cert_a = w.issue_cert(a)
        rc, _, _ = await w.ssh(b.id, cert_a, "status")
        assert rc == 255

    w = _scenario(tmp_path, body)
    assert "certificate_not_for_session" in w.gateway.refusals()  # type: ignore[union-attr]


@pytest.mark.req("RA-1")
def test_port_forward_to_unapproved_port_is_refused(tmp_path: Path) -> None:
    import asyncio
    import socket

    async def body(w: World) -> None:
        now = int(time.time())
        session = w.authority.put(approve(make_session(now, ports=[10400]), now))  # type: ignore[union-attr]
        cert = w.issue_cert(session)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            lport = s.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *w.ssh_args(session.id, cert, "-N", "-L", f"{lport}:127.0.0.1:2222"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        try:
            for _ in range(100):
                try:
                    r, wr = await asyncio.open_connection("127.0.0.1", lport)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            assert await asyncio.wait_for(r.read(), 5) == b""
            wr.close()
            await wr.wait_closed()
        finally:
            proc.terminate()
            await proc.wait()

    w = _scenario(tmp_path, body)
    assert "port_not_approved" in w.gateway.refusals()  # type: ignore[union-attr]


@pytest.mark.req("RA-1")
def test_agent_forwarding_is_refused(tmp_path: Path) -> None:
    import asyncio
    import os

    async def body(w: World) -> None:
        sock = str(tmp_path / "agent.sock")
        agent = await asyncio.create_subprocess_exec(
            "ssh-agent", "-D", "-a", sock, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            for _ in range(100):
                if os.path.exists(sock):
                    break
                await asyncio.sleep(0.02)
            now = int(time.time())
            session = w.authority.put(approve(make_session(now), now))  # type: ignore[union-attr]
            cert = w.issue_cert(session)
            rc, out, _ = await w.ssh(session.id, cert, "status", "-A", env={"SSH_AUTH_SOCK": sock})
            assert rc == 0 and b"pump" in out
        finally:
            agent.terminate()
            await agent.wait()

    w = _scenario(tmp_path, body)
    assert "agent_forwarding_refused" in w.gateway.refusals()  # type: ignore[union-attr]


@pytest.mark.req("RA-1")
def test_revoked_session_ends_within_five_seconds(tmp_path: Path) -> None:
    import asyncio

    async def body(w: World) -> None:
        now = int(time.time())
        session = w.authority.put(approve(make_session(now), now))  # type: ignore[union-attr]
        cert = w.issue_cert(session)
        proc = await asyncio.create_subprocess_exec(
            *w.ssh_args(session.id, cert, "-tt"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert b"medsec-maint$" in await asyncio.wait_for(proc.stdout.readuntil(b"$ "), 10)
        proc.stdin.write(b"version\r")
        assert b"firmware" in await asyncio.wait_for(proc.stdout.readuntil(b"$ "), 10)
        revoked_at = time.monotonic()
        w.authority.put(session.revoke("dr.sato", int(time.time()), "patient needs the device")[0])  # type: ignore[union-attr]
        await asyncio.wait_for(proc.wait(), 5)
        assert time.monotonic() - revoked_at < 5
        proc.stdin.close()
        await proc.communicate()

    w = _scenario(tmp_path, body)
    assert any(e.kind == "session_cut" and e.code == "session_revoked" for e in w.gateway.events)  # type: ignore[union-attr]
    ends = [e for e in w.log_entries if e["event"] == "remote.session_end"]
    assert ends and ends[-1]["reason"] == "session_revoked"
