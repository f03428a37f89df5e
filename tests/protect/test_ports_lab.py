"""A small network lab for the port-policy tests: a device and two LANs in network namespaces.

::

    [clinical peer] 10.50.0.2 ──clinical── 10.50.0.1 clin0 [device] svc0 10.60.0.1 ──service── [gateway]
                                                                      10.60.0.2 (gateway), 10.60.0.3 (other)

Every name carries a random tag so parallel runs never collide; the veth pairs are created inside
the namespaces, so nothing appears on the host, and teardown deletes the namespaces (and with them
the veths) even when the test failed. Processes started in the lab are killed first, because a
process inside a namespace would keep it alive.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

DEVICE_CLIN = "10.50.0.1"
CLIN_PEER = "10.50.0.2"
DEVICE_SVC = "10.60.0.1"
GATEWAY = "10.60.0.2"
SVC_OTHER = "10.60.0.3"
PYTHON = sys.executable

_LISTENER = """
import socket, sys, threading
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
if proto == "tcp":
    s.listen(16)
print("ready", flush=True)
while True:
    if proto == "tcp":
        c, _ = s.accept()
        c.close()
    else:
        s.recvfrom(2048)
"""

# Connects to every (source, destination, port) at once and prints open / refused / timeout for each.
_PROBE = """
import json, socket, sys, threading
jobs = json.loads(sys.argv[1]); timeout = float(sys.argv[2]); out = [None] * len(jobs)
def run(i, src, dst, port):
    s = socket.socket(); s.settimeout(timeout)
    try:
        if src: s.bind((src, 0))
        s.connect((dst, port)); out[i] = "open"
    except ConnectionRefusedError: out[i] = "refused"
    except (socket.timeout, TimeoutError): out[i] = "timeout"
    except OSError as e: out[i] = "error:" + str(e.errno)
    finally: s.close()
ts = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(out))
"""


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20).stdout


def nft(netns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args], check=True, capture_output=True, text=True, timeout=20
    ).stdout


def why_no_lab() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "network namespaces and nftables need root (run as root or in CI's privileged job)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2 / nftables)"
    return None


@dataclass
class Lab:
    device: str
    clinical: str
    service: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.device, self.clinical, self.service)

    def listen(self, netns: str, proto: str, host: str, port: int) -> subprocess.Popen[str]:
        """Start a listener inside ``netns``; returns once it is bound."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, PYTHON, "-c", _LISTENER, proto, host, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise AssertionError(f"listener did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> None:
        proc.kill()
        proc.wait(timeout=10)

    def probe(self, netns: str, jobs: list[tuple[str | None, str, int]], timeout: float = 1.0) -> list[str]:
        """Try TCP connections from ``netns`` (source address, destination, port); one result per job."""
        out = subprocess.run(
            ["ip", "netns", "exec", netns, PYTHON, "-c", _PROBE, json.dumps(jobs), str(timeout)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        result: list[str] = json.loads(out)
        return result

    def extra_link(self, name: str) -> None:
        """A new interface on the device (a veth whose far end sits on the clinical side), still down."""
        ip(
            "-n",
            self.device,
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            f"x{name}"[:15],
            "netns",
            self.clinical,
        )

    def link_up(self, netns: str, name: str) -> bool:
        links = json.loads(ip("-n", netns, "-j", "link", "show", "dev", name))
        return "UP" in links[0]["flags"]


def _build(lab: Lab) -> None:
    for ns in lab.namespaces:
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", lab.device, "link", "add", "clin0", "type", "veth", "peer", "name", "cpeer", "netns", lab.clinical)
    ip("-n", lab.device, "link", "add", "svc0", "type", "veth", "peer", "name", "speer", "netns", lab.service)
    for ns, name, addrs in (
        (lab.device, "clin0", [DEVICE_CLIN]),
        (lab.device, "svc0", [DEVICE_SVC]),
        (lab.clinical, "cpeer", [CLIN_PEER]),
        (lab.service, "speer", [GATEWAY, SVC_OTHER]),
    ):
        for addr in addrs:
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", name)
        ip("-n", ns, "link", "set", name, "up")


def teardown(lab: Lab) -> None:
    for proc in lab.processes:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    for ns in lab.namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = why_no_lab()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    built = Lab(f"mspd-{tag}", f"mspc-{tag}", f"msps-{tag}")
    try:
        _build(built)
        deadline = time.monotonic() + 5
        # Wait until the veths carry traffic (IPv4 needs no DAD, but the link needs a moment).
        while built.probe(built.clinical, [(None, DEVICE_CLIN, 9)], 0.3) != ["refused"]:
            if time.monotonic() > deadline:
                raise AssertionError("the lab's clinical LAN does not come up")
        yield built
    finally:
        teardown(built)


def test_lab_teardown_removes_namespaces_and_processes() -> None:
    reason = why_no_lab()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    built = Lab(f"mspd-{tag}", f"mspc-{tag}", f"msps-{tag}")
    try:
        _build(built)
        proc = built.listen(built.device, "tcp", "0.0.0.0", 7001)
        assert built.probe(built.clinical, [(None, DEVICE_CLIN, 7001)]) == ["open"]
    finally:
        teardown(built)
    assert proc.poll() is not None
    listed = ip("netns", "list")
    assert all(ns not in listed for ns in built.namespaces)


MODEL = "pump-x1"
GATEWAY_PORT = 2200
CONSOLE_PORT = 2222


def policy_doc(**overrides: object) -> dict[str, object]:
    """The lab's policy: clinical and service interfaces, the gateway alone may reach port 2200."""
    doc: dict[str, object] = {
        "schema": "medsec.port-policy/1",
        "model": MODEL,
        "version": 1,
        "mode": "enforce",
        "interfaces": [{"name": "clin0", "role": "clinical"}, {"name": "svc0", "role": "service"}],
        "inbound": [
            {
                "interface": "svc0",
                "protocol": "tcp",
                "port": GATEWAY_PORT,
                "from": f"{GATEWAY}/32",
                "comment": "maintenance gateway",
            }
        ],
        "usb": {"allow": [{"vendor": "0781", "product": "5581", "serial": "SVC-STICK-01", "interface_class": "08"}]},
        "console": {"mode": "maintenance_only", "port": CONSOLE_PORT},
    }
    doc.update(overrides)
    return doc
