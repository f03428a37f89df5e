"""The demo's remote-maintenance tour, done the way a newcomer would: ``medsec demo`` (server, gateway,
agents), the CLI as the engineer, the portal as the hospital, stock OpenSSH through the gateway, then
the service report and ``medsec audit verify`` on its proof bundle (RA-1, RA-2, RA-3, RA-5)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

pytestmark = [
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client"),
    pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext (poppler-utils)"),
]
MEDSEC = [sys.executable, "-m", "medsec"]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _free_base_port() -> int:
    """A port P with P, P+22 and P+23 free (the portal and the demo gateway's two listeners)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 23 > 65535:
            continue
        try:
            for port in (base, base + 22, base + 23):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path, str]]:
    port = _free_base_port()
    data = tmp_path / "demo-data"
    out = (tmp_path / "demo.out").open("wb")
    proc = subprocess.Popen(
        [*MEDSEC, "demo", "--data-dir", str(data), "--port", str(port), "--checkin-interval", "2"],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        while b"medsec audit verify proof.json" not in (tmp_path / "demo.out").read_bytes():
            assert proc.poll() is None, (tmp_path / "demo.out").read_text(errors="replace")[-3000:]
            assert time.monotonic() - started < 120, "the demo did not start within 120 s"
            time.sleep(0.3)
        print(f"demo ready after {time.monotonic() - started:.1f} s")
        info = json.loads((data / "demo.json").read_text())
        yield info, data, (tmp_path / "demo.out").read_text(errors="replace")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def _cli(info: dict[str, Any], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDSEC_SERVER": info["url"], "MEDSEC_TOKEN": info["service_token"]}
    done = subprocess.run([*MEDSEC, *args], check=False, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _portal_login(url: str, user: dict[str, Any]) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60, headers={"accept-language": "en"})
    client.cookies.set("medsec_lang", "en")
    page = client.get("/login", params={"next": "/maintenance"})
    form = {"username": user["username"], "password": user["password"], "next": "/maintenance"}
    answer = client.post("/login", data={**form, "csrf_token": CSRF.findall(page.text)[0]})
    assert answer.status_code == 303, answer.text
    totp_page = client.get(answer.headers["location"])
    code = pyotp.TOTP(user["totp_secret"]).now()
    answer = client.post(
        "/login/totp", data={"code": code, "csrf_token": CSRF.findall(totp_page.text)[0], "next": "/maintenance"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/maintenance", answer.text
    return client


def _post(client: httpx.Client, path: str, page_path: str, **fields: str) -> httpx.Response:
    token = CSRF.findall(client.get(page_path).text)[0]
    return client.post(path, data={"csrf_token": token, **fields})


def _ssh(
    info: dict[str, Any], data: Path, sid: str, *command: str, tty: bool = False, stdin: bytes = b""
) -> tuple[int, bytes, bytes]:
    gw = info["gateway"]
    key = data / "engineer" / "id_ed25519"
    args = [
        "ssh", "-F", "/dev/null", "-i", str(key), "-o", f"CertificateFile={key}-cert.pub",
        "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={data / 'gateway_known_hosts'}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(gw["engineer_port"]),
        *(["-tt"] if tty else []), f"{sid}@{gw['host']}", *command,
    ]  # fmt: skip
    done = subprocess.run(
        args, check=False, input=stdin, capture_output=True, timeout=60, env={"PATH": os.environ["PATH"]}
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.req("RA-1")
@pytest.mark.req("RA-2")
@pytest.mark.req("RA-3")
@pytest.mark.req("RA-5")
def test_demo_remote_maintenance_tour_end_to_end(
    demo: tuple[dict[str, Any], Path, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    info, data, printed = demo
    users = {u["username"]: u for u in info["users"]}
    device = info["devices"][0]["serial"]
    assert f"-p {info['gateway']['engineer_port']}" in printed  # the tour names the real gateway port

    # 1. the engineer requests a session with the CLI
    requested = _cli(
        info, "maintenance", "request", "--device", device, "--purpose", "quarterly inspection",
        "--planned-work", "read status and version", "--expected-impact", "none; stays in clinical use",
        "--rollback", "nothing to roll back", "--minutes", "60", "--downtime", "3", "--json",
    )  # fmt: skip
    sid = json.loads(requested.stdout)["id"]

    # 2. the hospital's responsible person approves in the portal
    hospital = _portal_login(info["url"], users["a-responsible"])
    request.addfinalizer(hospital.close)
    page = f"/maintenance/{sid}"
    assert _post(hospital, f"{page}/approve", page, comment="ok for today").status_code == 303

    # 3. a certificate for this session only
    (data / "engineer").mkdir()
    key = data / "engineer" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    _cli(info, "maintenance", "cert", "--session", sid, "--key", f"{key}.pub", "-o", f"{key}-cert.pub")

    # 4. plain OpenSSH through the gateway; the device attaches within its poll interval
    deadline = time.monotonic() + 40
    while True:
        rc, out, err = _ssh(info, data, sid, "status")
        if rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert rc == 0, err
    assert b"agent" in out or b":" in out
    rc, out, err = _ssh(info, data, sid, tty=True, stdin=b"version\rexit\r")
    assert rc == 0, err
    assert b"medsec-maint$" in out

    # 5. the work report ends the session
    _cli(
        info, "maintenance", "work-report", "--session", sid, "--work-done", "read status and version",
        "--results", "all values normal", "--verification", "status and version as expected",
    )  # fmt: skip

    # 6. the hospital watches the recordings, then confirms the end of work
    session_page = hospital.get(page).text
    links = re.findall(rf'href="(/maintenance/{sid}/recordings/\d+)"', session_page)
    assert len(links) >= 2, session_page
    watched = [hospital.get(link) for link in links]
    assert all(w.status_code == 200 for w in watched)
    assert any("version" in w.text and "approval a-responsible" in w.text for w in watched)
    assert all("Verified: the recording matches" in w.text for w in watched)
    assert _post(hospital, f"{page}/confirm", page, outcome="accepted", comment="thanks").status_code == 303

    # 7. the service report and its proof bundle with the CLI
    pdf = tmp_path / "report-ja.pdf"
    bundle = tmp_path / "proof.json"
    _cli(info, "maintenance", "report", sid, "--lang", "ja", "--format", "pdf", "-o", str(pdf))
    _cli(info, "maintenance", "report", sid, "--format", "bundle", "-o", str(bundle))
    text = "".join(
        subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout.split()
    )
    for figure in (sid, device, "readstatusandversion", "allvaluesnormal", "a-responsible", "okfortoday", "3分"):
        assert figure in text, figure
    assert "version" in text  # a command typed in the recorded shell

    # 8. offline verification with only the public log key
    verified = _cli(info, "audit", "verify", str(bundle), "--log-key", info["log_key"], "--json")
    result = json.loads(verified.stdout)
    proof = json.loads(bundle.read_text())
    kinds = [e["entry"]["type"] for e in proof["entries"]]
    assert result["entries_verified"] == len(kinds)
    for kind in ("remote.session.approved", "remote.session.started", "remote.recording_sealed"):
        assert kind in kinds
    assert kinds.count("remote.recording_viewed") == len(links)
    assert "remote.session.confirmed" in kinds

    proof["entries"][0]["entry"]["details"]["purpose"] = "something else"
    bundle.write_text(json.dumps(proof))
    refused = _cli(info, "audit", "verify", str(bundle), "--log-key", info["log_key"], check=False)
    assert refused.returncode != 0
    assert f"entry {proof['entries'][0]['index']}: not included" in refused.stdout + refused.stderr
