"""The device's local service console (PA-3): a ticket or a one-time code, or nothing; all of it logged."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsec.agent.config import AgentConfig
from medsec.agent.console import REMOTE_CONFIG_RELPATH, open_console_and_serve
from medsec.cli.main import app as cli_app
from medsec.crypto.keys import SigningKey
from medsec.errors import ConfigError
from medsec.remote.errors import AccessRefused, TicketError
from medsec.remote.maintenance_code import STEP_SECONDS, issue_code
from medsec.remote.session import (
    Capabilities,
    MaintenanceSession,
    SessionPolicy,
    SessionRequest,
    request_session,
)
from medsec.remote.ticket import issue_ticket

from .conftest import SERIAL, events, make_device_root, read_access_log

pytestmark = pytest.mark.req("PA-3")

NOW = 1_900_000_000
POLICY = SessionPolicy(approvers=frozenset({"dr.sato"}), approvals_required=1)


def _session(serial: str = SERIAL, *, shell: bool = True) -> MaintenanceSession:
    request = SessionRequest(
        device_serial=serial,
        engineer="eng.tanaka",
        purpose="quarterly inspection",
        planned_work="read status",
        expected_impact="none",
        expected_downtime_minutes=0,
        rollback="nothing to roll back",
        capabilities=Capabilities(shell=shell, file_transfer=not shell, ports=()),
        window_start=NOW - 10,
        window_end=NOW + 3600,
    )
    session, _ = request_session(request, POLICY, NOW - 10)
    return session.approve("dr.sato", NOW - 5)[0]


class Device:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config: AgentConfig = make_device_root(root, "http://127.0.0.1:9", version="2.4.1")
        self.key = SigningKey.generate()
        self.config.layout.state_dir.mkdir(parents=True, exist_ok=True)
        self.key.save(self.config.layout.key_file)
        self.approval_key = SigningKey.generate()
        (root / REMOTE_CONFIG_RELPATH).write_text(
            json.dumps({"approval_key": self.approval_key.verify_key.to_base64()})
        )

    def console(self, lines: list[str], *, at: int = NOW, **credential: str | None) -> tuple[int, str]:
        out = io.StringIO()
        count = open_console_and_serve(
            self.root,
            ticket_text=credential.get("ticket_text"),
            session_id=credential.get("session_id"),
            code=credential.get("code"),
            lines=lines,
            out=out,
            clock=lambda: at,
        )
        return count, out.getvalue()

    def log(self) -> list[dict[str, object]]:
        return read_access_log(self.config)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return Device(tmp_path / "device")


def test_signed_ticket_opens_the_console_and_every_command_is_logged(device: Device) -> None:
    ticket = issue_ticket(_session(), device.approval_key).to_text()
    count, output = device.console(["status", "version", "rm -rf /", "exit"], ticket_text=ticket)
    assert count == 2
    assert "serial: SN-0001" in output and "2.4.1" in output and "refused: command_not_allowed" in output
    entries = device.log()
    assert events(entries) == [
        "console.login",
        "console.command",
        "console.command",
        "console.command_refused",
        "console.ended",
    ]
    login = entries[0]
    assert login["method"] == "ticket" and login["engineer"] == "eng.tanaka" and login["approvers"] == ["dr.sato"]
    assert entries[1]["argv"] == ["status"] and entries[4]["reason"] == "logout"


def test_console_without_credential_is_refused_and_logged(device: Device) -> None:
    with pytest.raises(AccessRefused) as err:
        device.console(["status"])
    assert err.value.code == "no_credential"
    assert events(device.log()) == ["console.refused"]


def test_ticket_not_signed_by_the_hospital_approval_key_is_refused(device: Device) -> None:
    forged = issue_ticket(_session(), SigningKey.generate()).to_text()
    with pytest.raises(TicketError) as err:
        device.console(["status"], ticket_text=forged)
    assert err.value.code == "bad_ticket_signature"
    assert [(e["event"], e["code"]) for e in device.log()] == [("console.refused", "bad_ticket_signature")]


def test_ticket_for_another_device_is_refused(device: Device) -> None:
    other = issue_ticket(_session("SN-0002"), device.approval_key).to_text()
    with pytest.raises(TicketError) as err:
        device.console(["status"], ticket_text=other)
    assert err.value.code == "wrong_device"


def test_replayed_ticket_is_refused(device: Device) -> None:
    ticket = issue_ticket(_session(), device.approval_key).to_text()
    device.console(["exit"], ticket_text=ticket)
    with pytest.raises(TicketError) as err:
        device.console(["status"], ticket_text=ticket)
    assert err.value.code == "ticket_replayed"
    assert events(device.log())[-1] == "console.refused"


def test_expired_ticket_is_refused(device: Device) -> None:
    ticket = issue_ticket(_session(), device.approval_key).to_text()
    with pytest.raises(TicketError) as err:
        device.console(["status"], ticket_text=ticket, at=NOW + 7200)
    assert err.value.code == "ticket_expired"


def test_ticket_without_shell_capability_is_refused(device: Device) -> None:
    ticket = issue_ticket(_session(shell=False), device.approval_key).to_text()
    with pytest.raises(TicketError) as err:
        device.console(["status"], ticket_text=ticket)
    assert err.value.code == "capability_not_granted"


def test_local_maintenance_code_from_the_server_opens_the_console_once(device: Device) -> None:
    code = issue_code(device.approval_key, device.key.verify_key, SERIAL, "ms-0a1b", NOW)
    count, output = device.console(["status", "exit"], session_id="ms-0a1b", code=code, at=NOW + 60)
    assert count == 1 and "serial: SN-0001" in output
    with pytest.raises(AccessRefused) as err:
        device.console(["status"], session_id="ms-0a1b", code=code, at=NOW + 120)
    assert err.value.code == "code_replayed"
    entries = device.log()
    assert events(entries) == ["console.login", "console.command", "console.ended", "console.refused"]
    assert entries[0]["method"] == "local_code" and entries[0]["session"] == "ms-0a1b"


@pytest.mark.parametrize(
    ("session_id", "at", "code_of"),
    [
        ("ms-other", NOW, "right"),  # a code for another session
        ("ms-0a1b", NOW + 3 * STEP_SECONDS, "right"),  # too late
        ("ms-0a1b", NOW, "guessed"),
        ("ms-0a1b", NOW, "other_device"),
    ],
)
def test_wrong_or_stale_maintenance_code_is_refused(device: Device, session_id: str, at: int, code_of: str) -> None:
    if code_of == "right":
        code = issue_code(device.approval_key, device.key.verify_key, SERIAL, "ms-0a1b", NOW)
    elif code_of == "other_device":
        code = issue_code(device.approval_key, SigningKey.generate().verify_key, SERIAL, "ms-0a1b", NOW)
    else:
        code = "12345678"
    with pytest.raises(AccessRefused) as err:
        device.console(["status"], session_id=session_id, code=code, at=at)
    assert err.value.code == "bad_code"
    assert [e["event"] for e in device.log()] == ["console.refused"]


def test_console_ends_when_the_authorization_expires(device: Device) -> None:
    ticket = issue_ticket(_session(), device.approval_key).to_text()
    times = iter([NOW, NOW, NOW + 7200, NOW + 7200, NOW + 7200])
    out = io.StringIO()
    open_console_and_serve(
        device.root,
        ticket_text=ticket,
        session_id=None,
        code=None,
        lines=["status", "status"],
        out=out,
        clock=lambda: next(times, NOW + 7200),
    )
    assert "refused: console_expired" in out.getvalue()
    assert events(device.log())[-2:] == ["console.command_refused", "console.ended"]


def test_device_without_remote_configuration_has_no_console(device: Device) -> None:
    (device.root / REMOTE_CONFIG_RELPATH).unlink()
    with pytest.raises(ConfigError):
        device.console(["status"], ticket_text="{}")


def test_cli_console_refuses_without_a_credential(device: Device) -> None:
    result = CliRunner().invoke(cli_app, ["agent", "--root", str(device.root), "--console"], input="status\n")
    assert result.exit_code == 1
    assert "no_credential" in result.output + (result.stderr if result.stderr_bytes else "")
    assert events(device.log()) == ["console.refused"]


def test_cli_console_with_a_ticket_file(device: Device, tmp_path: Path) -> None:
    now = int(time.time())
    session = _session()
    # A ticket valid now (the CLI uses the real clock).
    import dataclasses

    req = dataclasses.replace(session.request, window_start=now - 10, window_end=now + 600)
    live, _ = request_session(req, POLICY, now - 10)
    ticket_file = tmp_path / "ticket.json"
    ticket_file.write_text(issue_ticket(live.approve("dr.sato", now)[0], device.approval_key).to_text())
    result = CliRunner().invoke(
        cli_app,
        ["agent", "--root", str(device.root), "--console", "--ticket", str(ticket_file)],
        input="version\nexit\n",
    )
    assert result.exit_code == 0, result.output
    assert "2.4.1" in result.output
    assert events(device.log()) == ["console.login", "console.command", "console.ended"]
