"""Benchmark of medsec.vulns matching and incremental re-match.

Every figure is printed next to a baseline measured in the same run:

* index build over --advisories synthetic OSV advisories (default 300,000; PyPI and Debian ECOSYSTEM ranges,
  npm SEMVER ranges, several intervals, last_affected, aliases), generation time not counted;
* matching a --components SBOM (default 5,000; target <= 1 s once the index is built, cold and warm range
  caches both shown) against a naive scan of every advisory per component, timed on a subsample and
  extrapolated (labelled as such);
* re-match of --releases x --release-size components (default 1,000 x 1,000; target <= 60 s) after a
  --delta advisory change (default 500), against a full re-match of every release with the index.

Run: ``.venv/bin/python bench/bench_matching.py [--json out.json]`` (``--json -`` prints JSON to stdout).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from medsec.sbom.model import Component, ComponentRef
from medsec.vulns.identity import advisory_package_key, component_identity
from medsec.vulns.matcher import Matcher
from medsec.vulns.model import (
    Advisory,
    AdvisoryId,
    Affected,
    AffectedPackage,
    AffectedRange,
    EventKind,
    RangeEvent,
    RangeType,
)
from medsec.vulns.rematch import AdvisoryDelta, ComponentIndex, ReleaseId, rematch
from medsec.vulns.versions import SEMVER, scheme_for

ECOSYSTEMS = (("PyPI", 0.3, 20_000), ("npm", 0.5, 30_000), ("Debian:12", 0.2, 8_000))


def plain_version(rng: random.Random) -> str:
    return f"{rng.randint(0, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 40)}"


def debian_version(rng: random.Random) -> str:
    return f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}-{rng.randint(1, 5)}+deb12u{rng.randint(1, 9)}"


def version_for(ecosystem: str, rng: random.Random) -> str:
    return debian_version(rng) if ecosystem.startswith("Debian") else plain_version(rng)


def package_name(ecosystem: str, i: int) -> str:
    return {"PyPI": f"py-pkg-{i}", "npm": f"js-pkg-{i}", "Debian:12": f"deb-src-{i}"}[ecosystem]


def purl_for(ecosystem: str, name: str, version: str) -> str:
    if ecosystem == "PyPI":
        return f"pkg:pypi/{name}@{version}"
    if ecosystem == "npm":
        return f"pkg:npm/{name}@{version}"
    return f"pkg:deb/debian/{name}-bin@{version}?arch=amd64&upstream={name}&distro=debian-12"


def skewed(rng: random.Random, size: int) -> int:
    """Popular packages collect most advisories (a few hundred for the top ones, as in real feeds)."""
    return min(int(size * rng.random() ** 1.5), size - 1)


def make_advisory(i: int, ecosystem: str, name: str, rng: random.Random) -> Advisory:
    versions = sorted({version_for(ecosystem, rng) for _ in range(4)}, key=scheme_for(ecosystem).parse)
    events = [RangeEvent(EventKind.INTRODUCED, "0" if rng.random() < 0.5 else versions[0])]
    if rng.random() < 0.1:
        events.append(RangeEvent(EventKind.LAST_AFFECTED, versions[1]))
    else:
        events.append(RangeEvent(EventKind.FIXED, versions[1]))
        if len(versions) >= 4 and rng.random() < 0.3:  # a second branch
            events += [RangeEvent(EventKind.INTRODUCED, versions[2]), RangeEvent(EventKind.FIXED, versions[3])]
    range_type = RangeType.SEMVER if ecosystem == "npm" else RangeType.ECOSYSTEM
    prefix = {"PyPI": "PYSEC", "npm": "GHSA", "Debian:12": "DSA"}[ecosystem]
    return Advisory(
        id=AdvisoryId(f"{prefix}-{i}"),
        modified="2025-01-01T00:00:00Z",
        aliases=(f"CVE-2025-{100000 + i}",),
        affected=(Affected(AffectedPackage(ecosystem, name), ranges=(AffectedRange(range_type, tuple(events)),)),),
    )


def generate_advisories(count: int, rng: random.Random) -> list[Advisory]:
    out = []
    for i in range(count):
        ecosystem, _, size = rng.choices(ECOSYSTEMS, weights=[w for _, w, _ in ECOSYSTEMS])[0]
        out.append(make_advisory(i, ecosystem, package_name(ecosystem, skewed(rng, size)), rng))
    return out


def generate_sbom(count: int, rng: random.Random, prefix: str = "c") -> list[Component]:
    """Each package once, popular ones more likely, as in a real product SBOM."""
    components = []
    seen: set[tuple[str, str]] = set()
    for i in range(count):
        while True:
            ecosystem, _, size = rng.choices(ECOSYSTEMS, weights=[w for _, w, _ in ECOSYSTEMS])[0]
            name = package_name(ecosystem, skewed(rng, size))
            if (ecosystem, name) not in seen:
                seen.add((ecosystem, name))
                break
        version = version_for(ecosystem, rng)
        components.append(
            Component(ComponentRef(f"{prefix}{i}"), name, version, purl=purl_for(ecosystem, name, version))
        )
    return components


def naive_match(advisories: list[Advisory], component: Component) -> int:
    """Baseline: scan every advisory, compare identities, evaluate ranges from scratch (no index, no cache)."""
    identity = component_identity(component)
    hits = 0
    for advisory in advisories:
        for affected in advisory.affected:
            if (
                affected.package is None
                or advisory_package_key(affected.package.ecosystem, affected.package.name) != identity.key
            ):
                continue
            for rng in affected.ranges:
                scheme = SEMVER if rng.type is RangeType.SEMVER else scheme_for(affected.package.ecosystem)
                v = scheme.parser(identity.version or "")
                vulnerable = False
                for e in sorted(
                    rng.events, key=lambda e: (e.version != "0", scheme.parser(e.version) if e.version != "0" else 0)
                ):
                    if e.kind is EventKind.INTRODUCED and (e.version == "0" or v >= scheme.parser(e.version)):
                        vulnerable = True
                    elif (e.kind is EventKind.FIXED and v >= scheme.parser(e.version)) or (
                        e.kind is EventKind.LAST_AFFECTED and v > scheme.parser(e.version)
                    ):
                        vulnerable = False
                if vulnerable:
                    hits += 1
                    break
    return hits


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--advisories", type=int, default=300_000)
    parser.add_argument("--components", type=int, default=5_000)
    parser.add_argument("--naive-sample", type=int, default=10, help="components timed for the naive baseline")
    parser.add_argument("--releases", type=int, default=1_000)
    parser.add_argument("--release-size", type=int, default=1_000)
    parser.add_argument("--delta", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=str, default=None, help="write the results here ('-' for stdout)")
    args = parser.parse_args(argv)
    quiet = args.json == "-"

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    rng = random.Random(args.seed)
    results: dict[str, Any] = {"advisories": args.advisories, "components": args.components}

    say(f"generating {args.advisories:,} advisories and a {args.components:,}-component SBOM (not timed) ...")
    advisories = generate_advisories(args.advisories, rng)
    sbom = generate_sbom(args.components, rng)

    matcher, build_s = timed(lambda: Matcher.build(advisories))
    results["index_build_s"] = build_s
    say(f"index build (incl. alias groups): {build_s:.2f} s")

    report, cold_s = timed(lambda: matcher.match_report(sbom))
    _, warm_s = timed(lambda: matcher.match_report(sbom))
    results.update(match_cold_s=cold_s, match_warm_s=warm_s, findings=len(report.findings))
    say(
        f"match {args.components:,} components: cold {cold_s:.3f} s, warm {warm_s:.3f} s "
        f"({len(report.findings):,} findings; target <= 1 s) [{'ok' if cold_s <= 1 else 'OVER'}]"
    )

    sample = sbom[: args.naive_sample]
    _, naive_s = timed(lambda: [naive_match(advisories, c) for c in sample])
    naive_total = naive_s / len(sample) * args.components
    results.update(naive_sample=len(sample), naive_sample_s=naive_s, naive_extrapolated_s=naive_total)
    say(
        f"naive scan baseline: {naive_s:.2f} s for {len(sample)} components -> "
        f"{naive_total:,.0f} s for {args.components:,} (EXTRAPOLATED); index is {naive_total / cold_s:,.0f}x faster"
    )

    # -- incremental re-match ----------------------------------------------------------------------
    say(f"generating {args.releases:,} releases x {args.release_size:,} components (not timed) ...")
    pool = generate_sbom(args.release_size * 3, rng, prefix="pool")
    releases: dict[ReleaseId, list[Component]] = {}
    for r in range(args.releases):
        # Each release keeps most of the previous one and bumps a few packages, as product releases do.
        start = (r * 7) % (len(pool) - args.release_size)
        chosen = pool[start : start + args.release_size]
        releases[ReleaseId(f"R{r:04d}")] = list(chosen)
    index, index_s = timed(lambda: ComponentIndex.build(releases))
    results["component_index_build_s"] = index_s
    say(f"component index over {len(index):,} (release, component) pairs: {index_s:.2f} s")

    pool_keys = {component_identity(c).key for c in pool}
    touching = [
        a
        for a in advisories
        if a.affected[0].package
        and advisory_package_key(a.affected[0].package.ecosystem, a.affected[0].package.name) in pool_keys
    ]
    state, seed_s = timed(lambda: rematch(AdvisoryDelta(tuple(touching)), index, [], aliases=matcher.aliases))
    active = list(state.new)
    say(f"initial state: {len(active):,} active findings from {len(touching):,} advisories ({seed_s:.2f} s)")

    # Half the delta revises existing records (one in ten of those is withdrawn), half is new.
    changed = [
        replace(a, modified="2025-06-01T00:00:00Z", withdrawn="2025-06-01T00:00:00Z" if i % 10 == 0 else None)
        for i, a in enumerate(rng.sample(touching, min(args.delta // 2, len(touching))))
    ]
    pool_names = sorted(
        {
            (
                c.name,
                "npm"
                if c.purl and c.purl.startswith("pkg:npm")
                else "PyPI"
                if c.purl and c.purl.startswith("pkg:pypi")
                else "Debian:12",
            )
            for c in pool
        }
    )
    fresh = [
        make_advisory(args.advisories + i, eco, name, rng)
        for i, (name, eco) in enumerate(rng.sample(pool_names, args.delta - len(changed)))
    ]
    delta = AdvisoryDelta(tuple(changed + fresh))
    diff, rematch_s = timed(lambda: rematch(delta, index, active, aliases=matcher.aliases))
    results.update(
        rematch_s=rematch_s,
        rematch_pairs=diff.pairs_evaluated,
        rematch_identities=diff.identities_evaluated,
        rematch_new=len(diff.new),
        rematch_still_active=len(diff.still_active),
        rematch_now_inactive=len(diff.now_inactive),
    )
    say(
        f"re-match after a {len(delta.changed)}-advisory delta: {rematch_s:.2f} s over {diff.pairs_evaluated:,} pairs "
        f"({diff.identities_evaluated:,} distinct identities): {len(diff.new):,} new, "
        f"{len(diff.still_active):,} still active, {len(diff.now_inactive):,} now inactive "
        f"(target <= 60 s) [{'ok' if rematch_s <= 60 else 'OVER'}]"
    )

    sample_releases = max(1, args.releases // 100)
    first = dict(list(releases.items())[:sample_releases])
    _, full_sample_s = timed(lambda: sum(len(matcher.match(c)) for c in first.values()))
    full_total = full_sample_s / sample_releases * args.releases
    results.update(full_rematch_sample_releases=sample_releases, full_rematch_extrapolated_s=full_total)
    say(
        f"baseline full re-match with the index: {full_sample_s:.2f} s for {sample_releases} releases -> "
        f"{full_total:,.0f} s for {args.releases:,} (EXTRAPOLATED); "
        f"incremental is {full_total / rematch_s:,.1f}x faster"
    )

    if args.json == "-":
        print(json.dumps(results, indent=2, sort_keys=True))
    elif args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
