"""RA-4: the maintenance connection runs only over the dedicated service LAN.

Three network namespaces stand in for the machines: the device, the maintenance gateway and a
host on the clinical LAN. Two veth pairs join them, created directly inside the namespaces so the
host's own interfaces and routes are never touched::

    [gateway] 10.250.1.1 ──service LAN── 10.250.1.2 [device] 10.250.2.2 ──clinical LAN── 10.250.2.3 [clinical]

The gateway and the device run as separate processes (``ip netns exec``). The test proves that the
session works over the service LAN, that a link bound to the clinical interface cannot reach the
gateway, and that nothing on the clinical LAN reaches a maintenance shell: the device listens on
nothing, so a connection to every TCP port of the device from the clinical host is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from medsec.crypto.keys import SigningKey

pytestmark = [pytest.mark.req("RA-4")]

SERIAL = "SN-LAN-0001"
GATEWAY_IP = "10.250.1.1"
DEVICE_SERVICE_IP = "10.250.1.2"
DEVICE_CLINICAL_IP = "10.250.2.2"
CLINICAL_HOST_IP = "10.250.2.3"
DEVICE_PORT = 2222
PYTHON = sys.executable

_COMMON = """
import asyncio, json, sys, time
from pathlib import Path
import asyncssh
from medsec.agent.access_log import AccessLog
from medsec.crypto.keys import SigningKey
from medsec.remote.device_side import CommandResult, DeviceEndpoint, DeviceLinkConfig, RestrictedShell
from medsec.remote.device_side import open_service_socket
from medsec.remote.errors import GatewayTransportError
from medsec.remote.ticket import MemoryNonceStore
work = Path(sys.argv[1])
cfg = json.loads((work / "world.json").read_text())

def write_json(name, value):
    tmp = work / (name + ".tmp")
    tmp.write_text(json.dumps(value))
    tmp.rename(work / name)

async def wait_for(name, seconds=60):
    deadline = time.monotonic() + seconds
    while not (work / name).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {name}")
        await asyncio.sleep(0.05)
"""

GATEWAY_SCRIPT = (
    _COMMON
    + """
from medsec.remote.authority import MemorySessionAuthority
from medsec.remote.certs import MaintenanceCA
from medsec.remote.gateway import Gateway
from medsec.remote.session import Capabilities, SessionPolicy, SessionRequest, request_session

async def main():
    approval = SigningKey.load(work / "approval.key")
    authority = MemorySessionAuthority(approval)
    authority.device_keys[cfg["serial"]] = SigningKey.load(work / "device.key").verify_key
    ca = MaintenanceCA.generate()
    (work / "rec").mkdir()
    gateway = Gateway(authority, ca.public_key, asyncssh.generate_private_key("ssh-ed25519"), work / "rec")
    eng_port, dev_port = await gateway.start(
        engineer_host="127.0.0.1", device_host=cfg["gateway_ip"], device_port=cfg["device_port"]
    )
    write_json("gateway.json", {"host_key": gateway.host_key_line(), "device_port": dev_port})
    deadline = time.monotonic() + 30
    while cfg["serial"] not in gateway.devices:
        if time.monotonic() > deadline:
            raise SystemExit("the device never attached")
        await asyncio.sleep(0.05)
    peer = gateway.devices[cfg["serial"]].get_extra_info("peername")[0]
    now = int(time.time())
    request = SessionRequest(
        device_serial=cfg["serial"], engineer="eng.tanaka", purpose="inspection", planned_work="read status",
        expected_impact="none", expected_downtime_minutes=0, rollback="nothing to roll back",
        capabilities=Capabilities(shell=True, file_transfer=False, ports=()),
        window_start=now - 10, window_end=now + 600,
    )
    policy = SessionPolicy(approvers=frozenset({"dr.sato"}), approvals_required=1)
    session, _ = request_session(request, policy, now - 10)
    session = authority.put(session.approve("dr.sato", now)[0])
    engineer_key = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.issue(session, engineer_key, now)
    async with asyncssh.connect(
        "127.0.0.1", eng_port, username=session.id, client_keys=[(engineer_key, cert)],
        known_hosts=None, agent_path=None, config=[],
    ) as conn:
        result = await conn.run("status", check=False)
    write_json("engineer.json", {"peer": peer, "output": result.stdout, "exit": result.exit_status})
    await wait_for("done")
    await gateway.close()

