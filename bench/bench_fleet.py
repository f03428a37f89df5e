"""Fleet: N simulated devices checking in against one server; check-ins per second and campaign reach time.

One server process (`medsec.server.asgi`, one uvicorn worker) on PostgreSQL (a fresh database named
after MEDSEC_BENCH_DATABASE_URL or MEDSEC_TEST_DATABASE_URL, dropped at the end; SQLite in a temp
data dir only with --backend sqlite). Setup through the services: the seed organisations and users,
N devices of the infusion pump model, throwaway TUF keys and an image repository with releases
1.0.0 and 1.1.0 as in `medsec demo` (medsec.demo_updates), synced into the database. Then, over HTTP:

1. enrollment of all N devices (each client generates its Ed25519 key and signs the request): time;
2. baseline: GET /healthz for --seconds on the same server and connections;
3. steady state: signed check-ins (installed 1.0.0) for --seconds: check-ins/s;
4. campaign: `maker-release` creates a campaign for 1.1.0 on every device (groups 1%, 10%, rest;
   success threshold 100%, error threshold 50%), `maker-admin` approves and starts it, while every
   device keeps cycling: a device not yet updated reads its director timestamp.json with the
   device-signed headers (and targets.json when the timestamp changed); once targets.json names the
   release, its next signed check-in reports installed 1.1.0 and update state `committed` with the
   release counter, target and campaign label. The install is simulated: no download, no slots.
   Printed: time from the start request until GET /api/v1/campaigns/{id} shows every device
   committed (and the server's own started_at..finished_at), and check-ins/s during the campaign.

Devices have no think time: C keep-alive connections (--connections, split over --clients client
processes) each cycle through their share of the fleet as fast as the server answers, so the
campaign time is how fast this server can take every device through its polls and reports, not
what a fleet on a 10 s (or longer) check-in interval would see.

    .venv/bin/python bench/bench_fleet.py --devices 2000 --campaign-timeout 420
    .venv/bin/python bench/bench_fleet.py --json          # the 10,000-device default

Measured on a 2-core machine (PostgreSQL 15 on the same machine), 2,000 devices: setup 19 s,
enrollment 23 s, /healthz 582/s, steady check-ins 117/s, and the campaign had not reached every
device after 420 s (734 of 2,000 committed; check-ins fell to 16/s while the server logged 234
deadlocks between the director and check-in transactions). The whole run took 8.5 minutes. The
10,000-device default needs several minutes for setup and enrollment alone (both grow with N) and,
with the campaign behaving as above, stops at --campaign-timeout (default 600 s) without reaching
every device: expect 15 minutes or more. The script exits 0 either way and prints the counts reached.

Later run (same machine, shared with other work, load average 10-15): 1,000 devices: enrollment 8.4 s,
/healthz 1,115/s, steady check-ins 346/s, campaign reached all 1,000 in 59 s (check-ins 60/s during it,
4 deadlocks in the server log). 10,000 devices: enrollment about 99 s (about 100/s); 17 minutes after the
start request only 95 of the 100 devices of group 1 were committed and the other 9,905 pending, with
check-ins at about 55/s and 44 deadlocks in the server log; the run was stopped there. Until then a
device whose targets.json request failed kept the new timestamp's digest and never asked again (fixed
above), which can hold a 100%-threshold group open for good.

With audit entries written at commit (ADR 0007), same machine, load average 5-18 from other work, so
compare within a row only loosely: 1,000 devices before/after: steady check-ins 11/s vs 129/s, campaign
not finished after 420 s (868 of 1,000) vs all 1,000 in 87 s, 1 vs 2 deadlocks (pg_stat_database; the
2 after are the campaign's campaign_devices insert against check-in device locks, not the audit head).
10,000 devices after: setup 53 s, enrollment 107 s (94/s), /healthz 602/s, steady check-ins 163/s, the
campaign reached all 10,000 in 1,094 s (groups opened at 325 s and 530 s), check-ins 29/s plus 45
director GET/s during it, no errors, 0 deadlocks. Deadlocks are now counted by PostgreSQL itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_checkins import free_port, pg_database, start_server
from medsec.crypto.keys import SigningKey
from medsec.protocol import EnrollmentRequest, VersionReport, sign_director_request

PRODUCT = "infusion-pump"
HARDWARE_ID = "ic300-rev-b"
OLD_VERSION = "1.0.0"
NEW_VERSION = "1.1.0"
DIRECTOR_CUSTOM = "medsec_director"


# -- setup through the services ---------------------------------------------------------------------


def prepare(data_dir: Path, database_url: str | None, devices: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Seed users, register ``devices`` devices, publish 1.0.0 and 1.1.0; return devices and API tokens."""
    from sqlalchemy import select

    from medsec import demo_updates
    from medsec.server.context import build_context, init_keys
    from medsec.server.migrate import upgrade
    from medsec.server.models import DeviceModel, Organization
    from medsec.server.seed import seed
    from medsec.server.services import devices as device_service
    from medsec.server.services import updates
    from medsec.server.settings import Settings

    settings = Settings(data_dir=data_dir, database_url=database_url)
    init_keys(settings)
    upgrade(settings.effective_database_url())
    keys = demo_updates.demo_keys(data_dir / demo_updates.KEYS_DIR)
    demo_updates.install_server_keys(keys, settings.tuf_online_keys_dir, settings.director_root_dir)
    repo = demo_updates.open_repository(keys, settings.repo_dir)
    work = data_dir / demo_updates.RELEASES_DIR
    for spec in demo_updates.RELEASES:
        demo_updates.release(keys, repo, work, spec)
    ctx = build_context(settings)
    out: list[dict[str, Any]] = []
    try:
        s = seed(ctx)  # the three seeded pumps stay unenrolled (pending), so no campaign selects them
        with ctx.tx() as session:
            model = session.scalar(select(DeviceModel).where(DeviceModel.product == PRODUCT))
            hospital = session.scalar(select(Organization).where(Organization.slug == "hospital-a"))
            assert model is not None and hospital is not None
            for i in range(devices):
                serial = f"FLEET-{i:06d}"
                _d, token = device_service.register_device(
                    session, ctx.audit, None, serial=serial, model=model, hospital=hospital, site=None, token_hours=4
                )
                out.append({"serial": serial, "token": token})
        with ctx.tx() as session:
            synced = updates.sync_releases(session, ctx.audit, settings.repo_dir, datetime.now().astimezone())
            if NEW_VERSION not in {r.version for r in synced}:
                raise SystemExit("release 1.1.0 was not synced from the repository")
    finally:
        ctx.close()
    return out, {"release": s.tokens["maker-release"], "admin": s.tokens["maker-admin"]}


