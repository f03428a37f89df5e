"""Remote maintenance in the demo: the SSH gateway next to the server, devices that dial out to it,
and the exact steps for a person to walk the whole flow by hand (RA-1, RA-2, RA-3, RA-5).

The gateway runs as its own ``medsec gateway`` process over the demo's database and keys, as it
would in production. Every simulated device gets ``etc/medsec/remote.json`` so its agent polls the
server and attaches to the gateway only while one of its sessions is approved and in its window.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write
from medsec.crypto.keys import write_private_file

ENGINEER = "maker-service"
RESPONSIBLE = "a-responsible"
DEMO_POLL_SECONDS = 2  # a production device polls every 30 s; the demo should feel immediate
KNOWN_HOSTS = "gateway_known_hosts"


@dataclass(frozen=True)
class GatewayPorts:
    engineer: int
    device: int
    host: str = "127.0.0.1"


def _service_token(settings: Any) -> str:
    """An API token for the demo's service engineer (the seed only hands out the admin's)."""
    from sqlalchemy import select

    from medsec.server.context import build_context
    from medsec.server.models import User
    from medsec.server.services import accounts

    ctx = build_context(settings)
    try:
        with ctx.tx() as db:
            user = db.scalar(select(User).where(User.username == ENGINEER))
            if user is None:
                raise RuntimeError(f"the demo has no user {ENGINEER}")
            token, _row = accounts.create_api_token(
                db, ctx.audit, user, name="demo remote maintenance", expires_days=366, actor="system"
            )
        return token
    finally:
        ctx.close()


def _device_remote_config(root: Path, approval_key: str, ports: GatewayPorts, host_key: str) -> None:
    config = {
        "approval_key": approval_key,
        "enabled": True,
        "gateway": {"host": ports.host, "port": ports.device, "host_key": host_key},
        "source_address": ports.host,
        "poll_seconds": DEMO_POLL_SECONDS,
    }
    atomic_write(root / "etc/medsec/remote.json", json.dumps(config, indent=2).encode() + b"\n")


def setup_remote_demo(settings: Any, info: dict[str, Any], ports: GatewayPorts) -> dict[str, Any]:
    """Keys, the engineer's token, the gateway's pinned host key and each device's ``remote.json`` (idempotent)."""
    from medsec.cli.gateway import load_host_key
    from medsec.server.remote_authority import load_remote_keys

    keys = load_remote_keys(settings)
    host_key = load_host_key(settings.keys_dir)
    host_line = bytes(host_key.convert_to_public().export_public_key("openssh")).decode("ascii").strip()
    for device in info["devices"]:
        _device_remote_config(Path(device["root"]), keys.approval_verify_key.to_base64(), ports, host_line)
    atomic_write(settings.data_dir / KNOWN_HOSTS, f"[{ports.host}]:{ports.engineer} {host_line}\n".encode())
    if not info.get("service_token"):
        info["service_token"] = _service_token(settings)
        info["service_token_user"] = ENGINEER
    info["gateway"] = {"host": ports.host, "engineer_port": ports.engineer, "device_port": ports.device}
    write_private_file(settings.data_dir / "demo.json", json.dumps(info, indent=2, ensure_ascii=False).encode() + b"\n")
    return info


class GatewayProcess:
    """``medsec gateway`` as a child process of the demo, stopped with it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, data_dir: Path, ports: GatewayPorts) -> None:
        self._log = (data_dir / "gateway.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [
                sys.executable,
                "-m",
                "medsec",
                "gateway",
                "--data-dir",
                str(data_dir),
                "--engineer-host",
                ports.host,
                "--engineer-port",
                str(ports.engineer),
                "--device-host",
                ports.host,
                "--device-port",
                str(ports.device),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def wait_listening(self, ports: GatewayPorts, timeout: float = 20) -> None:
        """Wait until the engineer port accepts connections (the gateway prints nothing else we need)."""
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise SystemExit("the maintenance gateway exited; see gateway.log in the data directory")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((ports.host, ports.engineer)) == 0:
                    return
            time.sleep(0.1)
        raise SystemExit(f"the maintenance gateway did not listen on {ports.host}:{ports.engineer}")


def remote_tour(info: dict[str, Any], data_dir: Path) -> str:
    """The exact commands and clicks for one remote maintenance session, start to finish."""
    url = info["url"]
    gw = info["gateway"]
    device = info["devices"][0]["serial"]
    d = shlex.quote(str(data_dir))
    key = f"{d}/engineer/id_ed25519"
    env = f"export MEDSEC_SERVER={url} MEDSEC_TOKEN={info['service_token']}"
    where = f"engineers on {gw['host']}:{gw['engineer_port']}, devices on {gw['device_port']}"
    return f"""Remote maintenance (gateway: {where})
 1. As the engineer ({ENGINEER}), request a session (or use the portal: Remote maintenance > New request):
      {env}
      .venv/bin/medsec maintenance request --device {device} --purpose "quarterly inspection" \\
        --planned-work "read status and version" --expected-impact "none; stays in clinical use" \\
        --rollback "nothing to roll back" --minutes 60 --file-transfer
    Note the session id (ms-...) it prints; below it is SID.
 2. Approve it as the hospital's responsible person: log in to {url}/maintenance as {RESPONSIBLE}
    (password in {d}/demo.json; one-time code: .venv/bin/medsec totp-code {RESPONSIBLE} --data-dir {d}),
    open the session and press Approve. The device dials out to the gateway within {DEMO_POLL_SECONDS} s.
 3. Get a short-lived SSH certificate for that session only:
      mkdir -p {d}/engineer && ssh-keygen -q -t ed25519 -N '' -f {key}
      .venv/bin/medsec maintenance cert --session SID --key {key}.pub -o {key}-cert.pub
 4. Work on the device's restricted shell through the gateway (commands: status, version, exit):
      ssh -i {key} -o CertificateFile={key}-cert.pub -o IdentitiesOnly=yes \\
        -o UserKnownHostsFile={d}/{KNOWN_HOSTS} -o StrictHostKeyChecking=yes -p {gw["engineer_port"]} SID@{gw["host"]}
    or one command at a time:  ssh ... SID@{gw["host"]} status
 5. Report the work (this ends the session):
      .venv/bin/medsec maintenance work-report --session SID --work-done "read status" \\
        --results "all values normal" --verification "status shows pump idle"
 6. Watch the recording on the session page in the portal ({url}/maintenance/SID, "Watch recording");
    each view and download is logged as remote.recording_viewed. As {RESPONSIBLE}, confirm the end of work there.
 7. Download the service report and its proof bundle (also links on the session page):
      .venv/bin/medsec maintenance report SID --lang ja --format pdf -o report-ja.pdf
      .venv/bin/medsec maintenance report SID --format bundle -o proof.json
 8. Verify the proof offline with only the server's public log key:
      .venv/bin/medsec audit verify proof.json --log-key '{info["log_key"]}'
"""