asyncio.run(main())
"""
)

DEVICE_SCRIPT = (
    _COMMON
    + """
async def main():
    await wait_for("gateway.json")
    gw = json.loads((work / "gateway.json").read_text())
    key = SigningKey.load(work / "device.key")
    config = DeviceLinkConfig(
        serial=cfg["serial"], gateway_host=cfg["gateway_ip"], gateway_port=gw["device_port"],
        gateway_host_key=gw["host_key"], approval_key=SigningKey.load(work / "approval.key").verify_key,
        transfer_dir=work / "transfer", source_address=cfg["device_service_ip"], interface=cfg["service_if"],
    )
    log = AccessLog(work / "device-log", cfg["serial"], key)
    shell = RestrictedShell({"status": lambda argv: CommandResult("pump: idle\\n")})
    endpoint = DeviceEndpoint(config, key, shell, log, MemoryNonceStore())
    await endpoint.connect()
    await wait_for("done")
    await endpoint.close()
    log.close()

asyncio.run(main())
"""
)

CLINICAL_BIND_SCRIPT = (
    _COMMON
    + """
async def main():
    gw = json.loads((work / "gateway.json").read_text())
    config = DeviceLinkConfig(
        serial=cfg["serial"], gateway_host=cfg["gateway_ip"], gateway_port=gw["device_port"],
        gateway_host_key=gw["host_key"], approval_key=SigningKey.load(work / "approval.key").verify_key,
        transfer_dir=work / "transfer", source_address=cfg["device_clinical_ip"], interface=cfg["clinical_if"],
    )
    try:
        sock = await asyncio.wait_for(open_service_socket(config), 10)
    except GatewayTransportError as e:
        print(json.dumps({"reached": False, "code": e.code, "detail": str(e)}))
    except TimeoutError:
        print(json.dumps({"reached": False, "code": "timeout", "detail": ""}))
    else:
        sock.close()
        print(json.dumps({"reached": True}))

asyncio.run(main())
"""
)

# From the clinical host: try every TCP port of the device's clinical address; all must be refused.
SCAN_SCRIPT = """
import errno, json, socket, sys
accepted, unreachable = [], 0
targets = sys.argv[1:]
for host in targets:
    for port in range(1, 65536):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            code = s.connect_ex((host, port))
        finally:
            s.close()
        if code == 0:
            accepted.append([host, port])
        elif code != errno.ECONNREFUSED:
            unreachable += 1