# -- simulated devices (client processes) -------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection driven by hand, cheap enough that the server is the bottleneck.

    A request whose connection the server dropped (it does after an unhandled error) answers status 0
    and the connection is reopened, as a device would.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            if self.writer is None:
                await self.open()
            assert self.reader is not None and self.writer is not None
            self.writer.write(head.encode() + b"\r\n" + (body or b""))
            await self.writer.drain()
            raw = await self.reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            length = 0
            close = False
            for line in raw.split(b"\r\n"):
                lower = line.lower()
                if lower.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                elif lower.startswith(b"connection:") and b"close" in lower:
                    close = True
            payload = await self.reader.readexactly(length)
            if close:
                self.close()
            return status, payload
        except (OSError, asyncio.IncompleteReadError):
            self.close()
            self.reconnects += 1
            return 0, b""


def _report(d: dict[str, Any], key: SigningKey) -> bytes:
    d["counter"] += 1
    update = None
    version = OLD_VERSION
    if d["phase"] in ("assigned", "committed"):
        version = NEW_VERSION  # simulated install: the device "runs" the assigned release
        update = {
            "state": "committed",
            "release_counter": d["release_counter"],
            "target": d["target"],
            "campaign": d["campaign"],
        }
    report = VersionReport(
        serial=d["serial"],
        hardware_id=HARDWARE_ID,
        installed_version=version,
        agent_state="running",
        counter=d["counter"],
        nonce=d["nonce"],
        sent_at=int(time.time()),
        update=update,
    )
    return json.dumps(report.sign(key)).encode()


