"""Per-device director metadata sets per second (one core), next to bare Ed25519 signatures.

A set is the three per-device files (targets with one assigned target, snapshot, timestamp), each
signed once, which the server produces at a device's check-in. Baselines measured in the same run:
one bare Ed25519 signature over the same targets bytes, and three (the signing floor of one set);
plus the same set built through the python-tuf Metadata API, to show what the direct encoding buys.
Target: >= 2,000 sets/s per core and <= 4 KB per device.

    .venv/bin/python bench/bench_director.py --seconds 2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from medsec.updates.director import DirectorAssignment, DirectorRepository
from medsec.updates.roots import RoleKeys, new_root


def rate(fn: Callable[[int], object], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            fn(n)
            n += 1
    return n / (time.perf_counter() - start)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args, _ = parser.parse_known_args(argv)

    now = datetime.now(UTC)
    root_key = CryptoSigner.generate_ed25519()
    online = {r: CryptoSigner.generate_ed25519() for r in ("targets", "snapshot", "timestamp")}
    roles = {"root": RoleKeys((root_key.public_key,))}
    roles.update({r: RoleKeys((s.public_key,)) for r, s in online.items()})
    root = new_root(roles, [root_key], now, consistent_snapshot=False)
    director = DirectorRepository(
        root, targets=online["targets"], snapshot=online["snapshot"], timestamp=online["timestamp"]
    )
    assignment = DirectorAssignment(
        target_name="infusion-pump/1.1.0/release.tar",
        length=52_428_800,
        hashes={"sha256": "ab" * 32},
        serial="IC300-000000",
        hardware_id="ic300-rev-b",
        release_counter=7,
        campaign="c-12",
        install_window={"start": "2025-04-01T01:00:00Z", "end": "2025-04-01T04:00:00Z"},
    )

    def director_set(i: int) -> object:
        serial = f"IC300-{i:06d}"
        a = DirectorAssignment(**{**assignment.__dict__, "serial": serial})
        return director.device_metadata(serial, a, 1 + i, now)

    sample = director.device_metadata(assignment.serial, assignment, 1, now)
    for name, data in sample.files().items():  # sanity: what the device parses and verifies
        md = Metadata.from_bytes(data)
        root.signed.verify_delegate(md.signed.type, md.signed_bytes, md.signatures)
        assert name.startswith(md.signed.type)

    payload = Metadata.from_bytes(sample.targets).signed_bytes
    signer = online["targets"]
    compact = JSONSerializer(compact=True)

    def tuf_api_set(i: int) -> object:
        serial = f"IC300-{i:06d}"
        a = DirectorAssignment(**{**assignment.__dict__, "serial": serial})
        t = Metadata(Targets(version=1 + i, expires=now + timedelta(days=7)))
        t.signed.targets[a.target_name] = TargetFile(
            a.length, dict(a.hashes), a.target_name, {"custom": a.target_entry()["custom"]}
        )
        s = Metadata(Snapshot(version=1 + i, expires=now + timedelta(days=7), meta={"targets.json": MetaFile(1 + i)}))
        ts = Metadata(Timestamp(version=1 + i, expires=now + timedelta(days=1), snapshot_meta=MetaFile(1 + i)))
        out = []
        for md, key in ((t, "targets"), (s, "snapshot"), (ts, "timestamp")):
            md.sign(online[key])
            out.append(compact.serialize(md))
        return out

    one_sig = rate(lambda _i: signer.sign(payload), args.seconds)
    sets = rate(director_set, args.seconds)
    via_tuf = rate(tuf_api_set, args.seconds)
    print(f"bare Ed25519 signature (baseline): {one_sig:10.0f} /s")
    print(f"  three signatures = signing floor: {one_sig / 3:10.0f} sets/s")
    print(f"director metadata sets:             {sets:10.0f} sets/s  ({sets / (one_sig / 3):.2f} of the floor)")
    print(f"  same sets via tuf.api.metadata:   {via_tuf:10.0f} sets/s  (direct encoding is {sets / via_tuf:.1f}x)")
    print(
        f"bytes per device: {sample.size} (timestamp {len(sample.timestamp)}, snapshot {len(sample.snapshot)}, "
        f"targets {len(sample.targets)}); shared root {len(director.root_bytes)} bytes"
    )
    ok = sets >= 2000 and sample.size <= 4096
    print("target (>= 2000 sets/s, <= 4096 bytes):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
