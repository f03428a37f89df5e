"""The device's local service console (PA-3): the same hospital control as remote maintenance.

A person at the device's service port gets the restricted maintenance shell only with

* a **session ticket** signed by the hospital approval key for this device and window (the same
  ticket the gateway hands the device; checked here with :func:`medsec.remote.ticket.verify_ticket`,
  once per nonce), or
* a **local maintenance code**: eight digits the server shows the engineer of an approved session
  (:mod:`medsec.remote.maintenance_code`), typed with the session id. Each code works once.

Without one the attempt is refused and written to the device's access log (RA-2); with one every
command, allowed or refused, and the end of the console session are written there too.

The approval public key comes from ``ROOT/etc/medsec/remote.json`` (see :mod:`medsec.agent.remote_link`;
the console needs only ``approval_key``, whether or not the remote link is ``enabled``)::

    {"approval_key": "<base64 Ed25519 public key of the server's remote-approval.key>"}

The console opens the access log itself, and the log allows one writer, so it runs while the agent
daemon is stopped (the device is in service mode anyway).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from medsec.agent.remote_link import REMOTE_CONFIG_RELPATH, RemoteLinkConfig
from medsec.atomic_file import atomic_write
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import ConfigError
from medsec.remote.device_side import AccessRecorder, CommandResult, RestrictedShell, ShellCommand
from medsec.remote.errors import AccessRefused, RemoteSessionError
from medsec.remote.maintenance_code import STEP_SECONDS, verify_code
from medsec.remote.ticket import NonceStore, SessionTicket, require_capability, verify_ticket

logger = logging.getLogger(__name__)

USED_CODES_FILE = "console-codes.json"
MAX_CREDENTIAL = 8192
PROMPT = "medsec-service> "


class UsedCodes:
    """Maintenance codes already accepted, kept until they can no longer verify (written atomically)."""

    def __init__(self, path: Path, now: int) -> None:
        self._path = path
        try:
            raw = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as e:
            raise AccessRefused("code_store_damaged", f"cannot read {path}: {e}") from e
        if not isinstance(raw, dict):
            raise AccessRefused("code_store_damaged", f"{path} is not an object")
        self._used = {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and v >= now}

    def __contains__(self, key: object) -> bool:
        return key in self._used

    def add(self, key: str, expires_at: int) -> None:
        self._used[key] = expires_at
        atomic_write(self._path, json.dumps(self._used, sort_keys=True).encode("utf-8"), mode=0o600)


@dataclass(frozen=True)
class ConsoleAuthorization:
    """Who may use the console, under which session, until when."""

    method: str  # "ticket" or "local_code"
    session_id: str
    engineer: str | None
    not_after: int


class LocalConsole:
    """Checks the credential, then runs the restricted shell; every step goes to the access log."""

    def __init__(
        self,
        serial: str,
        device_key: SigningKey,
        approval_key: VerifyKey,
        shell: RestrictedShell,
        access_log: AccessRecorder,
        ticket_nonces: NonceStore,
        used_codes: UsedCodes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.serial = serial
        self._device_key = device_key
        self._approval_key = approval_key
        self._shell = shell
        self._log = access_log
        self._nonces = ticket_nonces
        self._used_codes = used_codes
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    def _refuse(self, err: RemoteSessionError, method: str, session_id: str | None) -> None:
        self._log.record("console.refused", method=method, session=session_id, code=err.code, detail=str(err)[:300])

    def refuse_without_credential(self) -> AccessRefused:
        """Log an attempt that brought neither a ticket nor a code; return the error to raise."""
        err = AccessRefused("no_credential", "the service console needs a session ticket or a maintenance code")
        self._refuse(err, "none", None)
        return err

    def login_with_ticket(self, ticket_text: str) -> ConsoleAuthorization:
        """Accept a hospital-signed ticket for this device and window (each ticket once)."""
        session_id: str | None = None
        try:
            if len(ticket_text) > MAX_CREDENTIAL:
                raise AccessRefused("malformed_ticket", "the ticket is too large")
            ticket = SessionTicket.from_text(ticket_text.strip())
            claims = verify_ticket(ticket, self._approval_key, self.serial, self._now(), self._nonces)
            session_id = claims.session_id
            require_capability(claims, "shell")
        except RemoteSessionError as e:
            self._refuse(e, "ticket", session_id)
            raise
        auth = ConsoleAuthorization("ticket", claims.session_id, claims.engineer, claims.not_after)
        self._log.record(
            "console.login",
            method="ticket",
            session=claims.session_id,
            engineer=claims.engineer,
            approvers=list(claims.approvers),
            emergency=claims.emergency,
            nonce=claims.nonce,
        )
        self._log.checkpoint()
        return auth

    def login_with_code(self, session_id: str, code: str) -> ConsoleAuthorization:
        """Accept a one-time local maintenance code the server showed the session's engineer."""
        now = self._now()
        sid = session_id.strip()[:80]
        try:
            if not sid:
                raise AccessRefused("malformed_code", "give the session id with the code")
            step = verify_code(self._device_key, self._approval_key, self.serial, sid, code, now)
            key = f"{sid}|{step}"
            if key in self._used_codes:
                raise AccessRefused("code_replayed", "this maintenance code was already used")
        except RemoteSessionError as e:
            self._refuse(e, "local_code", sid or None)
            raise
        not_after = (step + 2) * STEP_SECONDS
        self._used_codes.add(key, not_after)
        self._log.record("console.login", method="local_code", session=sid, step=step)
        self._log.checkpoint()
        return ConsoleAuthorization("local_code", sid, None, not_after)

    def run_line(self, auth: ConsoleAuthorization, line: str) -> CommandResult:
        """Run one command line in the restricted shell; raise AccessRefused if it is not allowed."""
        if self._now() >= auth.not_after:
            err = AccessRefused("console_expired", "the console authorization has expired")
            self._log.record("console.command_refused", session=auth.session_id, code=err.code, line=line[:300])
            raise err
        try:
            argv = self._shell.parse(line)
        except AccessRefused as e:
            self._log.record("console.command_refused", session=auth.session_id, code=e.code, line=line[:300])
            raise
        result = self._shell.run(argv)
        self._log.record("console.command", session=auth.session_id, argv=list(argv), status=result.status)
        return result

    def end(self, auth: ConsoleAuthorization, reason: str, commands: int) -> None:
        self._log.record("console.ended", session=auth.session_id, reason=reason, commands=commands)
        self._log.checkpoint()

    def serve(self, auth: ConsoleAuthorization, lines: Iterable[str], out: TextIO) -> int:
        """The interactive loop: read lines until ``exit`` or end of input; return the commands run."""
        commands = 0
        out.write(f"medsec service console · {self.serial} · session {auth.session_id}\n")
        out.write(f"commands: {', '.join(self._shell.names)}, exit\n{PROMPT}")
        out.flush()
        reason = "end_of_input"
        for raw in lines:
            line = raw.strip()
            if line in ("exit", "logout"):
                reason = "logout"
                break
            if line:
                try:
                    result = self.run_line(auth, line)
                    commands += 1
                    out.write(result.output)
                except AccessRefused as e:
                    out.write(f"refused: {e.code}: {e}\n")
                    if e.code == "console_expired":
                        reason = "expired"
                        break
            out.write(PROMPT)
            out.flush()
        out.write("\n")
        self.end(auth, reason, commands)
        return commands