async def _director_get(conn: Conn, d: dict[str, Any], key: SigningKey, name: str) -> tuple[int, bytes]:
    path = f"/director/{d['serial']}/metadata/{name}"
    return await conn.request("GET", path, headers=sign_director_request(key, d["serial"], path, int(time.time())))


async def _worker(
    conn: Conn, mode: str, mine: list[dict[str, Any]], keys: dict[str, SigningKey], stop: Any
) -> dict[str, int]:
    n = {"ok": 0, "errors": 0, "server_errors": 0, "refused": 0, "checkins": 0, "director": 0, "committed_reports": 0}
    if mode == "enroll":
        for d in mine:
            key = SigningKey.generate()
            req = EnrollmentRequest(
                token=d["token"], serial=d["serial"], hardware_id=HARDWARE_ID, public_key=key.verify_key.to_base64()
            )
            body = json.dumps(req.sign(key)).encode()
            for _attempt in range(5):
                status, payload = await conn.request("POST", "/api/v1/enroll", body)
                if status == 200 or 0 < status < 500:
                    break
                n["server_errors"] += 1
            if status == 200:
                n["ok"] += 1
                d.update(seed=key.to_pem().decode(), nonce=json.loads(payload)["nonce"], counter=0, phase="idle")
                keys[d["serial"]] = key
            else:
                n["errors"] += 1
        return n
    i = 0
    while not stop.is_set():
        if mode == "healthz":
            status, _ = await conn.request("GET", "/healthz")
            n["ok" if status == 200 else "errors"] += 1
            continue
        d = mine[i % len(mine)]
        i += 1
        key = keys[d["serial"]]
        if mode == "campaign" and d["phase"] == "idle":
            status, payload = await _director_get(conn, d, key, "timestamp.json")
            n["director"] += 1
            digest = hashlib.sha256(payload).hexdigest()
            if status != 200:
                n["errors"] += 1
                n["server_errors" if status == 0 or status >= 500 else "refused"] += 1
            elif digest != d.get("timestamp"):
                status, payload = await _director_get(conn, d, key, "targets.json")
                n["director"] += 1
                if status != 200:
                    # Not remembered: the next cycle sees the new timestamp again and retries targets.json.
                    n["errors"] += 1
                    n["server_errors" if status == 0 or status >= 500 else "refused"] += 1
                else:
                    d["timestamp"] = digest
                    for name, entry in json.loads(payload)["signed"]["targets"].items():
                        directive = entry["custom"][DIRECTOR_CUSTOM]
                        d.update(
                            phase="assigned",
                            target=name,
                            campaign=directive["campaign"],
                            release_counter=directive["release_counter"],
                        )
        status, payload = await conn.request("POST", "/api/v1/checkin", _report(d, key))
        n["checkins"] += 1
        if status == 200:
            n["ok"] += 1
            d["nonce"] = json.loads(payload)["nonce"]
            if d["phase"] == "assigned":
                d["phase"] = "committed"
                n["committed_reports"] += 1
        else:
            n["errors"] += 1
            n["server_errors" if status == 0 or status >= 500 else "refused"] += 1
            status, payload = await conn.request("POST", f"/api/v1/devices/{d['serial']}/nonce", b"{}")
            if status == 200:
                d["nonce"] = json.loads(payload)["nonce"]
    return n


