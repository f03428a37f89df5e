"""Run every benchmark in bench/ in turn (what ``make bench`` does). Each prints its own ratios."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = [
    "bench_auditlog.py",
    "bench_checkins.py",
    "bench_sbom.py",
    "bench_director.py",
    "bench_update_download.py",
    "bench_matching.py",
    "bench_gateway.py",
    "bench_trustdb.py",
]
# Need root: fanotify (bench_exec marks only a tmpfs mount it creates), and a network namespace with a
# shaped veth link for the download over a hospital-like LAN. Skipped with a note otherwise.
ROOT_BENCHMARKS = [["bench_exec.py"], ["bench_update_download.py", "--link", "1gbit"]]


def main() -> int:
    here = Path(__file__).parent
    failed = 0
    runs = [[name] for name in BENCHMARKS]
    if os.geteuid() == 0:
        runs += ROOT_BENCHMARKS
    else:
        skipped = ", ".join(" ".join(run) for run in ROOT_BENCHMARKS)
        print(f"note: not root, skipping {skipped} (fanotify and network namespaces need root)")
    for name, *args in runs:
        print(f"\n=== {' '.join([name, *args])} ===", flush=True)
        result = subprocess.run([sys.executable, str(here / name), *args, *sys.argv[1:]], check=False)
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
