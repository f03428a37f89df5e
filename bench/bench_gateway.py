"""Gateway benchmark: session setup and 100 MB throughput vs a direct OpenSSH sshd, and concurrent sessions.

Run: .venv/bin/python bench/bench_gateway.py [--mb 100] [--sessions 300]
Prints ratios from one run; never used as a CI gate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.remote.world import World, approve, make_session


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _timed(coro: object) -> tuple[float, object]:
    t = time.perf_counter()
    result = await coro  # type: ignore[misc]
    return time.perf_counter() - t, result


def start_sshd(tmp: Path, pubkey_line: str) -> tuple[subprocess.Popen[bytes], int] | None:
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if sshd is None:
        return None
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "sshd_host")], check=True)
    (tmp / "authorized_keys").write_text(pubkey_line + "\n")
    port = _free_port()
    cfg = tmp / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'sshd_host'}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPermitRootLogin yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(cfg)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


async def ssh_direct(w: World, port: int, command: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    user = os.environ.get("USER", "root")
    proc = await asyncio.create_subprocess_exec(
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(w.tmp / "eng_key"),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(port),
        f"{user}@127.0.0.1",
        command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ["PATH"], "HOME": str(w.tmp)},
    )
    out, err = await proc.communicate(stdin)
    return proc.returncode or 0, out, err


async def concurrent(w: World, session_id: str, cert: asyncssh.SSHCertificate, n: int) -> tuple[int, float]:
    assert w.engineer_key is not None
    before = _rss_kib()
    conns: list[asyncssh.SSHClientConnection] = []
    procs: list[asyncssh.SSHClientProcess[str]] = []

    async def one() -> None:
        conn = await asyncssh.connect(
            "127.0.0.1",
            w.eng_port,
            username=session_id,
            client_keys=[(w.engineer_key, cert)],
            known_hosts=None,
            agent_path=None,
            config=[],
        )
        conns.append(conn)
        proc = await conn.create_process(term_type="xterm")
        procs.append(proc)
        await proc.stdout.readuntil("$ ")

    sem = asyncio.Semaphore(50)

    async def guarded() -> None:
        async with sem:
            await one()

    results = await asyncio.gather(*(guarded() for _ in range(n)), return_exceptions=True)
    ok = sum(1 for r in results if not isinstance(r, BaseException))
    per = (_rss_kib() - before) / max(ok, 1)
    for proc in procs:
        proc.stdin.write("exit\r")
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    return ok, per


async def main(mb: int, sessions: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    w = World(tmp)
    await w.start()
    sshd = None
    try:
        now = int(time.time())
        session = w.authority.put(approve(make_session(now), now))  # type: ignore[union-attr]
        cert_path = w.issue_cert(session)
        assert w.engineer_key is not None
        sshd = start_sshd(tmp, bytes(w.engineer_key.export_public_key("openssh")).decode().strip())
        payload = os.urandom(1 << 20) * mb
        runs = 5
        gw_setup = min([(await _timed(w.ssh(session.id, cert_path, "version")))[0] for _ in range(runs)])
        gw_bulk, res = await _timed(w.ssh(session.id, cert_path, "put bulk.bin", stdin=payload))
        assert res[0] == 0, res  # type: ignore[index]
        print(f"gateway: setup {gw_setup * 1000:.0f} ms, {mb} MB in {gw_bulk:.2f} s = {mb / gw_bulk:.1f} MB/s")
        if sshd is not None:
            base_setup = min([(await _timed(ssh_direct(w, sshd[1], "true")))[0] for _ in range(runs)])
            base_bulk, _ = await _timed(ssh_direct(w, sshd[1], f"cat > {tmp / 'direct.bin'}", payload))
            print(
                f"sshd:    setup {base_setup * 1000:.0f} ms, {mb} MB in {base_bulk:.2f} s = {mb / base_bulk:.1f} MB/s"
            )
            print(f"ratio gateway/sshd: setup x{gw_setup / base_setup:.2f}, throughput x{base_bulk / gw_bulk:.2f}")
        else:
            print("no sshd on this machine: no direct baseline (install openssh-server)")
        cert = asyncssh.import_certificate(cert_path.read_bytes())
        t = time.perf_counter()
        ok, per = await concurrent(w, session.id, cert, sessions)
        print(
            f"concurrent recorded sessions: {ok}/{sessions} open in {time.perf_counter() - t:.1f} s, "
            f"{per:.0f} KiB RSS per session (gateway + device + asyncssh client in one process)"
        )
    finally:
        await w.close()
        if sshd is not None:
            sshd[0].terminate()
            sshd[0].wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.mb, args.sessions))
