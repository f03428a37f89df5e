"""Benchmark of medsec.sbom: ingest and quality-check a large CycloneDX JSON SBOM.

A CycloneDX 1.6 JSON document of --components components (default 5,000; purls, CPEs, hashes,
licences, properties, a dependency graph, 1 in 50 purls broken) is generated, then timed:

* medsec: ``read_sbom`` + ``quality_report`` (target <= 2 s for 5,000 components);
* baseline: ``json.load`` of the same file (the floor: parsing alone), in this process;
* cyclonedx-python-lib ``Bom.from_json``, in a subprocess capped at --cdx-timeout seconds
  (reported as "timed out" when it does not finish). It rejects the whole document at the first
  broken purl, so it is timed on a copy without them, and its verdict on the original is shown.

Run: ``.venv/bin/python bench/bench_sbom.py [--components N] [--repeat R] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medsec.sbom import quality_report, read_sbom

TARGET_SECONDS = 2.0
CDX_LIB_SCRIPT = """
import json, sys, time
from cyclonedx.model.bom import Bom
t = time.perf_counter()
with open(sys.argv[1], encoding="utf-8") as f:
    bom = Bom.from_json(json.load(f))
print(json.dumps({"seconds": time.perf_counter() - t, "components": len(bom.components)}))
"""


def generate(count: int, *, broken_purls: bool = True) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    dependencies: list[dict[str, Any]] = []
    for i in range(count):
        ref = f"pkg:npm/pkg-{i}@1.{i % 97}.{i % 13}"
        purl = ref if i % 50 or not broken_purls else f"pkg:n@pm/pkg-{i}@1"  # a broken purl now and then
        components.append(
            {
                "type": "library",
                "bom-ref": ref,
                "supplier": {"name": f"Vendor {i % 211}"},
                "name": f"pkg-{i}",
                "version": f"1.{i % 97}.{i % 13}",
                "hashes": [{"alg": "SHA-256", "content": f"{i:064x}"}],
                "licenses": [{"license": {"id": "MIT"}}],
                "cpe": f"cpe:2.3:a:vendor{i % 211}:pkg-{i}:1.{i % 97}.{i % 13}:*:*:*:*:*:*:*",
                "purl": purl,
                "properties": [{"name": "medsec:support-level", "value": "security-updates"}],
            }
        )
        if i:
            dependencies.append({"ref": ref, "dependsOn": [components[(i * 7) % i]["bom-ref"]]})
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": "urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79",
        "version": 1,
        "metadata": {
            "timestamp": "2025-01-01T00:00:00Z",
            "authors": [{"name": "PSIRT"}],
            "component": {"type": "application", "bom-ref": "device", "name": "device", "version": "1"},
        },
        "components": components,
        "dependencies": [{"ref": "device", "dependsOn": [c["bom-ref"] for c in components]}, *dependencies],
    }


def best_of(repeat: int, fn: Any) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_cdx_lib(path: Path, timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CDX_LIB_SCRIPT, str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"status": "failed", "error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["status"] = "ok"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--components", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cdx-timeout", type=float, default=120.0, help="cap for cyclonedx-python-lib, seconds")
    parser.add_argument("--skip-cdx-lib", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.cdx.json"
        path.write_text(json.dumps(generate(args.components)), encoding="utf-8")
        clean = Path(tmp) / "clean.cdx.json"
        clean.write_text(json.dumps(generate(args.components, broken_purls=False)), encoding="utf-8")
        size = path.stat().st_size

        def load() -> None:
            with path.open(encoding="utf-8") as f:
                json.load(f)

        report_holder: dict[str, Any] = {}

        def ingest() -> None:
            sbom = read_sbom(path)
            report_holder["report"] = quality_report(sbom)
            report_holder["components"] = len(sbom.components)

        baseline = best_of(args.repeat, load)
        medsec_s = best_of(args.repeat, ingest)
        if args.skip_cdx_lib:
            cdx_lib: dict[str, Any] = {"status": "skipped"}
            cdx_lib_original: dict[str, Any] = {"status": "skipped"}
        else:
            cdx_lib = run_cdx_lib(clean, args.cdx_timeout)
            cdx_lib_original = run_cdx_lib(path, args.cdx_timeout)

    report = report_holder["report"]
    results: dict[str, Any] = {
        "components": report_holder["components"],
        "file_bytes": size,
        "json_load_seconds": baseline,
        "medsec_read_and_quality_seconds": medsec_s,
        "ratio_medsec_to_json_load": medsec_s / baseline,
        "target_seconds": TARGET_SECONDS,
        "within_target": medsec_s <= TARGET_SECONDS,
        "quality_score": round(report.score, 1),
        "unmatchable": len(report.unmatchable),
        "cyclonedx_python_lib": cdx_lib,
        "cyclonedx_python_lib_on_file_with_broken_purls": cdx_lib_original,
    }
    if cdx_lib.get("status") == "ok":
        results["ratio_cyclonedx_lib_to_medsec"] = cdx_lib["seconds"] / medsec_s

    print(f"SBOM: {results['components']:,} components, {size / 1e6:.1f} MB CycloneDX 1.6 JSON")
    print(f"  json.load (baseline)          {baseline * 1000:8.1f} ms")
    print(
        f"  medsec read + quality         {medsec_s * 1000:8.1f} ms   "
        f"{results['ratio_medsec_to_json_load']:.1f}x json.load   target <= {TARGET_SECONDS:.0f} s: "
        f"{'ok' if results['within_target'] else 'MISSED'}"
    )
    if cdx_lib.get("status") == "ok":
        print(
            f"  cyclonedx-python-lib from_json{cdx_lib['seconds'] * 1000:8.1f} ms   "
            f"{results['ratio_cyclonedx_lib_to_medsec']:.1f}x medsec"
        )
    else:
        print(f"  cyclonedx-python-lib from_json  {cdx_lib['status']} {cdx_lib.get('error', '')}")
    if cdx_lib_original.get("status") == "failed":
        print(f"    (and it rejects the file with broken purls: {cdx_lib_original['error'][0][-90:]})")
    print(f"  quality score {results['quality_score']}, {results['unmatchable']} components without purl/CPE")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
