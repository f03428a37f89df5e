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
# Needs root and fanotify (it marks only a tmpfs mount it creates); skipped with a note otherwise.
ROOT_BENCHMARKS = ["bench_exec.py"]


def main() -> int:
    here = Path(__file__).parent
    failed = 0
    names = list(BENCHMARKS)
    if os.geteuid() == 0:
        names += ROOT_BENCHMARKS
    else:
        print(f"note: not root, skipping {', '.join(ROOT_BENCHMARKS)} (fanotify needs CAP_SYS_ADMIN)")
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        result = subprocess.run([sys.executable, str(here / name), *sys.argv[1:]], check=False)
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
