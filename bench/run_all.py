"""Run every benchmark in bench/ in turn (what ``make bench`` does). Each prints its own ratios."""

from __future__ import annotations

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
]


def main() -> int:
    here = Path(__file__).parent
    failed = 0
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        result = subprocess.run([sys.executable, str(here / name), *sys.argv[1:]], check=False)
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
