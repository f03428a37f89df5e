"""The maintenance SSH gateway (RA-1): engineers with stock OpenSSH on one side, dialled-out devices on the other.

Engineers log in with the session id as user name and an OpenSSH certificate
from the maintenance CA (:mod:`medsec.remote.certs`); the gateway admits the
login only while the :class:`SessionAuthority` says the session is approved
and in its window. Devices log in with their enrolled device key and offer a
reverse listener; every engineer channel becomes one channel to that one
device, preceded by a fresh hospital-signed ticket the device checks itself.
Agent and X11 forwarding, remote forwards, subsystems and local forwards to
ports not approved are refused. Terminal channels are recorded as asciicast v2.
A revoked session is cut within ``revocation_poll`` seconds (RA-1: within 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncssh
from asyncssh.packet import SSHPacket

from medsec.crypto.keys import VerifyKey
from medsec.remote import device_link as link
from medsec.remote.device_side import device_public_key_line
from medsec.remote.errors import AccessRefused, RemoteSessionError
from medsec.remote.recording import AsciicastRecorder
from medsec.remote.ticket import SessionTicket

logger = logging.getLogger(__name__)

_HIGH_WATER = 1 << 20


@dataclass(frozen=True)
class SessionGrant:
    """What the server approved, as the gateway needs it."""

    session_id: str
    device_serial: str
    engineer: str
    shell: bool
    file_transfer: bool
    ports: frozenset[int]
    not_before: int
    not_after: int
    approvers: tuple[str, ...] = ()
    emergency: bool = False


class SessionAuthority(Protocol):
    """The server's view of sessions; raise AccessRefused (with its code) to refuse."""

    def grant(self, session_id: str, now: int) -> SessionGrant: ...

    def ticket(self, session_id: str, now: int) -> SessionTicket: ...

    def device_key(self, serial: str) -> VerifyKey | None: ...

    def recording_sealed(self, session_id: str, path: Path, sha256: str) -> None: ...


@dataclass(frozen=True)
class GatewayEvent:
    kind: str
    session_id: str | None = None
    code: str | None = None
    detail: str = ""
    at: float = field(default_factory=time.time)


