"""The device end of remote maintenance: dial out, check the ticket, run a restricted shell (RA-1, RA-2, RA-4).

The device listens on nothing. It connects out to the gateway on its service
LAN (bound to a configured source address and/or interface, RA-4), and the
gateway opens channels back over that connection. Every channel carries the
hospital-signed ticket or refers to one the device already accepted on this
connection; the device verifies the ticket itself, so a gateway holding only
the SSH CA key cannot open a session. Logins, commands, transfers, refusals
and session ends go to the device's Merkle access log through
:class:`AccessRecorder` (the agent passes its ``AccessLog``), with a
checkpoint at session start, at least every ``checkpoint_interval`` seconds
while active, and at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import shlex
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.remote import device_link as link
from medsec.remote.errors import AccessRefused, GatewayTransportError, RemoteSessionError, TicketError
from medsec.remote.ticket import NonceStore, SessionTicket, TicketClaims, require_capability, verify_ticket

logger = logging.getLogger(__name__)

MAX_LINE = 4096
MAX_TRANSFER = 1 << 30
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Shell syntax the restricted shell never interprets: no pipes, redirects, substitution or chaining.
_METACHARS = re.compile(r"[|&;<>()$`\\\n\r*?{}\[\]~]")


class AccessRecorder(Protocol):
    """The device's tamper-evident access log (``medsec.agent.access_log.AccessLog`` fits)."""

    def record(self, event: str, /, **fields: Any) -> int: ...

    def checkpoint(self) -> str: ...


@dataclass(frozen=True)
class CommandResult:
    output: str
    status: int = 0


ShellCommand = Callable[[Sequence[str]], CommandResult]


class RestrictedShell:
    """Runs only allow-listed commands, each a Python callable; everything else is refused."""

    def __init__(self, commands: Mapping[str, ShellCommand]) -> None:
        self._commands = dict(commands)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._commands))

    def parse(self, line: str) -> list[str]:
        if len(line) > MAX_LINE:
            raise AccessRefused("command_too_long", "the command line is too long")
        if _METACHARS.search(line):
            raise AccessRefused("shell_syntax_refused", "pipes, redirects, globs and substitutions are not allowed")
        try:
            argv = shlex.split(line)
        except ValueError as e:
            raise AccessRefused("shell_syntax_refused", f"cannot parse the command: {e}") from e
        if not argv:
            raise AccessRefused("empty_command", "no command given")
        if argv[0] not in self._commands:
            raise AccessRefused("command_not_allowed", f"{argv[0]!r} is not an allowed maintenance command")
        return argv

    def run(self, argv: Sequence[str]) -> CommandResult:
        return self._commands[argv[0]](argv)


@dataclass(frozen=True)
class DeviceLinkConfig:
    """Where and how the device dials out (RA-4: a dedicated service LAN)."""

    serial: str
    gateway_host: str
    gateway_port: int
    gateway_host_key: str  # the gateway's ``ssh-ed25519 AAAA…`` host key, pinned
    approval_key: VerifyKey
    transfer_dir: Path
    source_address: str | None = None
    interface: str | None = None
    checkpoint_interval: float = 60.0
    allowed_forward_host: str = "127.0.0.1"


@dataclass
class _LiveSession:
    claims: TicketClaims
    started: float
    timer: asyncio.Task[None] | None = None
    ended: bool = False
    commands: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def device_ssh_key(key: SigningKey) -> asyncssh.SSHKey:
    """The device's Ed25519 identity as an SSH key, so the gateway knows it from enrollment."""
    return asyncssh.import_private_key(key.to_pem())


def device_public_key_line(key: VerifyKey) -> str:
    ssh_key = asyncssh.import_public_key(_openssh_ed25519(key.raw))
    return bytes(ssh_key.export_public_key("openssh")).decode("ascii").strip()


def _openssh_ed25519(raw: bytes) -> bytes:
    import base64
    import struct

    algo = b"ssh-ed25519"
    blob = struct.pack(">I", len(algo)) + algo + struct.pack(">I", len(raw)) + raw
    return b"ssh-ed25519 " + base64.b64encode(blob)


