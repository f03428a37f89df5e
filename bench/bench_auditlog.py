"""Benchmark of medsec.auditlog: durable appends and proof verification.

Every figure is printed next to a baseline measured in the same run:

* durable appends/s of FileLog, one fsync per append and with group commit
  (concurrent threads, append_many batches), against a plain append-only file
  written with one fsync per record and one fsync per batch;
* inclusion and consistency proof verification in a tree of --tree-entries
  leaves (default 1,000,000; target <= 1 ms), against one SHA-256 of an entry;
* proof generation from a FileLog of --filelog-entries entries.

Run: ``.venv/bin/python bench/bench_auditlog.py [--dir DIR] [--json out.json]``.
Point --dir at the disk you care about: on tmpfs an fsync costs nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsec.auditlog import merkle
from medsec.auditlog.note import NoteSigner
from medsec.auditlog.store import FileLog
from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey

ORIGIN = "bench.medsec.local/log"


def entry(i: int) -> dict[str, Any]:
    return {"event": "remote.session.command", "device": "SN-000123", "n": i, "cmd": "systemctl status medsec"}


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


# -- appends ------------------------------------------------------------------------------------


def baseline_appends(directory: Path, count: int, batch: int) -> float:
    """A plain append-only file: encode, write + fdatasync per ``batch`` records."""
    path = directory / f"baseline-{batch}.dat"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = time.perf_counter()
        for i in range(0, count, batch):
            payloads = [canonical_json(entry(j)) for j in range(i, min(i + batch, count))]
            os.write(fd, b"".join(len(p).to_bytes(4, "big") + p for p in payloads))
            os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return rate(count, elapsed)


def filelog_appends(directory: Path, signer: NoteSigner, count: int, *, batch: int = 1, threads: int = 1) -> float:
    path = directory / f"log-{batch}-{threads}"
    with FileLog(path, ORIGIN, signer) as log:
        per_thread = count // threads

        def work(t: int) -> None:
            base = t * per_thread
            if batch == 1:
                for i in range(per_thread):
                    log.append(entry(base + i))
            else:
                for i in range(0, per_thread, batch):
                    log.append_many([entry(base + j) for j in range(i, min(i + batch, per_thread))])

        start = time.perf_counter()
        if threads == 1:
            work(0)
        else:
            workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        elapsed = time.perf_counter() - start
        total = log.size
    shutil.rmtree(path)
    return rate(total, elapsed)


# -- proofs -------------------------------------------------------------------------------------


class LevelArrays:
    """A NodeReader over one bytes object per level (built bottom-up, 2n hashes)."""

    def __init__(self, leaves: list[bytes]) -> None:
        level = b"".join(merkle.leaf_hash(leaf) for leaf in leaves)
        self.levels = [level]
        sha = hashlib.sha256
        while len(level) >= 64:
            level = b"".join(sha(b"\x01" + level[i : i + 64]).digest() for i in range(0, len(level) - 63, 64))
            self.levels.append(level)

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index * 32 : index * 32 + 32]


def per_call(fn: Callable[[], object], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def proof_figures(size: int, samples: int, rng: random.Random) -> dict[str, float]:
    t0 = time.perf_counter()
    leaves = [b'{"n":%d}' % i for i in range(size)]  # canonical JSON, cheap to make a million of
    tree = LevelArrays(leaves)
    build_s = time.perf_counter() - t0
    root = merkle.root(tree, size)
    cases = []
    for _ in range(samples):
        index = rng.randrange(size)
        old = rng.randrange(1, size)
        cases.append(
            (
                index,
                merkle.inclusion_proof(tree, index, size),
                old,
                merkle.consistency_proof(tree, old, size),
                merkle.root(tree, old),
            )
        )
    leaf_hashes = [tree.node(0, c[0]) for c in cases]

    def verify_inclusions() -> None:
        for (index, proof, _, _, _), h in zip(cases, leaf_hashes, strict=True):
            merkle.verify_inclusion(h, index, size, proof, root)

    def verify_consistencies() -> None:
        for _, _, old, proof, old_root in cases:
            merkle.verify_consistency(old, size, proof, old_root, root)

    def generate() -> None:
        for index, _, old, _, _ in cases:
            merkle.inclusion_proof(tree, index, size)
            merkle.consistency_proof(tree, old, size)

    sample = leaves[size // 2]
    return {
        "tree_size": size,
        "tree_build_s": build_s,
        "inclusion_verify_ms": per_call(verify_inclusions, 3) / samples * 1e3,
        "consistency_verify_ms": per_call(verify_consistencies, 3) / samples * 1e3,
        "proof_generation_ms": per_call(generate, 1) / samples * 1e3,
        "baseline_sha256_ms": per_call(lambda: hashlib.sha256(sample).digest(), 20_000) * 1e3,
        "inclusion_proof_len": len(cases[0][1]),
    }


def filelog_proofs(
    directory: Path, signer: NoteSigner, size: int, samples: int, rng: random.Random
) -> dict[str, float]:
    path = directory / "proof-log"
    with FileLog(path, ORIGIN, signer) as log:
        start = time.perf_counter()
        for i in range(0, size, 10_000):
            log.append_many([entry(j) for j in range(i, min(i + 10_000, size))])
        fill_s = time.perf_counter() - start
        root = log.root()
        indexes = [rng.randrange(size) for _ in range(samples)]
        olds = [rng.randrange(1, size) for _ in range(samples)]
        start = time.perf_counter()
        proofs = [log.inclusion_proof(i) for i in indexes]
        consistency = [log.consistency_proof(m) for m in olds]
        gen_ms = (time.perf_counter() - start) / (2 * samples) * 1e3
        start = time.perf_counter()
        for i, p in zip(indexes, proofs, strict=True):
            merkle.verify_inclusion(merkle.leaf_hash(log.entry_bytes(i)), i, size, p, root)
        read_verify_ms = (time.perf_counter() - start) / samples * 1e3
        for m, p in zip(olds, consistency, strict=True):
            merkle.verify_consistency(m, size, p, log.root(m), root)
    shutil.rmtree(path)
    return {
        "filelog_size": size,
        "filelog_fill_entries_per_s": rate(size, fill_s),
        "filelog_proof_generation_ms": gen_ms,
        "filelog_read_and_verify_ms": read_verify_ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=2000, help="durable appends per append measurement")
    parser.add_argument("--threads", type=int, default=8, help="concurrent appenders for group commit")
    parser.add_argument("--batch", type=int, default=64, help="entries per append_many batch")
    parser.add_argument("--tree-entries", type=int, default=1_000_000, help="tree size for proof verification")
    parser.add_argument("--filelog-entries", type=int, default=200_000, help="FileLog size for proof generation")
    parser.add_argument("--samples", type=int, default=200, help="random proofs per measurement")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir in .)")
    parser.add_argument("--repeat", type=int, default=3, help="append runs per figure (the median is shown)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    signer = NoteSigner(ORIGIN, SigningKey.generate())
    parent = args.dir or Path.cwd()
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-auditlog-", dir=parent))
    results: dict[str, Any] = {
        "entries": args.entries,
        "threads": args.threads,
        "batch": args.batch,
        "repeat": args.repeat,
    }
    try:
        n = args.entries
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeat):  # interleaved, so disk weather hits both sides alike
            runs.setdefault("baseline_fsync_per_write", []).append(baseline_appends(work, n, 1))
            runs.setdefault("filelog_fsync_per_append", []).append(filelog_appends(work, signer, n))
            runs.setdefault("baseline_fsync_per_batch", []).append(baseline_appends(work, n, args.batch))
            runs.setdefault("filelog_append_many", []).append(filelog_appends(work, signer, n, batch=args.batch))
            runs.setdefault("filelog_group_commit_threads", []).append(
                filelog_appends(work, signer, n, threads=args.threads)
            )
        results.update({name: statistics.median(values) for name, values in runs.items()})
        results.update(proof_figures(args.tree_entries, args.samples, rng))
        if args.filelog_entries > 1:
            results.update(filelog_proofs(work, signer, args.filelog_entries, args.samples, rng))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    r = results
    rows = [
        ("durable appends/s, fsync per append", r["filelog_fsync_per_append"], r["baseline_fsync_per_write"]),
        (f"durable appends/s, append_many({args.batch})", r["filelog_append_many"], r["baseline_fsync_per_batch"]),
        (
            f"durable appends/s, {args.threads} threads (group commit)",
            r["filelog_group_commit_threads"],
            r["baseline_fsync_per_write"],
        ),
        (f"inclusion verify ms @ {r['tree_size']:,}", r["inclusion_verify_ms"], r["baseline_sha256_ms"]),
        (f"consistency verify ms @ {r['tree_size']:,}", r["consistency_verify_ms"], r["baseline_sha256_ms"]),
        (f"proof generation ms @ {r['tree_size']:,} (memory)", r["proof_generation_ms"], r["baseline_sha256_ms"]),
    ]
    if "filelog_size" in r:
        rows.append(
            (
                f"FileLog proof generation ms @ {r['filelog_size']:,}",
                r["filelog_proof_generation_ms"],
                r["baseline_sha256_ms"],
            )
        )
    print(f"{'measurement':<52} {'medsec':>14} {'baseline':>14} {'ratio':>9}")
    for name, value, base in rows:
        print(f"{name:<52} {value:>14.4f} {base:>14.4f} {value / base:>9.2f}")
    print(
        f"baselines: plain append-only file (fsync per write / per batch); one SHA-256 of one entry. "
        f"tree built in {r['tree_build_s']:.1f} s; proofs have {r['inclusion_proof_len']} hashes."
    )
    if "filelog_size" in r:
        print(f"FileLog filled at {r['filelog_fill_entries_per_s']:,.0f} entries/s (append_many of 10,000)")
    verdict = max(r["inclusion_verify_ms"], r["consistency_verify_ms"]) <= 1.0
    print(f"proof verification target (<= 1 ms): {'met' if verdict else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