print(json.dumps({"accepted": accepted, "not_refused": unreachable}))
"""


PROBE_SCRIPT = """
import socket, sys
s = socket.socket()
s.settimeout(2)
print(s.connect_ex((sys.argv[1], int(sys.argv[2]))))
"""


@dataclass(frozen=True)
class Lan:
    device: str
    gateway: str
    clinical: str
    service_if: str
    clinical_if: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def _why_not_supported() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "building network namespaces needs root (run the suite as root or in CI's privileged job)"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    return None


@pytest.fixture
def lan() -> Iterator[Lan]:
    reason = _why_not_supported()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    names = Lan(f"msdev{tag}", f"msgw{tag}", f"msclin{tag}", f"svc{tag}", f"cln{tag}")
    created: list[str] = []
    try:
        for ns in (names.device, names.gateway, names.clinical):
            try:
                _ip("netns", "add", ns)
            except subprocess.CalledProcessError as e:
                pytest.skip(f"cannot create network namespaces here: {e.stderr.strip()}")
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # Both ends of each pair are created inside the namespaces: nothing appears on the host.
        _ip(
            "-n",
            names.device,
            "link",
            "add",
            names.service_if,
            "type",
            "veth",
            "peer",
            "name",
            f"g{tag}",
            "netns",
            names.gateway,
        )
        _ip(
            "-n",
            names.device,
            "link",
            "add",
            names.clinical_if,
            "type",
            "veth",
            "peer",
            "name",
            f"c{tag}",
            "netns",
            names.clinical,
        )
        for ns, ifname, address in (
            (names.device, names.service_if, f"{DEVICE_SERVICE_IP}/24"),
            (names.gateway, f"g{tag}", f"{GATEWAY_IP}/24"),
            (names.device, names.clinical_if, f"{DEVICE_CLINICAL_IP}/24"),
            (names.clinical, f"c{tag}", f"{CLINICAL_HOST_IP}/24"),
        ):
            _ip("-n", ns, "addr", "add", address, "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
        yield names
    finally:
        for ns in created:  # deleting a namespace deletes the veth ends inside it
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=20)


def _in_ns(ns: str, script: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, PYTHON, "-c", script, *args]


def _wait_for(path: Path, procs: list[subprocess.Popen[str]], seconds: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                _out, err = p.communicate()
                pytest.fail(f"{p.args[3]} exited with {p.returncode} before {path.name}: {err[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {path.name}")
        time.sleep(0.05)
    value: dict[str, object] = json.loads(path.read_text())
    return value


def test_maintenance_runs_only_over_the_service_lan(lan: Lan, tmp_path: Path) -> None:
    work = tmp_path / "world"
    work.mkdir()
    SigningKey.generate().save(work / "approval.key")
    SigningKey.generate().save(work / "device.key")
    (work / "world.json").write_text(
        json.dumps(
            {
                "serial": SERIAL,
                "gateway_ip": GATEWAY_IP,
                "device_port": DEVICE_PORT,
                "device_service_ip": DEVICE_SERVICE_IP,
                "device_clinical_ip": DEVICE_CLINICAL_IP,
                "service_if": lan.service_if,
                "clinical_if": lan.clinical_if,
            }
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[str]] = []
    try:
        gateway = subprocess.Popen(
            _in_ns(lan.gateway, GATEWAY_SCRIPT, str(work)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(gateway)
        _wait_for(work / "gateway.json", procs)
        device = subprocess.Popen(
            _in_ns(lan.device, DEVICE_SCRIPT, str(work)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(device)

        # 1. The engineer reaches the device's shell, and the device's link came in over the service LAN.
        engineer = _wait_for(work / "engineer.json", procs)
        assert engineer["exit"] == 0 and "pump: idle" in str(engineer["output"])
        assert engineer["peer"] == DEVICE_SERVICE_IP

        # 2. A link bound to the clinical interface cannot reach the gateway.
        bound = subprocess.run(
            _in_ns(lan.device, CLINICAL_BIND_SCRIPT, str(work)),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert bound.returncode == 0, bound.stderr
        outcome = json.loads(bound.stdout)
        assert outcome["reached"] is False and outcome["code"] == "gateway_unreachable", outcome

        # 3. While the link is up the device listens on nothing: no TCP or UDP socket in its namespace
        #    is listening, and every TCP port of the device is refused from the clinical host.
        listening = subprocess.run(
            ["ip", "netns", "exec", lan.device, "ss", "-H", "-l", "-t", "-u", "-n"],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert listening.returncode == 0, listening.stderr
        assert listening.stdout.strip() == ""
        scan = subprocess.run(
            _in_ns(lan.clinical, SCAN_SCRIPT, DEVICE_CLINICAL_IP),
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert scan.returncode == 0, scan.stderr
        result = json.loads(scan.stdout)
        assert result == {"accepted": [], "not_refused": 0}
        # The service LAN and the gateway are not even routable from the clinical host.
        for target in (GATEWAY_IP, DEVICE_SERVICE_IP):
            probe = subprocess.run(
                _in_ns(lan.clinical, PROBE_SCRIPT, target, str(DEVICE_PORT)),
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
                env=env,
            )
            unreachable = str(errno.ENETUNREACH)
            assert probe.returncode == 0 and probe.stdout.strip() == unreachable, (target, probe.stdout, probe.stderr)

        (work / "done").write_text("")
        for p in procs:
            _out, err = p.communicate(timeout=30)
            assert p.returncode == 0, err[-2000:]
    finally:
        (work / "done").touch(exist_ok=True)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
