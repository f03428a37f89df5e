"""Benchmark of medsec.protect.trustdb: load-and-verify of a large signed trust database.

Figures, each next to a baseline measured in the same run:

* load-and-verify (DSSE signature, every column checked, digest set built) of a database of
  --entries entries (default 100,000; target <= 0.5 s), against plain ``json.loads`` of the same
  envelope bytes and ``json.loads`` of the document inside;
* ``digest in db`` lookups (what the enforcement engine does on every uncached decision),
  against a lookup in a plain Python set of the same digests.

Run: ``.venv/bin/python bench/bench_trustdb.py [--entries N] [--repeat R] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from medsec.crypto.keys import SigningKey
from medsec.protect.trustdb import TrustDB, TrustEntry, load_trustdb

TARGET_SECONDS = 0.5
PRODUCT = "infusion-pump"


def make_db(count: int) -> TrustDB:
    """A database shaped like a real image: long library paths, mixed sources and modes."""
    sources = ("os-image", "os-image", "os-image", "payload")
    entries = [
        TrustEntry(
            f"/usr/lib/x86_64-linux-gnu/pkg{i // 50:05d}/lib{i:06d}.so.{i % 7}",
            hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
            4096 + i * 13 % 900_000,
            0o755 if i % 3 else 0o644,
            sources[i % 4],
        )
        for i in range(count)
    ]
    return TrustDB(PRODUCT, "1.2.0", 7, "2026-01-10T09:00:00Z", entries)


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args(argv)

    key = SigningKey.generate()
    db = make_db(args.entries)
    data = db.seal([key])
    document_bytes = base64.b64decode(json.loads(data)["payload"])
    trusted = [key.verify_key]

    loaded = load_trustdb(data, trusted, product=PRODUCT, min_counter=7)
    assert len(loaded) == args.entries

    t_load = median_seconds(lambda: load_trustdb(data, trusted, product=PRODUCT, min_counter=7), args.repeat)
    t_json_envelope = median_seconds(lambda: json.loads(data), args.repeat)
    t_json_document = median_seconds(lambda: json.loads(document_bytes), args.repeat)

    present = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(0, args.entries, 7)]
    absent = [hashlib.sha256(b"x" + i.to_bytes(8, "big")).digest() for i in range(len(present))]
    probes = (present + absent) * max(1, args.lookups // (2 * len(present)))
    plain = set(loaded.digests)

    def lookups(container: Any) -> None:
        for d in probes:
            _ = d in container

    t_lookup = median_seconds(lambda: lookups(loaded), 3) / len(probes)
    t_set = median_seconds(lambda: lookups(plain), 3) / len(probes)

    result = {
        "entries": args.entries,
        "envelope_bytes": len(data),
        "load_and_verify_s": t_load,
        "json_loads_envelope_s": t_json_envelope,
        "json_loads_document_s": t_json_document,
        "ratio_load_to_json_envelope": t_load / t_json_envelope,
        "ratio_load_to_json_document": t_load / t_json_document,
        "target_s": TARGET_SECONDS,
        "within_target": t_load <= TARGET_SECONDS,
        "lookup_ns": t_lookup * 1e9,
        "set_lookup_ns": t_set * 1e9,
        "ratio_lookup_to_set": t_lookup / t_set,
    }
    print(f"trust database: {args.entries:,} entries, envelope {len(data) / 1e6:.1f} MB")
    print(
        f"  load+verify     {t_load * 1000:8.1f} ms  (target <= {TARGET_SECONDS * 1000:.0f} ms: "
        f"{'met' if result['within_target'] else 'MISSED'})"
    )
    print(f"  json.loads env  {t_json_envelope * 1000:8.1f} ms  ratio {result['ratio_load_to_json_envelope']:.1f}x")
    print(f"  json.loads doc  {t_json_document * 1000:8.1f} ms  ratio {result['ratio_load_to_json_document']:.1f}x")
    ratio = result["ratio_lookup_to_set"]
    print(f"  digest in db    {t_lookup * 1e9:8.1f} ns  vs set {t_set * 1e9:.1f} ns  ratio {ratio:.2f}x")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
