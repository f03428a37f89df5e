"""Benchmark of the device update client: refresh + verify + download of one large target.

Compares, in the same run and against the same local HTTP server and file:

* ``medsec``: ``UpdateClient.check()`` (director and image refresh with ``tuf.ngclient``,
  the device rule) plus ``UpdateClient.download()`` (bounded, resumable, SHA-256 checked,
  fsynced, moved into place);
* ``plain``: one streaming ``httpx`` GET of the same file written to disk chunk by chunk,
  nothing verified and no fsync (what ``curl -o`` does). The target ratio is against this one;
* ``plain+fsync`` (for reference only): the same plain download followed by one fsync, the
  least any download that must survive a power loss pays.

The order of the contenders alternates from run to run, and each written file is deleted
before the next contender starts, so neither inherits the other's page cache or writeback.
CPU seconds (all threads of this process, the server's included) are printed too: on a
machine shared with other work, wall time follows CPU time, and the CPU ratio shows what the
verification costs when no core is idle.

``--link`` picks the network between device and server. ``loopback`` (the default) is the
harshest case: the file arrives at memory speed, so the fixed costs (the metadata round trips,
the fsync) weigh the most. ``1gbit`` and ``100mbit`` (root only) put the server in its own
network namespace behind a veth pair shaped with ``tc tbf``, like a device on a hospital LAN; the
server is then a separate process, and the CPU figures are the device's alone.

Target: medsec <= 1.2 x plain.
Run: ``.venv/bin/python bench/bench_update_download.py [--mb 50] [--runs 3] [--link loopback|1gbit|100mbit]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import secrets
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.updates.device.device_env import IDENTITY, provision, release_files  # noqa: E402
from tests.updates.device.range_server import serve  # noqa: E402
from tests.updates.device.repo_builder import (  # noqa: E402
    DirectorRepo,
    ImageRepo,
    make_bundle,
    release_custom,
    target_name,
)

from medsec.updates.client import UpdateClient, UpdatePaths  # noqa: E402
from medsec.updates.fetcher import HttpxFetcher  # noqa: E402

LINK_RATES = {"loopback": None, "1gbit": "1gbit", "100mbit": "100mbit"}

# Runs in the server's network namespace: the bench's file server on the given address until stdin closes.
_SERVER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tests.updates.device.range_server import serve
with serve(Path(sys.argv[1]), host=sys.argv[2]) as (url, _):
    print(url, flush=True)
    sys.stdin.read()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@contextlib.contextmanager
def server_for(www: Path, link: str) -> Iterator[str]:
    """The file server's base URL: in this process on loopback, or behind a shaped veth link."""
    rate = LINK_RATES[link]
    if rate is None:
        with serve(www) as (url, _):
            yield url
        return
    if os.geteuid() != 0:
        raise SystemExit(f"--link {link} needs root (a network namespace, a veth pair and tc)")
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"msbench-{tag}", f"msb{tag}h", f"msb{tag}n"
    net = f"10.213.{int(tag[:2], 16)}"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _ip("addr", "add", f"{net}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{net}.2/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        # Shape what the server sends (the download direction) to the link's rate.
        subprocess.run(
            [
                "tc",
                "-n",
                ns,
                "qdisc",
                "add",
                "dev",
                ns_if,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "512kb",
                "latency",
                "50ms",
            ],
            check=True,
            capture_output=True,
            timeout=20,
        )
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SERVER, str(www), f"{net}.2", str(ROOT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            ready, _, _ = select.select([server.stdout], [], [], 30)
            url = server.stdout.readline().strip() if ready else ""
            if not url.startswith("http://"):
                raise SystemExit("the file server in the bench namespace did not start within 30 s")
            yield url
        finally:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=20)  # takes the veth pair


def plain_download(http: httpx.Client, url: str, out: Path, *, fsync: bool = False) -> None:
    with http.stream("GET", url) as response, out.open("wb") as f:
        for chunk in response.iter_raw():
            f.write(chunk)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def medsec_update(
    fetcher: HttpxFetcher, root: Path, url: str, wall: dict[str, list[float]], cpu: dict[str, list[float]]
) -> None:
    """What the device does: refresh both repositories, apply the rule, download the assigned bundle."""
    with UpdateClient(UpdatePaths(root), IDENTITY, url, fetcher=fetcher) as client:
        check_wall, check_cpu = time.perf_counter(), time.process_time()
        assigned = client.check(None)
        wall["check"].append(time.perf_counter() - check_wall)
        cpu["check"].append(time.process_time() - check_cpu)
        assert assigned is not None
        client.download(assigned)


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of ``work``."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--link", choices=sorted(LINK_RATES), default="loopback", help="network to the server")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-update-", dir=args.dir))
    try:
        www = work / "www"
        image, director = ImageRepo(www), DirectorRepo(www)
        factory = make_bundle("1.0.0", 1, release_files("1.0.0"))
        image.add_target(target_name("1.0.0"), factory.data, release_custom(factory))
        big = make_bundle("1.1.0", 2, release_files("1.1.0", big=args.mb * 1024 * 1024))
        target = image.add_target(target_name("1.1.0"), big.data, release_custom(big))
        image.publish()
        director.assign(target)
        url_path = image.target_file(target.path).relative_to(www)
        print(
            f"target: {len(big.data) / 1e6:.1f} MB, {args.runs} runs each, link {args.link}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        wall: dict[str, list[float]] = {"plain": [], "plain+fsync": [], "medsec": [], "check": []}
        cpu: dict[str, list[float]] = {name: [] for name in wall}
        with server_for(www, args.link) as url, HttpxFetcher() as fetcher, httpx.Client() as http:
            for run in range(args.runs):
                root = work / f"device-{run}"
                provision(root, image.root_bytes, director.root_bytes, factory)
                plain_file = work / f"plain-{run}.bin"

                target_url = f"{url}/{url_path}"
                contenders: list[tuple[str, Callable[[], object]]] = [
                    ("plain", functools.partial(plain_download, http, target_url, plain_file)),
                    ("medsec", functools.partial(medsec_update, fetcher, root, url, wall, cpu)),
                    ("plain+fsync", functools.partial(plain_download, http, target_url, plain_file, fsync=True)),
                ]
                for name, work_fn in contenders if run % 2 == 0 else contenders[::-1]:
                    seconds, cpu_seconds = timed(work_fn)
                    wall[name].append(seconds)
                    cpu[name].append(cpu_seconds)
                    plain_file.unlink(missing_ok=True)
                shutil.rmtree(root)
        report(wall, cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    med = {name: statistics.median(times) for name, times in wall.items()}
    med_cpu = {name: statistics.median(times) for name, times in cpu.items()}
    print(f"plain HTTP download       : {med['plain']:7.3f} s (median)  cpu {med_cpu['plain']:6.3f} s")
    print(f"plain download + fsync    : {med['plain+fsync']:7.3f} s (median)  cpu {med_cpu['plain+fsync']:6.3f} s")
    print(f"medsec refresh+verify+get : {med['medsec']:7.3f} s (median)  cpu {med_cpu['medsec']:6.3f} s")
    print(f"  of which refresh+verify : {med['check']:7.3f} s (both repositories)")
    print(f"ratio medsec / plain      : {med['medsec'] / med['plain']:7.2f} x (target <= 1.2 x)")
    print(f"ratio medsec / plain+fsync: {med['medsec'] / med['plain+fsync']:7.2f} x")
    print(f"cpu ratio medsec / plain  : {med_cpu['medsec'] / med_cpu['plain']:7.2f} x")


if __name__ == "__main__":
    sys.exit(main())
