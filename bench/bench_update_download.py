"""Benchmark of the device update client: refresh + verify + download of one large target.

Compares, in the same run and against the same local HTTP server:

* ``medsec``: ``UpdateClient.check()`` (director and image refresh with ``tuf.ngclient``,
  the device rule) plus ``UpdateClient.download()`` (bounded, resumable, hashed, fsynced,
  moved into place);
* ``plain``: one streaming ``httpx`` GET of the same file written to disk, nothing verified.

Target: medsec <= 1.2 x plain. Run: ``.venv/bin/python bench/bench_update_download.py [--mb 50] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder)")
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
        print(f"target: {len(big.data) / 1e6:.1f} MB, {args.runs} runs each")
        medsec_times, plain_times, check_times = [], [], []
        with serve(www) as (url, _), HttpxFetcher() as fetcher, httpx.Client() as http:
            for run in range(args.runs):
                root = work / f"device-{run}"
                provision(root, image.root_bytes, director.root_bytes, factory)
                plain_file = work / f"plain-{run}.bin"

                start = time.perf_counter()
                with http.stream("GET", f"{url}/{url_path}") as response, plain_file.open("wb") as out:
                    for chunk in response.iter_raw():
                        out.write(chunk)
                plain_times.append(time.perf_counter() - start)

                start = time.perf_counter()
                with UpdateClient(UpdatePaths(root), IDENTITY, url, fetcher=fetcher) as client:
                    assigned = client.check(None)
                    check_times.append(time.perf_counter() - start)
                    assert assigned is not None
                    client.download(assigned)
                medsec_times.append(time.perf_counter() - start)
                plain_file.unlink()
        plain, ours = statistics.median(plain_times), statistics.median(medsec_times)
        print(f"plain HTTP download       : {plain:7.3f} s (median)")
        print(f"medsec refresh+verify+get : {ours:7.3f} s (median)")
        print(f"  of which refresh+verify : {statistics.median(check_times):7.3f} s (both repositories)")
        print(f"ratio medsec / plain      : {ours / plain:7.2f} x (target <= 1.2 x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
