"""Signed check-ins per second against one server process, next to /healthz on the same server.

For each backend (SQLite in a temp data dir; PostgreSQL when MEDSEC_BENCH_DATABASE_URL or
MEDSEC_TEST_DATABASE_URL names a server) the script starts `medsec server run` (one uvicorn
process), enrolls N simulated devices, then drives load from client processes for a fixed time:
first GET /healthz (the baseline: the same HTTP stack doing no work), then signed check-ins
(verify Ed25519, nonce, counter, store, rotate nonce). It prints both rates and their ratio.

    .venv/bin/python bench/bench_checkins.py --seconds 10 --devices 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from medsec.crypto.keys import SigningKey
from medsec.protocol import EnrollmentRequest, VersionReport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(data_dir: Path, database_url: str | None, devices: int) -> list[dict[str, str]]:
    from medsec.server.context import build_context, init_keys
    from medsec.server.migrate import upgrade
    from medsec.server.models import OrgKind
    from medsec.server.services import accounts
    from medsec.server.services import devices as device_service
    from medsec.server.settings import Settings

    settings = Settings(data_dir=data_dir, database_url=database_url)
    init_keys(settings)
    upgrade(settings.effective_database_url())
    ctx = build_context(settings)
    out = []
    try:
        with ctx.tx() as s:
            accounts.create_organization(
                s, ctx.audit, None, kind=OrgKind.MANUFACTURER, slug="bench-maker", name="Bench"
            )
            hospital = accounts.create_organization(s, ctx.audit, None, kind=OrgKind.HOSPITAL, slug="bench-h", name="H")
            model = device_service.create_model(
                s, ctx.audit, None, product="bench", name="Bench", hardware_id="bench-hw"
            )
            for i in range(devices):
                serial = f"B-{i:05d}"
                _d, token = device_service.register_device(
                    s, ctx.audit, None, serial=serial, model=model, hospital=hospital, site=None, token_hours=1
                )
                out.append({"serial": serial, "token": token})
    finally:
        ctx.close()
    return out


def start_server(data_dir: Path, database_url: str | None, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MEDSEC_DATA_DIR=str(data_dir))
    if database_url:
        env["MEDSEC_DATABASE_URL"] = database_url
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "medsec.server.asgi:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def enroll_all(url: str, devices: list[dict[str, str]]) -> list[dict[str, Any]]:
    enrolled = []
    with httpx.Client(base_url=url) as client:
        for d in devices:
            key = SigningKey.generate()
            req = EnrollmentRequest(
                token=d["token"], serial=d["serial"], hardware_id="bench-hw", public_key=key.verify_key.to_base64()
            )
            r = client.post("/api/v1/enroll", json=req.sign(key))
            r.raise_for_status()
            enrolled.append({"serial": d["serial"], "seed": key.to_pem().decode(), "nonce": r.json()["nonce"]})
    return enrolled


async def _http_loop(host: str, port: int, mode: str, device: dict[str, Any], stop_at: float) -> tuple[int, int]:
    """One keep-alive HTTP/1.1 connection driven by hand: cheap enough that the server is the bottleneck."""
    reader, writer = await asyncio.open_connection(host, port)
    key = SigningKey.from_pem(device["seed"].encode())
    nonce, counter = device["nonce"], device.get("counter", 0)
    ok = errors = 0
    try:
        while time.monotonic() < stop_at:
            if mode == "healthz":
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
            else:
                counter += 1
                report = VersionReport(
                    serial=device["serial"],
                    hardware_id="bench-hw",
                    installed_version="1.0.0",
                    agent_state="running",
                    counter=counter,
                    nonce=nonce,
                    sent_at=int(time.time()),
                )
                body = json.dumps(report.sign(key)).encode()
                writer.write(
                    b"POST /api/v1/checkin HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            payload = await reader.readexactly(length)
            if status == 200:
                ok += 1
                if mode == "checkin":
                    nonce = json.loads(payload)["nonce"]
            else:
                errors += 1
    finally:
        writer.close()
        await writer.wait_closed()
    device["nonce"], device["counter"] = nonce, counter
    return ok, errors


def client_process(url: str, mode: str, devices: list[dict[str, Any]], seconds: float, out: Any) -> None:
    host, port = url.removeprefix("http://").split(":")

    async def run_all() -> list[tuple[int, int]]:
        stop_at = time.monotonic() + seconds
        return await asyncio.gather(*(_http_loop(host, int(port), mode, d, stop_at) for d in devices))

    results = asyncio.run(run_all())
    out.put({"ok": sum(r[0] for r in results), "errors": sum(r[1] for r in results), "devices": devices})


def drive(
    url: str, mode: str, devices: list[dict[str, Any]], seconds: float, processes: int
) -> tuple[float, int, list[dict[str, Any]]]:
    """Run ``processes`` client processes for ``seconds``; return (successes per second, errors, device states)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    shards = [devices[i::processes] for i in range(processes)]
    procs = [ctx.Process(target=client_process, args=(url, mode, shard, seconds, queue)) for shard in shards]
    start = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - start
    merged = [d for r in results for d in r["devices"]]
    return sum(r["ok"] for r in results) / elapsed, sum(r["errors"] for r in results), merged


def pg_database(admin_url: str) -> tuple[str, Any]:
    name = f"medsec_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def run_backend(name: str, database_url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        devices = prepare(data_dir, database_url, args.devices)
        port = free_port()
        server = start_server(data_dir, database_url, port)
        url = f"http://127.0.0.1:{port}"
        try:
            enrolled = enroll_all(url, devices)
            drive(url, "healthz", enrolled, 1.0, args.clients)  # warm-up
            health_rate, health_err, _ = drive(url, "healthz", enrolled, args.seconds, args.clients)
            checkin_rate, checkin_err, enrolled = drive(url, "checkin", enrolled, args.seconds, args.clients)
        finally:
            server.terminate()
            server.wait(10)
    return {
        "backend": name,
        "healthz_per_s": round(health_rate, 1),
        "checkins_per_s": round(checkin_rate, 1),
        "ratio_checkin_to_healthz": round(checkin_rate / health_rate, 3) if health_rate else None,
        "errors": health_err + checkin_err,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--devices", type=int, default=48, help="simulated devices (one client thread each)")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    if args.backend in ("sqlite", "both"):
        results.append(run_backend("sqlite", None, args))
    pg_url = os.environ.get("MEDSEC_BENCH_DATABASE_URL") or os.environ.get("MEDSEC_TEST_DATABASE_URL")
    if args.backend in ("postgresql", "both"):
        if not pg_url:
            print("PostgreSQL skipped: set MEDSEC_BENCH_DATABASE_URL", file=sys.stderr)
        else:
            url, drop = pg_database(pg_url)
            try:
                results.append(run_backend("postgresql", url, args))
            finally:
                drop()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'backend':<12}{'healthz/s':>12}{'check-ins/s':>14}{'ratio':>8}{'errors':>8}")
    for r in results:
        print(
            f"{r['backend']:<12}{r['healthz_per_s']:>12}{r['checkins_per_s']:>14}{r['ratio_checkin_to_healthz']:>8}{r['errors']:>8}"
        )


if __name__ == "__main__":
    main()