def device_commands(status: Callable[[], Mapping[str, Any]], version_file: Path) -> dict[str, ShellCommand]:
    """The maintenance commands of a medsec device: read-only views of the agent's state."""

    def show_status(_argv: object) -> CommandResult:
        return CommandResult("".join(f"{k}: {v}\n" for k, v in status().items()))

    def show_version(_argv: object) -> CommandResult:
        try:
            return CommandResult(version_file.read_text("utf-8").strip() + "\n")
        except OSError as e:
            return CommandResult(f"cannot read the version: {e.strerror}\n", status=1)

    return {"status": show_status, "version": show_version}


def open_console_and_serve(
    root: Path,
    *,
    ticket_text: str | None,
    session_id: str | None,
    code: str | None,
    lines: Iterable[str],
    out: TextIO,
    clock: Callable[[], float] = time.time,
) -> int:
    """``medsec agent --root DIR --console``: check the credential, then serve the restricted shell.

    Raises ConfigError if the device is not set up for it, AccessRefused/TicketError on a refusal
    (already written to the access log). Returns the number of commands run.
    """
    from medsec.agent.access_log import AccessLog
    from medsec.agent.config import AgentConfig
    from medsec.agent.status import agent_status
    from medsec.remote.ticket import FileNonceStore, nonce_store_path

    config = AgentConfig.load(root)
    layout = config.layout
    remote = RemoteLinkConfig.load(root)
    if remote is None:
        raise ConfigError(f"remote access is not configured on this device ({root / REMOTE_CONFIG_RELPATH} is missing)")
    if not layout.key_file.exists():
        raise ConfigError(f"the device has no key yet ({layout.key_file}): run the agent once to enroll")
    key = SigningKey.load(layout.key_file)
    now = int(clock())
    access_log = AccessLog(layout.access_log_dir, config.serial, key, clock)
    try:
        console = LocalConsole(
            config.serial,
            key,
            remote.approval_key,
            RestrictedShell(device_commands(lambda: agent_status(root), config.version_file)),
            access_log,
            FileNonceStore(nonce_store_path(layout.state_dir), now),
            UsedCodes(layout.state_dir / USED_CODES_FILE, now),
            clock,
        )
        if ticket_text is not None:
            auth = console.login_with_ticket(ticket_text)
        elif session_id is not None and code is not None:
            auth = console.login_with_code(session_id, code)
        else:
            raise console.refuse_without_credential()
        return console.serve(auth, lines, out)
    finally:
        access_log.close()