def client_process(
    url: str, mode: str, devices: list[dict[str, Any]], connections: int, ready: Any, go: Any, stop: Any, out: Any
) -> None:
    host, port = url.removeprefix("http://").split(":")
    keys = {d["serial"]: SigningKey.from_pem(d["seed"].encode()) for d in devices if d.get("seed")}

    async def run() -> tuple[float, float, list[dict[str, int]]]:
        conns = [Conn(host, int(port)) for _ in range(connections)]
        for c in conns:
            await c.open()
        ready.release()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        t0 = time.monotonic()
        try:
            counts = await asyncio.gather(
                *(_worker(c, mode, devices[i::connections], keys, stop) for i, c in enumerate(conns))
            )
        finally:
            for c in conns:
                c.close()
        for c, n in zip(conns, counts, strict=True):
            n["reconnects"] = c.reconnects
        return t0, time.monotonic(), list(counts)

    t0, t1, counts = asyncio.run(run())
    total = {k: sum(c[k] for c in counts) for k in counts[0]}
    out.put({"t0": t0, "t1": t1, "counts": total, "devices": devices})


class Phase:
    """Client processes for one phase: connect, wait for go, run until stop (or until done for enroll)."""

    def __init__(self, url: str, mode: str, devices: list[dict[str, Any]], processes: int, connections: int) -> None:
        ctx = mp.get_context("spawn")
        self.queue, self.go, self.stop = ctx.Queue(), ctx.Event(), ctx.Event()
        ready = ctx.Semaphore(0)
        per_proc = max(1, connections // processes)
        shards = [devices[i::processes] for i in range(processes)]
        self.procs = [
            ctx.Process(
                target=client_process,
                args=(url, mode, shard, min(per_proc, len(shard)), ready, self.go, self.stop, self.queue),
            )
            for shard in shards
        ]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            ready.acquire()

    def start(self) -> float:
        self.go.set()
        return time.monotonic()

    def finish(self) -> tuple[float, dict[str, int], list[dict[str, Any]]]:
        """Stop, collect; return (elapsed seconds from first start to last end, summed counts, device states)."""
        self.stop.set()
        results = [self.queue.get() for _ in self.procs]
        for p in self.procs:
            p.join()
        elapsed = max(r["t1"] for r in results) - min(r["t0"] for r in results)
        counts = {k: sum(r["counts"][k] for r in results) for k in results[0]["counts"]}
        return elapsed, counts, [d for r in results for d in r["devices"]]


def timed(url: str, mode: str, devices: list[dict[str, Any]], seconds: float, args: argparse.Namespace) -> Any:
    phase = Phase(url, mode, devices, args.clients, args.connections)
    phase.start()
    time.sleep(seconds)
    return phase.finish()


# -- the campaign -----------------------------------------------------------------------------------


def run_campaign(
    url: str, devices: list[dict[str, Any]], tokens: dict[str, str], args: argparse.Namespace
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    n = len(devices)
    release = {"Authorization": f"Bearer {tokens['release']}"}
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    body = {
        "name": f"{NEW_VERSION} to the fleet",
        "product": PRODUCT,
        "version": NEW_VERSION,
        "groups": ["1%", "10%", "rest"],
        "success_threshold": 100,
        "error_threshold": 50,
    }
    phase = Phase(url, "campaign", devices, args.clients, args.connections)
    phase.start()  # devices check in (and poll the director) before, during and after the approval
    api_retries = 0

    def call(method: str, path: str, **kw: Any) -> httpx.Response:
        """One API request, repeated while the server answers 5xx or drops the connection (counted).

        The server drops the connection after an unhandled error (a deadlock victim, say); its
        transaction was rolled back, so asking again is what an operator's client would do.
        """
        nonlocal api_retries
        for _attempt in range(10):
            try:
                r = http.request(method, path, **kw)
            except httpx.TransportError:
                api_retries += 1
                time.sleep(0.2)
                continue
            if r.status_code < 500:
                r.raise_for_status()
                return r
            api_retries += 1
            time.sleep(0.2)
        return http.request(method, path, **kw).raise_for_status()

    with httpx.Client(base_url=url, timeout=600) as http:
        t = time.monotonic()
        r = call("POST", "/api/v1/campaigns", json=body, headers=release)
        create_s = time.monotonic() - t
        cid = r.json()["id"]
        if r.json()["counts"].get("pending") != n:
            raise SystemExit(f"campaign selected {r.json()['counts']}, expected {n} pending")
        call("POST", f"/api/v1/campaigns/{cid}/approve", headers=admin)
        t_start = time.monotonic()
        r = call("POST", f"/api/v1/campaigns/{cid}/start", headers=admin)
        start_s = time.monotonic() - t_start
        polls: list[float] = []
        groups_open: dict[int, float] = {0: 0.0}
        deadline = t_start + args.campaign_timeout
        state: dict[str, Any] = r.json()
        while time.monotonic() < deadline:
            t = time.monotonic()
            state = call("GET", f"/api/v1/campaigns/{cid}", headers=admin).json()
            polls.append(time.monotonic() - t)
            groups_open.setdefault(state["current_group"], round(time.monotonic() - t_start, 2))
            if state["counts"].get("committed") == n or state["status"] not in ("running", "approved"):
                break
            time.sleep(args.poll)
        reached = time.monotonic() - t_start
    elapsed, counts, devices = phase.finish()
    done = state["counts"].get("committed") == n
    server_s = None
    if state.get("finished_at") and state.get("started_at"):
        server_s = round(
            (
                datetime.fromisoformat(state["finished_at"]) - datetime.fromisoformat(state["started_at"])
            ).total_seconds(),
            2,
        )
    return {
        "campaign_status": state["status"],
        "campaign_counts": state["counts"],
        "campaign_reached_all": done,
        "campaign_reach_all_s": round(reached, 2) if done else None,
        "campaign_server_started_to_finished_s": server_s,
        "campaign_group_opened_at_s": {str(k + 1): v for k, v in sorted(groups_open.items())},
        "campaign_create_request_s": round(create_s, 2),
        "campaign_start_request_s": round(start_s, 2),
        "campaign_status_poll_s_max": round(max(polls), 2) if polls else None,
        "campaign_phase_s": round(elapsed, 2),
        "campaign_checkins_per_s": round(counts["checkins"] / elapsed, 1),
        "campaign_director_requests_per_s": round(counts["director"] / elapsed, 1),
        "campaign_errors": counts["errors"],
        "campaign_server_errors": counts["server_errors"],
        "campaign_reconnects": counts["reconnects"],
        "campaign_admin_api_retries_after_5xx": api_retries,
    }, devices


# -- main -------------------------------------------------------------------------------------------


def pg_deadlocks(database_url: str | None) -> int | None:
    """PostgreSQL's own count of deadlocks detected in the bench database (``pg_stat_database``).

    Read after the server stopped: a backend reports its counters when it exits, so nothing is lost
    to the statistics delay of idle pooled connections.
    """
    if database_url is None:
        return None
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(value)


def run_backend(name: str, database_url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        t = time.monotonic()
        devices, tokens = prepare(data_dir, database_url, args.devices)
        setup_s = time.monotonic() - t
        port = free_port()
        server = start_server(data_dir, database_url, port)
        url = f"http://127.0.0.1:{port}"
        try:
            enroll_s, enrolled, devices = timed_enroll(url, devices, args)
            timed(url, "healthz", devices[: args.connections], 1.0, args)  # warm-up
            health_s, health, _ = timed(url, "healthz", devices[: args.connections], args.seconds, args)
            steady_s, steady, devices = timed(url, "checkin", devices, args.seconds, args)
            campaign, devices = run_campaign(url, devices, tokens, args)
        finally:
            server.terminate()
            server.wait(10)
        time.sleep(1.0)  # let the exited backends' statistics land
        deadlocks = pg_deadlocks(database_url)
    health_rate = health["ok"] / health_s
    steady_rate = steady["checkins"] / steady_s
    return {
        "backend": name,
        "devices": args.devices,
        "connections": args.connections,
        "client_processes": args.clients,
        "setup_s": round(setup_s, 1),
        "enroll_s": round(enroll_s, 2),
        "enroll_per_s": round(enrolled["ok"] / enroll_s, 1),
        "enroll_errors": enrolled["errors"],
        "healthz_per_s": round(health_rate, 1),
        "steady_checkins_per_s": round(steady_rate, 1),
        "ratio_checkin_to_healthz": round(steady_rate / health_rate, 3) if health_rate else None,
        "steady_errors": steady["errors"],
        **campaign,
        "deadlocks_whole_run": deadlocks,
        "install": "simulated (no download, no slot switch): a device reports committed after targets.json names 1.1.0",
    }


def timed_enroll(url: str, devices: list[dict[str, Any]], args: argparse.Namespace) -> Any:
    phase = Phase(url, "enroll", devices, args.clients, args.connections)
    phase.start()
    elapsed, counts, devices = phase.finish()  # enroll workers end by themselves; stop is a no-op
    if counts["errors"]:
        raise SystemExit(f"{counts['errors']} enrollments failed")
    return elapsed, counts, devices


def print_text(r: dict[str, Any]) -> None:
    rows = [
        ("setup through services (seed, devices, TUF repo)", f"{r['setup_s']} s"),
        ("enrollment of all devices", f"{r['enroll_s']} s ({r['enroll_per_s']}/s)"),
        ("baseline GET /healthz", f"{r['healthz_per_s']} /s"),
        (
            "steady signed check-ins",
            f"{r['steady_checkins_per_s']} /s (ratio to /healthz {r['ratio_checkin_to_healthz']}, "
            f"errors {r['steady_errors']})",
        ),
        (
            "campaign: start -> all committed",
            f"{r['campaign_reach_all_s']} s" if r["campaign_reached_all"] else f"NOT reached: {r['campaign_counts']}",
        ),
        ("  server started_at..finished_at", f"{r['campaign_server_started_to_finished_s']} s"),
        ("  group opened at (s after start)", str(r["campaign_group_opened_at_s"])),
        (
            "  check-ins during the campaign",
            f"{r['campaign_checkins_per_s']} /s (+ {r['campaign_director_requests_per_s']} director GET/s)",
        ),
        (
            "  errors during the campaign",
            f"{r['campaign_errors']} (server 5xx/dropped {r['campaign_server_errors']}, "
            f"reconnects {r['campaign_reconnects']}, admin API retries {r['campaign_admin_api_retries_after_5xx']})",
        ),
        (
            "  create / start request, slowest poll",
            f"{r['campaign_create_request_s']} s / {r['campaign_start_request_s']} s, "
            f"{r['campaign_status_poll_s_max']} s",
        ),
        ("deadlocks (PostgreSQL pg_stat_database, whole run)", str(r["deadlocks_whole_run"])),
    ]
    print(
        f"backend {r['backend']}: {r['devices']} devices, {r['connections']} connections "
        f"in {r['client_processes']} client processes"
    )
    for label, value in rows:
        print(f"  {label:<52}{value}")
    print(f"  install: {r['install']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the /healthz and steady phases")
    parser.add_argument("--connections", type=int, default=64, help="concurrent device connections in total")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between campaign status polls")
    parser.add_argument("--campaign-timeout", type=float, default=600.0, help="give up the campaign after")
    parser.add_argument("--json", action="store_true")
    args, _unknown = parser.parse_known_args()
    if args.backend == "sqlite":
        result = run_backend("sqlite", None, args)
    else:
        pg_url = os.environ.get("MEDSEC_BENCH_DATABASE_URL") or os.environ.get("MEDSEC_TEST_DATABASE_URL")
        if not pg_url:
            print("bench_fleet skipped: set MEDSEC_BENCH_DATABASE_URL (or use --backend sqlite)", file=sys.stderr)
            return 0
        url, drop = pg_database(pg_url)
        try:
            result = run_backend("postgresql", url, args)
        finally:
            drop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_text(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