async def open_service_socket(config: DeviceLinkConfig) -> socket.socket:
    """A TCP socket to the gateway bound to the service interface and/or source address (RA-4)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(config.gateway_host, config.gateway_port, type=socket.SOCK_STREAM)
    if not infos:
        raise GatewayTransportError("gateway_unreachable", f"cannot resolve {config.gateway_host}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if config.interface:
            # SO_BINDTODEVICE: the kernel routes this connection only over the service interface.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, config.interface.encode() + b"\0")
        if config.source_address:
            sock.bind((config.source_address, 0))
        await loop.sock_connect(sock, address)
    except OSError as e:
        sock.close()
        raise GatewayTransportError("gateway_unreachable", f"cannot reach the gateway over the service LAN: {e}") from e
    return sock


class DeviceEndpoint:
    """One outbound maintenance connection from the device to the gateway."""

    def __init__(
        self,
        config: DeviceLinkConfig,
        device_key: SigningKey,
        shell: RestrictedShell,
        access_log: AccessRecorder,
        nonces: NonceStore,
        *,
        clock: Callable[[], float] = time.time,
        on_checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._key = device_ssh_key(device_key)
        self._shell = shell
        self._log = access_log
        self._nonces = nonces
        self._clock = clock
        self._on_checkpoint = on_checkpoint
        self._conn: asyncssh.SSHClientConnection | None = None
        self._live: dict[str, _LiveSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def connect(self) -> None:
        sock = await open_service_socket(self.config)
        host_key = asyncssh.import_public_key(self.config.gateway_host_key)
        try:
            self._conn = await asyncssh.connect(
                sock=sock,
                host=self.config.gateway_host,
                port=self.config.gateway_port,
                username=f"device-{self.config.serial}",
                client_keys=[self._key],
                known_hosts=([host_key], [], []),
                agent_path=None,
                config=[],
                preferred_auth=["publickey"],
            )
            await self._conn.start_server(self._channel, link.LISTEN_HOST, link.LISTEN_PORT)
        except (OSError, asyncssh.Error) as e:
            sock.close()
            if self._conn is not None:
                self._conn.close()
            raise GatewayTransportError("gateway_refused_device", f"cannot attach to the gateway: {e}") from e
        self._log.record("remote.link_up", gateway=f"{self.config.gateway_host}:{self.config.gateway_port}")

    async def wait_closed(self) -> None:
        if self._conn is not None:
            await self._conn.wait_closed()

    async def close(self) -> None:
        for nonce in list(self._live):
            self._end(nonce, "link_closed")
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- sessions ---------------------------------------------------------------

    def _checkpoint(self, nonce: str, why: str) -> None:
        note = self._log.checkpoint()
        if self._on_checkpoint is not None:
            self._on_checkpoint(note)
        logger.debug("access log checkpoint (%s) for %s", why, nonce)

    def _refuse(self, err: RemoteSessionError, **fields: Any) -> None:
        self._log.record("remote.refused", code=err.code, reason=str(err), **fields)

    def _open_session(self, ticket_text: str) -> _LiveSession:
        ticket = SessionTicket.from_text(ticket_text)
        now = int(self._clock())
        claims = verify_ticket(ticket, self.config.approval_key, self.config.serial, now, self._nonces)
        live = _LiveSession(claims, self._clock())
        self._live[claims.nonce] = live
        self._log.record(
            "remote.login",
            session=claims.session_id,
            engineer=claims.engineer,
            approvers=list(claims.approvers),
            emergency=claims.emergency,
            not_after=claims.not_after,
        )
        self._checkpoint(claims.nonce, "start")
        live.timer = asyncio.create_task(self._keep_checkpointing(claims.nonce))
        return live

    async def _keep_checkpointing(self, nonce: str) -> None:
        """A checkpoint at least every interval (RA-2) and the end at the window's close."""
        while (live := self._live.get(nonce)) is not None and not live.ended:
            remaining = live.claims.not_after - self._clock()
            if remaining <= 0:
                self._end(nonce, "window_closed")
                return
            await asyncio.sleep(min(self.config.checkpoint_interval, remaining))
            if nonce in self._live:
                self._checkpoint(nonce, "interval")

    def _end(self, nonce: str, reason: str) -> None:
        live = self._live.pop(nonce, None)
        if live is None or live.ended:
            return
        live.ended = True
        if live.timer is not None and live.timer is not asyncio.current_task():
            live.timer.cancel()
        self._log.record(
            "remote.session_end",
            session=live.claims.session_id,
            reason=reason,
            commands=live.commands,
            seconds=int(self._clock() - live.started),
        )
        self._checkpoint(nonce, "end")

    def _session_for(self, header: Mapping[str, Any]) -> _LiveSession:
        nonce = header.get("nonce")
        live = self._live.get(nonce) if isinstance(nonce, str) else None
        if live is None:
            raise AccessRefused("no_session", "no accepted ticket on this connection for that channel")
        if self._clock() >= live.claims.not_after:
            self._end(live.claims.nonce, "window_closed")
            raise TicketError("ticket_expired", "the session window has ended")
        return live

    # -- channels -------------------------------------------------------------------

    def _channel(
        self, orig_host: str, orig_port: int
    ) -> Callable[[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]], Any]:
        return self._handle

    async def _handle(self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            kind, payload = await link.read_frame(reader)
            if kind != link.HEADER:
                raise GatewayTransportError("malformed_frame", "the first frame must be a header")
            header = link.parse_json(payload)
            await self._dispatch(header, reader, writer)
        except EOFError:
            pass
        except RemoteSessionError as e:
            with contextlib.suppress(Exception):
                writer.write(link.json_frame(link.REFUSE, {"code": e.code, "message": str(e)}))
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _dispatch(
        self, header: Mapping[str, Any], reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        kind = header.get("kind")
        if kind == "session":
            text = header.get("ticket")
            try:
                if not isinstance(text, str):
                    raise TicketError("malformed_ticket", "no ticket in the session header")
                live = self._open_session(text)
            except RemoteSessionError as e:
                self._refuse(e, channel="session")
                raise
            writer.write(link.json_frame(link.ACCEPT, {"session": live.claims.session_id}))
            await writer.drain()
            reason = "completed"
            with contextlib.suppress(EOFError):
                while True:  # the gateway closes this channel when the engineer leaves
                    fkind, data = await link.read_frame(reader)
                    if fkind == link.HEADER:
                        end = link.parse_json(data)
                        reason = str(end.get("reason", reason))[:64]
            self._end(live.claims.nonce, reason)
            return
        try:
            live = self._session_for(header)
            if kind == "exec":
                command = header.get("command")
                if not isinstance(command, str):
                    raise AccessRefused("malformed_request", "exec without a command")
                await self._exec(live, command, reader, writer)
            elif kind == "shell":
                require_capability(live.claims, "shell")
                await self._interactive(live, reader, writer, pty=bool(header.get("pty")))
            elif kind == "forward":
                port = header.get("port")
                if not isinstance(port, int) or isinstance(port, bool):
                    raise AccessRefused("malformed_request", "forward without a port")
                require_capability(live.claims, "port_forward", port)
                await self._forward(live, port, reader, writer)
            else:
                raise AccessRefused("malformed_request", f"unknown channel kind {kind!r}")
        except RemoteSessionError as e:
            self._refuse(e, session=header.get("session"), channel=str(kind))
            raise

    async def _exec(
        self, live: _LiveSession, command: str, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        words = command.split()
        if words and words[0] in ("put", "get"):
            require_capability(live.claims, "file_transfer")
            await self._transfer(live, words, reader, writer)
            return
        require_capability(live.claims, "shell")
        argv = self._shell.parse(command)
        writer.write(link.frame(link.ACCEPT))
        result = self._run(live, argv)
        writer.write(link.frame(link.DATA, result.output.encode("utf-8")))
        writer.write(link.json_frame(link.EXIT, {"status": result.status}))
        await writer.drain()

    def _run(self, live: _LiveSession, argv: Sequence[str]) -> CommandResult:
        live.commands += 1
        try:
            result = self._shell.run(argv)
        except Exception as e:  # a failing maintenance command must not take the link down
            logger.exception("maintenance command %s failed", argv[0])
            result = CommandResult(f"{argv[0]}: failed: {type(e).__name__}\n", 1)
        self._log.record("remote.command", session=live.claims.session_id, argv=list(argv), status=result.status)
        return result

    async def _interactive(
        self, live: _LiveSession, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes], *, pty: bool
    ) -> None:
        writer.write(link.frame(link.ACCEPT))
        prompt = b"medsec-maint$ "
        writer.write(
            link.frame(
                link.DATA,
                b"medsec maintenance shell; commands: " + " ".join(self._shell.names).encode() + b"\r\n" + prompt,
            )
        )
        await writer.drain()
        line = bytearray()
        with contextlib.suppress(EOFError):
            while True:
                kind, data = await link.read_frame(reader)
                if kind == link.EOF:
                    break
                if kind != link.DATA:
                    continue
                out = bytearray()
                for byte in data:
                    ch = bytes([byte])
                    if ch in (b"\r", b"\n"):
                        out += b"\r\n"
                        text = line.decode("utf-8", "replace").strip()
                        line.clear()
                        if text in ("exit", "logout"):
                            writer.write(link.frame(link.DATA, bytes(out)))
                            writer.write(link.json_frame(link.EXIT, {"status": 0}))
                            await writer.drain()
                            return
                        if text:
                            out += self._line_output(live, text).replace(b"\n", b"\r\n")
                        out += prompt
                    elif ch in (b"\x7f", b"\x08"):
                        if line:
                            line.pop()
                            out += b"\b \b"
                    elif ch in (b"\x03", b"\x04"):
                        out += b"\r\n"
                        writer.write(link.frame(link.DATA, bytes(out)))
                        writer.write(link.json_frame(link.EXIT, {"status": 0}))
                        await writer.drain()
                        return
                    elif len(line) < MAX_LINE:
                        line += ch
                        if pty:
                            out += ch
                writer.write(link.frame(link.DATA, bytes(out)))
                await writer.drain()
        writer.write(link.json_frame(link.EXIT, {"status": 0}))
        await writer.drain()

    def _line_output(self, live: _LiveSession, text: str) -> bytes:
        try:
            argv = self._shell.parse(text)
        except AccessRefused as e:
            self._refuse(e, session=live.claims.session_id, command=text[:200])
            return f"refused ({e.code}): {e}\n".encode()
        return self._run(live, argv).output.encode("utf-8")

    async def _transfer(
        self,
        live: _LiveSession,
        words: Sequence[str],
        reader: asyncssh.SSHReader[bytes],
        writer: asyncssh.SSHWriter[bytes],
    ) -> None:
        if len(words) != 2 or not _FILE_NAME.fullmatch(words[1]):
            raise AccessRefused("invalid_file_name", "use: put NAME | get NAME (NAME of [A-Za-z0-9._-])")
        direction, name = words
        path = self.config.transfer_dir / name
        digest = hashlib.sha256()
        size = 0
        if direction == "put":
            self.config.transfer_dir.mkdir(parents=True, exist_ok=True)
            writer.write(link.frame(link.ACCEPT))
            tmp = path.with_name(f".{name}.part")
            with open(tmp, "wb") as out, contextlib.suppress(EOFError):
                while True:
                    kind, data = await link.read_frame(reader)
                    if kind == link.EOF:
                        break
                    if kind == link.DATA:
                        size += len(data)
                        if size > MAX_TRANSFER:
                            raise AccessRefused("transfer_too_large", "file is larger than allowed")
                        digest.update(data)
                        out.write(data)
            tmp.replace(path)
        else:
            if not path.is_file():
                raise AccessRefused("no_such_file", f"no file {name} in the transfer directory")
            writer.write(link.frame(link.ACCEPT))
            with open(path, "rb") as src:
                while chunk := src.read(1 << 16):
                    size += len(chunk)
                    digest.update(chunk)
                    writer.write(link.frame(link.DATA, chunk))
                    await writer.drain()
        sha = digest.hexdigest()
        self._log.record(
            "remote.file_transfer",
            session=live.claims.session_id,
            direction=direction,
            name=name,
            sha256=sha,
            size=size,
        )
        writer.write(link.json_frame(link.MARK, {"direction": direction, "name": name, "sha256": sha, "size": size}))
        writer.write(link.json_frame(link.EXIT, {"status": 0}))
        await writer.drain()

    async def _forward(
        self, live: _LiveSession, port: int, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        try:
            local_reader, local_writer = await asyncio.open_connection(self.config.allowed_forward_host, port)
        except OSError as e:
            raise AccessRefused("port_unreachable", f"device-local port {port} is not listening") from e
        self._log.record("remote.port_forward", session=live.claims.session_id, port=port)
        writer.write(link.frame(link.ACCEPT))

        async def upstream() -> None:
            with contextlib.suppress(EOFError, ConnectionError):
                while True:
                    kind, data = await link.read_frame(reader)
                    if kind == link.EOF:
                        break
                    if kind == link.DATA:
                        local_writer.write(data)
                        await local_writer.drain()
            with contextlib.suppress(OSError):
                local_writer.write_eof()

        up = asyncio.create_task(upstream())
        try:
            while data := await local_reader.read(1 << 15):
                writer.write(link.frame(link.DATA, data))
                await writer.drain()
            writer.write(link.json_frame(link.EXIT, {"status": 0}))
            await writer.drain()
            await up
        finally:
            up.cancel()
            local_writer.close()
            with contextlib.suppress(Exception):
                await local_writer.wait_closed()
