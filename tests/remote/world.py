"""A loopback maintenance world: CA, in-memory authority, gateway, one simulated device, OpenSSH client."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from medsec.agent.access_log import AccessLog
from medsec.crypto.keys import SigningKey
from medsec.remote.authority import MemorySessionAuthority
from medsec.remote.certs import MaintenanceCA, export_certificate
from medsec.remote.device_side import CommandResult, DeviceEndpoint, DeviceLinkConfig, RestrictedShell
from medsec.remote.gateway import Gateway
from medsec.remote.session import (
    Capabilities,
    MaintenanceSession,
    PortForward,
    SessionPolicy,
    SessionRequest,
    request_session,
)
from medsec.remote.ticket import MemoryNonceStore

SERIAL = "SN-0001"
ENGINEER = "eng.tanaka"
POLICY = SessionPolicy(approvers=frozenset({"dr.sato", "ns.suzuki"}), approvals_required=1)


def make_session(
    now: int, *, serial: str = SERIAL, ports: Sequence[int] = (), start: int | None = None, length: int = 3600
) -> MaintenanceSession:
    start = now - 10 if start is None else start
    req = SessionRequest(
        device_serial=serial,
        engineer=ENGINEER,
        purpose="quarterly inspection",
        planned_work="read status and logs",
        expected_impact="none; device stays in clinical use",
        expected_downtime_minutes=0,
        rollback="nothing to roll back",
        capabilities=Capabilities(shell=True, file_transfer=True, ports=tuple(PortForward(f"p{p}", p) for p in ports)),
        window_start=start,
        window_end=start + length,
    )
    session, _ = request_session(req, POLICY, min(now, start))
    return session


def approve(session: MaintenanceSession, now: int) -> MaintenanceSession:
    return session.approve("dr.sato", now)[0]


def shell_commands() -> dict[str, object]:
    return {
        "status": lambda argv: CommandResult("pump: idle\nbattery: 98%\n"),
        "version": lambda argv: CommandResult("firmware 2.4.1\n"),
        "echo": lambda argv: CommandResult(" ".join(argv[1:]) + "\n"),
    }


@dataclass
class World:
    tmp: Path
    approval_key: SigningKey = field(default_factory=SigningKey.generate)
    device_key: SigningKey = field(default_factory=SigningKey.generate)
    ca: MaintenanceCA = field(default_factory=MaintenanceCA.generate)
    authority: MemorySessionAuthority | None = None
    gateway: Gateway | None = None
    device: DeviceEndpoint | None = None
    access_log: AccessLog | None = None
    engineer_key: asyncssh.SSHKey | None = None
    eng_port: int = 0
    dev_port: int = 0
    nonces: MemoryNonceStore = field(default_factory=MemoryNonceStore)
    log_entries: list[dict[str, object]] = field(default_factory=list)

    async def start(self, *, revocation_poll: float = 0.5, authority: MemorySessionAuthority | None = None) -> None:
        self.authority = authority or MemorySessionAuthority(self.approval_key)
        self.authority.device_keys[SERIAL] = self.device_key.verify_key
        (self.tmp / "rec").mkdir()
        self.gateway = Gateway(
            self.authority,
            self.ca.public_key,
            asyncssh.generate_private_key("ssh-ed25519"),
            self.tmp / "rec",
            revocation_poll=revocation_poll,
        )
        self.eng_port, self.dev_port = await self.gateway.start()
        await self.connect_device(SERIAL, self.device_key)
        self.engineer_key = asyncssh.generate_private_key("ssh-ed25519")
        key_path = self.tmp / "eng_key"
        key_path.write_bytes(self.engineer_key.export_private_key("openssh"))
        os.chmod(key_path, 0o600)
        (self.tmp / "known_hosts").write_text(f"[127.0.0.1]:{self.eng_port} {self.gateway.host_key_line()}\n")

    async def connect_device(self, serial: str, key: SigningKey) -> DeviceEndpoint:
        assert self.gateway is not None
        log_dir = self.tmp / f"log-{serial}"
        self.access_log = AccessLog(log_dir, serial, key)
        config = DeviceLinkConfig(
            serial=serial,
            gateway_host="127.0.0.1",
            gateway_port=self.dev_port,
            gateway_host_key=self.gateway.host_key_line(),
            approval_key=self.approval_key.verify_key,
            transfer_dir=self.tmp / f"transfer-{serial}",
            source_address="127.0.0.1",
        )
        self.device = DeviceEndpoint(
            config,
            key,
            RestrictedShell(shell_commands()),
            self.access_log,
            self.nonces,  # type: ignore[arg-type]
        )
        await self.device.connect()
        for _ in range(100):
            if serial in self.gateway.devices:
                break
            await asyncio.sleep(0.02)
        return self.device

    def issue_cert(self, session: MaintenanceSession, *, ca: MaintenanceCA | None = None, name: str = "eng") -> Path:
        assert self.engineer_key is not None
        cert = (ca or self.ca).issue(session, self.engineer_key, int(time.time()))
        path = self.tmp / f"{name}-cert.pub"
        path.write_bytes(export_certificate(cert))
        return path

    def ssh_args(self, user: str, cert: Path, *extra: str) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.tmp / "eng_key"),
            "-o",
            f"CertificateFile={cert}",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.tmp / 'known_hosts'}",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-p",
            str(self.eng_port),
            *extra,
            f"{user}@127.0.0.1",
        ]

    async def ssh(
        self,
        user: str,
        cert: Path,
        command: str | None,
        *extra: str,
        stdin: bytes = b"",
        env: dict[str, str] | None = None,
    ) -> tuple[int, bytes, bytes]:
        args = self.ssh_args(user, cert, *extra) + ([command] if command is not None else [])
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ["PATH"], "HOME": str(self.tmp), **(env or {})},
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), 20)
        assert proc.returncode is not None
        return proc.returncode, out, err

    async def close(self) -> None:
        if self.device is not None:
            await self.device.close()
        if self.gateway is not None:
            await self.gateway.close()
        if self.access_log is not None:
            self.log_entries = self.access_log.entries()
            self.access_log.close()


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]