class Gateway:
    def __init__(
        self,
        authority: SessionAuthority,
        ca_public_key: asyncssh.SSHKey,
        host_key: asyncssh.SSHKey,
        recordings_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        revocation_poll: float = 1.0,
        on_event: Callable[[GatewayEvent], None] | None = None,
    ) -> None:
        self.authority = authority
        self.ca_public_key = ca_public_key.convert_to_public()
        self.host_key = host_key
        self.recordings_dir = recordings_dir
        self.clock = clock
        self.revocation_poll = revocation_poll
        self.events: list[GatewayEvent] = []
        self._on_event = on_event
        self.devices: dict[str, asyncssh.SSHServerConnection] = {}
        self._device_waiters: dict[str, asyncio.Event] = {}
        self._engineers: set[_EngineerServer] = set()
        self._servers: list[asyncssh.SSHAcceptor] = []
        self._watcher: asyncio.Task[None] | None = None

    def host_key_line(self) -> str:
        return bytes(self.host_key.convert_to_public().export_public_key("openssh")).decode("ascii").strip()

    def emit(self, kind: str, session_id: str | None = None, code: str | None = None, detail: str = "") -> None:
        event = GatewayEvent(kind, session_id, code, detail)
        self.events.append(event)
        logger.info("gateway %s session=%s code=%s %s", kind, session_id, code, detail)
        if self._on_event is not None:
            self._on_event(event)

    def refusals(self) -> list[str]:
        return [e.code for e in self.events if e.kind == "refused" and e.code]

    async def start(
        self,
        engineer_host: str = "127.0.0.1",
        engineer_port: int = 0,
        device_host: str = "127.0.0.1",
        device_port: int = 0,
    ) -> tuple[int, int]:
        """Listen for engineers and for devices (on separate addresses, so devices stay on the service LAN)."""
        common: dict[str, Any] = {
            "server_host_keys": [self.host_key],
            "agent_forwarding": False,
            "x11_forwarding": False,
            "allow_scp": False,
            "config": [],
        }
        eng = await asyncssh.create_server(lambda: _EngineerServer(self), engineer_host, engineer_port, **common)
        dev = await asyncssh.create_server(lambda: _DeviceServer(self), device_host, device_port, **common)
        self._servers = [eng, dev]
        self._watcher = asyncio.create_task(self._watch_revocations())
        return eng.sockets[0].getsockname()[1], dev.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for server in self._servers:
            server.close()
        for eng in list(self._engineers):
            eng.shut("gateway_stopping")
        for conn in list(self.devices.values()):
            conn.close()
        for server in self._servers:
            await server.wait_closed()
        for eng in list(self._engineers):
            await eng.closed()

    def revoke(self, session_id: str) -> None:
        """Cut every live connection of ``session_id`` now (the server calls this on revocation)."""
        for eng in list(self._engineers):
            if eng.grant is not None and eng.grant.session_id == session_id:
                eng.shut("session_revoked")

    async def _watch_revocations(self) -> None:
        while True:
            await asyncio.sleep(self.revocation_poll)
            now = int(self.clock())
            for eng in list(self._engineers):
                if eng.grant is None:
                    continue
                try:
                    self.authority.grant(eng.grant.session_id, now)
                except AccessRefused as e:
                    eng.shut(e.code)
                except Exception:
                    logger.exception("session authority failed; keeping the session until the next poll")

    async def device_connection(self, serial: str, timeout: float = 5.0) -> asyncssh.SSHServerConnection:
        conn = self.devices.get(serial)
        if conn is None:
            event = self._device_waiters.setdefault(serial, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
            conn = self.devices.get(serial)
        if conn is None:
            raise AccessRefused("device_not_connected", f"device {serial} has no maintenance connection")
        return conn

    def _device_up(self, serial: str, conn: asyncssh.SSHServerConnection) -> None:
        old = self.devices.get(serial)
        if old is not None and old is not conn:
            old.close()
        self.devices[serial] = conn
        self._device_waiters.pop(serial, asyncio.Event()).set()
        self.emit("device_connected", detail=serial)

    def _device_down(self, serial: str, conn: asyncssh.SSHServerConnection) -> None:
        if self.devices.get(serial) is conn:
            del self.devices[serial]
            self.emit("device_disconnected", detail=serial)


class _NoListener(asyncssh.SSHListener):
    """The device's reverse 'listener' exists only as a name; nothing listens on the gateway."""

    def get_port(self) -> int:
        return link.LISTEN_PORT

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class _DeviceServer(asyncssh.SSHServer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.serial: str | None = None
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self.serial is not None and self.conn is not None:
            self.gateway._device_down(self.serial, self.conn)

    def begin_auth(self, username: str) -> bool:
        if username.startswith("device-"):
            key = self.gateway.authority.device_key(username.removeprefix("device-"))
            if key is not None:
                self.serial = username.removeprefix("device-")
                self._key_line = device_public_key_line(key)
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self.serial is None:
            self.gateway.emit("refused", code="unknown_device", detail=username)
            return False
        expected = asyncssh.import_public_key(self._key_line)
        return bool(key.public_data == expected.public_data)

    def auth_completed(self) -> None:
        assert self.serial is not None and self.conn is not None
        self.gateway._device_up(self.serial, self.conn)

    def server_requested(self, listen_host: str, listen_port: int) -> asyncssh.SSHListener | bool:
        if (listen_host, listen_port) == (link.LISTEN_HOST, link.LISTEN_PORT):
            return _NoListener()
        return False

    def session_requested(self) -> bool:
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return False  # a device never reaches anything through the gateway


class _GuardedChannel(asyncssh.SSHServerChannel[bytes]):
    """Refuses agent and X11 forwarding with a recorded reason (the certificate forbids both)."""

    refuse: Callable[[str], None]

    def _process_auth_agent_req_at_openssh_dot_com_request(self, packet: SSHPacket) -> None:
        packet.check_end()
        self.refuse("agent_forwarding_refused")
        self._report_response(False)

    def _process_x11_req_request(self, packet: SSHPacket) -> bool:
        self.refuse("x11_forwarding_refused")
        return False


class _EngineerServer(asyncssh.SSHServer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.username = ""
        self.grant: SessionGrant | None = None
        self.ca_accepted = False
        self.authed = False
        self._control: asyncio.Task[tuple[str, asyncssh.SSHServerConnection]] | None = None
        self._control_writer: asyncssh.SSHWriter[bytes] | None = None
        self._bridges: set[asyncio.Task[None]] = set()
        self._done = asyncio.Event()
        self._shut_reason: str | None = None

    # -- authentication -------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ca_accepted and not self.authed:
            # asyncssh rejected a CA-signed certificate after our checks: principal or validity mismatch.
            self.gateway.emit("refused", self.username, "certificate_not_for_session")
        self.gateway._engineers.discard(self)
        if self._control is not None and not self._control.done():
            self._control.cancel()
        if self._control_writer is not None:
            with contextlib.suppress(Exception):
                self._control_writer.write(
                    link.json_frame(link.HEADER, {"kind": "end", "reason": self._shut_reason or "completed"})
                )
                self._control_writer.close()
        if self.authed:
            self.gateway.emit("session_closed", self.username, detail=self._shut_reason or "completed")
        self._done.set()

    async def closed(self) -> None:
        await self._done.wait()
        if self._bridges:
            await asyncio.gather(*self._bridges, return_exceptions=True)

    def begin_auth(self, username: str) -> bool:
        self.username = username
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self.gateway.emit("refused", username, "certificate_required")
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if key.public_data != self.gateway.ca_public_key.public_data:
            self.gateway.emit("refused", username, "unknown_ca")
            return False
        try:
            grant = self.gateway.authority.grant(username, int(self.gateway.clock()))
        except RemoteSessionError as e:
            self.gateway.emit("refused", username, e.code, str(e))
            return False
        self.grant = grant
        self.ca_accepted = True
        return True

    def auth_completed(self) -> None:
        self.authed = True
        self.gateway._engineers.add(self)
        self.gateway.emit("session_login", self.username)
        self._control = asyncio.create_task(self._open_control())

    def shut(self, reason: str) -> None:
        if self._shut_reason is None:
            self._shut_reason = reason
            self.gateway.emit("session_cut", self.username, reason)
        if self.conn is not None:
            self.conn.close()

    # -- the device side ----------------------------------------------------------------

    async def _open_control(self) -> tuple[str, asyncssh.SSHServerConnection]:
        """Open the session channel to the device with a fresh ticket; the device checks it."""
        assert self.grant is not None
        grant = self.grant
        dev = await self.gateway.device_connection(grant.device_serial)
        ticket = self.gateway.authority.ticket(grant.session_id, int(self.gateway.clock()))
        reader, writer = await dev.open_connection(link.LISTEN_HOST, link.LISTEN_PORT, "engineer", 0)
        writer.write(link.json_frame(link.HEADER, {"kind": "session", "ticket": ticket.to_text()}))
        kind, payload = await link.read_frame(reader)
        if kind != link.ACCEPT:
            writer.close()
            data = link.parse_json(payload) if kind == link.REFUSE else {}
            raise AccessRefused(str(data.get("code", "device_refused")), str(data.get("message", "device refused")))
        self._control_writer = writer
        return ticket.unverified_claims().nonce, dev

    async def device_channel(
        self, header: dict[str, Any]
    ) -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]:
        assert self._control is not None
        nonce, dev = await self._control
        reader, writer = await dev.open_connection(link.LISTEN_HOST, link.LISTEN_PORT, "engineer", 0)
        writer.write(link.json_frame(link.HEADER, {**header, "nonce": nonce, "session": self.username}))
        kind, payload = await link.read_frame(reader)
        if kind != link.ACCEPT:
            writer.close()
            data = link.parse_json(payload) if kind == link.REFUSE else {}
            raise AccessRefused(str(data.get("code", "device_refused")), str(data.get("message", "device refused")))
        return reader, writer

    def track(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._bridges.add(task)
        task.add_done_callback(self._bridges.discard)

    # -- engineer requests --------------------------------------------------------------

    def session_requested(self) -> tuple[asyncssh.SSHServerChannel[bytes], asyncssh.SSHServerSession[bytes]]:
        assert self.conn is not None
        chan = self.conn.create_server_channel(encoding=None)
        # asyncssh builds the channel itself; only the two request handlers change.
        chan.__class__ = _GuardedChannel
        session = _EngineerSession(self)
        guarded: _GuardedChannel = chan  # type: ignore[assignment]
        guarded.refuse = session.refuse_request
        return chan, session

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> asyncssh.SSHTCPSession[bytes] | bool:
        assert self.grant is not None
        if dest_port not in self.grant.ports or dest_host not in ("localhost", "127.0.0.1", "::1"):
            self.gateway.emit("refused", self.username, "port_not_approved", f"{dest_host}:{dest_port}")
            return False
        self.gateway.emit("port_forward", self.username, detail=str(dest_port))
        return _ForwardSession(self, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self.gateway.emit("refused", self.username, "remote_forward_refused", f"{listen_host}:{listen_port}")
        return False


class _EngineerSession(asyncssh.SSHServerSession[bytes]):
    def __init__(self, server: _EngineerServer) -> None:
        self.server = server
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.kind = ""
        self.command = ""
        self.term: tuple[str, int, int] | None = None
        self.writer: asyncssh.SSHWriter[bytes] | None = None
        self.pending: list[bytes] = []
        self.recorder: AsciicastRecorder | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def refuse_request(self, code: str) -> None:
        self.server.gateway.emit("refused", self.server.username, code)

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        grant = self.server.grant
        if grant is None or not grant.shell:
            self.refuse_request("pty_not_granted")
            return False
        self.term = (term_type, term_size[0] or 80, term_size[1] or 24)
        return True

    def shell_requested(self) -> bool:
        self.kind = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self.kind, self.command = "exec", command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.refuse_request("subsystem_refused")
        return False

    def session_started(self) -> None:
        self.server.track(self._bridge())

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.recorder is not None:
            self.recorder.input(data)
        frame = link.frame(link.DATA, data)
        if self.writer is None:
            self.pending.append(frame)
            return
        self._to_device(frame)

    def eof_received(self) -> bool:
        frame = link.frame(link.EOF)
        if self.writer is None:
            self.pending.append(frame)
        else:
            self._to_device(frame)
        return True

    def _to_device(self, frame: bytes) -> None:
        assert self.writer is not None and self.chan is not None
        try:
            self.writer.write(frame)
        except (BrokenPipeError, OSError):
            return  # the device already finished this channel; its answer is still being read
        if self.writer.channel.get_write_buffer_size() > _HIGH_WATER:
            self.chan.pause_reading()
            self.server.track(self._drain())

    async def _drain(self) -> None:
        assert self.writer is not None and self.chan is not None
        with contextlib.suppress(Exception):
            await self.writer.drain()
        self.chan.resume_reading()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _bridge(self) -> None:
        assert self.chan is not None
        chan, server, gateway = self.chan, self.server, self.server.gateway
        grant = server.grant
        assert grant is not None
        words = self.command.split()
        if self.kind == "exec" and words[:1] in (["put"], ["get"]) and not grant.file_transfer:
            return self._fail("file_transfer_not_granted", "file transfer was not approved for this session")
        header: dict[str, Any] = {"kind": self.kind, "command": self.command, "pty": self.term is not None}
        try:
            reader, writer = await server.device_channel(header)
        except RemoteSessionError as e:
            return self._fail(e.code, str(e))
        except (OSError, asyncssh.Error) as e:
            return self._fail("device_unreachable", str(e))
        if self.kind == "shell" or self.term is not None:
            width, height = (self.term[1], self.term[2]) if self.term else (80, 24)
            path = gateway.recordings_dir / f"{grant.session_id}-{int(time.time() * 1000)}-{id(self):x}.cast"
            self.recorder = AsciicastRecorder(
                path, width=width, height=height, title=f"{grant.session_id} {self.command}".strip()
            )
            self.recorder.marker(f"approval {','.join(grant.approvers) or 'emergency'}")
            self.recorder.marker(f"start {grant.engineer}@{grant.device_serial} {self.command}".strip())
        elif self.kind == "exec":
            path = gateway.recordings_dir / f"{grant.session_id}-{int(time.time() * 1000)}-{id(self):x}.cast"
            self.recorder = AsciicastRecorder(path, title=f"{grant.session_id} {self.command}")
            self.recorder.marker(f"approval {','.join(grant.approvers) or 'emergency'}")
            self.recorder.marker(f"start {grant.engineer}@{grant.device_serial}")
            self.recorder.input(self.command + "\n")
        self.writer = writer
        for frame in self.pending:
            self._to_device(frame)
        self.pending.clear()
        status = 255
        try:
            while True:
                await self.writable.wait()
                kind, payload = await link.read_frame(reader)
                if kind == link.DATA:
                    if self.recorder is not None:
                        self.recorder.output(payload)
                    chan.write(payload)
                elif kind == link.STDERR:
                    chan.write_stderr(payload)
                elif kind == link.MARK and self.recorder is not None:
                    m = link.parse_json(payload)
                    self.recorder.file_transfer(str(m["direction"]), str(m["name"]), str(m["sha256"]), int(m["size"]))
                elif kind == link.EXIT:
                    status = int(link.parse_json(payload).get("status", 255))
                    break
                elif kind == link.REFUSE:
                    data = link.parse_json(payload)
                    gateway.emit("refused", grant.session_id, str(data.get("code")), str(data.get("message")))
                    chan.write_stderr(f"medsec: refused ({data.get('code')}): {data.get('message')}\r\n".encode())
                    status = 1
                    break
        except EOFError:
            if server._shut_reason:
                with contextlib.suppress(Exception):
                    chan.write_stderr(f"medsec: session ended ({server._shut_reason})\r\n".encode())
        finally:
            self._seal()
            writer.close()
        with contextlib.suppress(Exception):
            chan.exit(status)

    def _fail(self, code: str, message: str) -> None:
        assert self.chan is not None
        self.server.gateway.emit("refused", self.server.username, code, message)
        with contextlib.suppress(Exception):
            self.chan.write_stderr(f"medsec: refused ({code}): {message}\r\n".encode())
            self.chan.exit(1)

    def _seal(self) -> None:
        if self.recorder is None or self.recorder.closed:
            return
        grant = self.server.grant
        assert grant is not None
        self.recorder.marker(f"end {self.server._shut_reason or 'completed'}")
        digest = self.recorder.close()
        self.server.gateway.emit(
            "recording_sealed", grant.session_id, detail=json.dumps({"path": str(self.recorder.path), "sha256": digest})
        )
        try:
            self.server.gateway.authority.recording_sealed(grant.session_id, self.recorder.path, digest)
        except Exception:
            logger.exception("could not hand the recording hash to the server")


class _ForwardSession(asyncssh.SSHTCPSession[bytes]):
    """A local forward (``ssh -L``) to an approved device-local port."""

    def __init__(self, server: _EngineerServer, port: int) -> None:
        self.server = server
        self.port = port
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.writer: asyncssh.SSHWriter[bytes] | None = None
        self.pending: list[bytes] = []

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan

    def session_started(self) -> None:
        self.server.track(self._bridge())

    def data_received(self, data: bytes, datatype: int | None) -> None:
        frame = link.frame(link.DATA, data)
        if self.writer is None:
            self.pending.append(frame)
        else:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.writer.write(frame)

    def eof_received(self) -> bool:
        frame = link.frame(link.EOF)
        if self.writer is None:
            self.pending.append(frame)
        else:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.writer.write(frame)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _bridge(self) -> None:
        assert self.chan is not None
        try:
            reader, writer = await self.server.device_channel({"kind": "forward", "port": self.port})
        except (RemoteSessionError, OSError, asyncssh.Error) as e:
            code = e.code if isinstance(e, RemoteSessionError) else "device_unreachable"
            self.server.gateway.emit("refused", self.server.username, code, str(e))
            self.chan.close()
            return
        self.writer = writer
        with contextlib.suppress(BrokenPipeError, OSError):
            for frame in self.pending:
                writer.write(frame)
        self.pending.clear()
        with contextlib.suppress(EOFError):
            while True:
                kind, payload = await link.read_frame(reader)
                if kind == link.DATA:
                    self.chan.write(payload)
                elif kind in (link.EXIT, link.REFUSE):
                    break
        writer.close()
        self.chan.close()
