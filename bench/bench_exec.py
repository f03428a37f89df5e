"""Benchmark of execution allowlisting: exec-heavy work with no engine, medsec (enforce) and fapolicyd.

Workloads, each on a dedicated tmpfs mount created here (the only thing ever marked):

* ``spawn``: --n short processes of the mount's ``true``, started one after another (posix_spawn);
* ``script``: the mount's ``sh`` running a script on the mount that execs ``true`` --n times.

Configurations, measured in the same run:

* ``none``: no engine (the baseline every ratio is against);
* ``medsec``: :class:`medsec.protect.engine.Engine` in enforce mode, fail_closed, in its own process
  (default settings: trusted files get a kernel ignore mark, so repeated trusted execs are not asked);
* ``medsec-cache``: the same with ``kernel_ignore_marks=False``: every exec is decided by the engine
  from its decision cache; this run gives the cached decision latency p50/p99;
* ``fapolicyd``: Debian's fapolicyd (installed with apt-get if missing) with an equivalent trust list
  (``trust = file``, ``integrity = sha256``) and rules. It runs inside a private mount namespace
  (``unshare --mount``) where its configuration, state and /run are private bind mounts and every
  other tmpfs copy is unmounted, so its marks reach only that namespace's copy of the bench mount:
  the machine's own mounts and configuration are never touched. If that cannot be set up it is
  skipped with the reason.

Also printed: medsec's decision latency p50/p99 (from the event's read to the answer handed to the
kernel; targets <= 20 us / <= 250 us) and the added latency per exec against the baseline.

Configurations are interleaved over --rounds rounds (default 3) and medians reported, because the
machine is shared and exec timings drift.

Run as root: ``.venv/bin/python bench/bench_exec.py [--n 5000] [--rounds 3] [--no-fapolicyd] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TARGET_P50_US = 20.0
TARGET_P99_US = 250.0


# -- the dedicated mount ---------------------------------------------------------------------------


@contextmanager
def dedicated_mount(n: int) -> Iterator[Path]:
    """A fresh tmpfs with ``true``, ``sh``, an unknown ``probe`` and the exec loop script; unmounted after."""
    base = Path(tempfile.mkdtemp(prefix="medsec-bench-exec-"))
    mount = base / "device"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "medsec-bench", str(mount)], check=True)
    try:
        (mount / "bin").mkdir()
        for name, source in (("true", "/bin/true"), ("sh", "/bin/sh"), ("probe", "/bin/false")):
            shutil.copy2(os.path.realpath(source), mount / "bin" / name)
            (mount / "bin" / name).chmod(0o755)
        script = mount / "loop.sh"
        script.write_text(f"#!{mount}/bin/sh\ni=0\nwhile [ $i -lt {n} ]; do\n  {mount}/bin/true\n  i=$((i+1))\ndone\n")
        script.chmod(0o755)
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def trusted_files(mount: Path) -> list[Path]:
    return [mount / "bin" / "true", mount / "bin" / "sh", mount / "loop.sh"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- workloads (run in a child process so every configuration measures the same thing) ------------


def workload(mount: Path, n: int) -> dict[str, float]:
    true = str(mount / "bin" / "true")
    env: dict[str, str] = {}
    start = time.perf_counter()
    for _ in range(n):
        pid = os.posix_spawn(true, [true], env)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"{true} failed with status {status}")
    spawn = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([str(mount / "bin" / "sh"), str(mount / "loop.sh")], check=True)
    script = time.perf_counter() - start
    return {"spawn_s": spawn, "script_s": script}


def run_workload(mount: Path, n: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, str(HERE), "--workload", str(mount), "--n", str(n)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def probe_refused(mount: Path) -> bool:
    try:
        subprocess.run([str(mount / "bin" / "probe")], check=False, timeout=30)
    except PermissionError:
        return True
    return False


# -- medsec ----------------------------------------------------------------------------------------


def engine_child(mount: Path, ignore_marks: bool) -> None:
    """Run the engine until SIGTERM, then print its metrics and latency samples as JSON."""
    from medsec.protect.engine import Engine
    from medsec.protect.policy import parse_document
    from medsec.signals import stop_on_signals

    policy = parse_document(
        {
            "format": "medsec-protect-policy/v1",
            "product": "bench",
            "model": None,
            "version": 1,
            "mode": "enforce",
            "failure_mode": "fail_closed",
            "decision_deadline_ms": 1000,
            "interpreters": [str(mount / "bin" / "sh")],
            "loaders": [],
            "script_suffixes": [".sh"],
            "updater_sha256": "00" * 32,
            "excluded_paths": [],
            "memfd_noexec": None,
        }
    )
    trust = {bytes.fromhex(sha256(p)) for p in trusted_files(mount)}
    stop = threading.Event()
    engine = Engine(mount, policy, trust, kernel_ignore_marks=ignore_marks)
    with stop_on_signals(stop, [signal.SIGTERM]):
        engine.start()
        try:
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            stop.wait(3600)
        finally:
            engine.close()
    sys.stdout.write(
        json.dumps({"metrics": engine.metrics.snapshot(), "latencies_us": engine.latency_samples_us()}) + "\n"
    )


def run_medsec(mount: Path, n: int, *, ignore_marks: bool) -> dict[str, Any]:
    argv = [sys.executable, str(HERE), "--engine", str(mount)] + ([] if ignore_marks else ["--no-ignore-marks"])
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit(f"medsec engine did not start: {child.stderr.read() if child.stderr else ''}")
        if not probe_refused(mount):
            raise SystemExit("medsec engine is running but did not refuse the unknown probe")
        result: dict[str, Any] = dict(run_workload(mount, n))
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    if child.returncode != 0:
        raise SystemExit(f"medsec engine failed: {err}")
    report = json.loads(out.strip().splitlines()[-1])
    samples = sorted(report["latencies_us"])
    result["decisions"] = report["metrics"]["decisions"]
    result["cache_hits"] = report["metrics"]["cache_hits"]
    result["p50_us"] = percentile(samples, 50)
    result["p99_us"] = percentile(samples, 99)
    result["samples"] = len(samples)
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1]


# -- fapolicyd, confined to a private mount namespace ------------------------------------------------

FAPOLICYD = "/usr/sbin/fapolicyd"

NAMESPACE_SCRIPT = r"""
set -eu
mount --make-rprivate /
# Leave no tmpfs but the bench mount in this namespace: fapolicyd watches by filesystem type.
for target in $(awk -v keep="$MOUNT" '$3 == "tmpfs" && $2 != keep {print $2}' /proc/self/mounts | sort -r); do
  umount -l "$target" 2>/dev/null || true
done
mount --bind "$CONF" /etc/fapolicyd
mount --bind "$STATE" /var/lib/fapolicyd
mount --bind "$RUN" /run
mkdir -p /run/fapolicyd
"$FAPOLICYD" --debug-deny > "$LOG" 2>&1 &
echo $! > "$PIDFILE"
i=0
while :; do
  rc=0; "$MOUNT/bin/probe" 2>/dev/null || rc=$?
  [ "$rc" -ge 126 ] && break
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { echo "fapolicyd exited" >&2; exit 3; }
  i=$((i+1)); [ "$i" -lt 600 ] || { echo "fapolicyd did not start enforcing in 60 s" >&2; exit 4; }
  sleep 0.1
done
"$PYTHON" "$BENCH" --workload "$MOUNT" --n "$N"
kill -TERM "$(cat "$PIDFILE")"
wait "$(cat "$PIDFILE")" || true
"""


def ensure_fapolicyd() -> str | None:
    """Install fapolicyd if missing; return a reason to skip, or None."""
    if shutil.which("unshare") is None:
        return "unshare(1) is missing: fapolicyd cannot be confined to a private mount namespace"
    if Path(FAPOLICYD).exists():
        return None
    if shutil.which("apt-get") is None:
        return "fapolicyd is not installed and apt-get is unavailable"
    if not Path("/usr/sbin/policy-rc.d").exists():
        return "fapolicyd is not installed and no policy-rc.d stops its service from starting on install"
    done = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "fapolicyd"],
        check=False,
        capture_output=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        timeout=600,
    )
    if done.returncode != 0 or not Path(FAPOLICYD).exists():
        return f"apt-get install fapolicyd failed: {done.stderr.decode()[-300:]}"
    return None


def fapolicyd_config(conf: Path, mount: Path) -> None:
    conf.mkdir()
    (conf / "trust.d").mkdir()
    (conf / "fapolicyd.conf").write_text(
        "permissive = 0\nnice_val = 0\nq_size = 640\nuid = root\ngid = root\ndo_stat_report = 0\n"
        "detailed_report = 0\ndb_max_size = 50\nsubj_cache_size = 1549\nobj_cache_size = 8191\n"
        "watch_fs = tmpfs\ntrust = file\nintegrity = sha256\n"
        "syslog_format = rule,dec,perm,pid,exe,:,path,ftype,trust\nrpm_sha256_only = 0\nallow_filesystem_mark = 0\n"
    )
    lines = [f"{p} {p.stat().st_size} {sha256(p)}" for p in trusted_files(mount)]
    (conf / "fapolicyd.trust").write_text("\n".join(lines) + "\n")
    rules = (
        "deny perm=any pattern=ld_so : all\n"
        f"allow perm=any all : dir={mount}/ trust=1\n"
        f"deny perm=execute all : dir={mount}/\n"
        f"deny perm=open exe={mount}/bin/sh : dir={mount}/\n"
        "allow perm=any all : all\n"
    )
    (conf / "compiled.rules").write_text(rules)
    (conf / "fapolicyd.rules").write_text(rules)


def run_fapolicyd(mount: Path, n: int) -> dict[str, Any] | str:
    """The workload under fapolicyd in a private mount namespace; a string is the reason it was skipped."""
    reason = ensure_fapolicyd()
    if reason:
        return reason
    work = Path(tempfile.mkdtemp(prefix="medsec-bench-fapolicyd-"))
    pidfile = work / "fapolicyd.pid"
    try:
        fapolicyd_config(work / "conf", mount)
        for name in ("state", "run"):
            (work / name).mkdir()
        env = {
            **os.environ,
            "MOUNT": str(mount),
            "CONF": str(work / "conf"),
            "STATE": str(work / "state"),
            "RUN": str(work / "run"),
            "LOG": str(work / "fapolicyd.log"),
            "PIDFILE": str(pidfile),
            "FAPOLICYD": FAPOLICYD,
            "PYTHON": sys.executable,
            "BENCH": str(HERE),
            "N": str(n),
        }
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT],
            check=False,
            capture_output=True,
            env=env,
            timeout=1200,
        )
        if done.returncode != 0:
            log = (
                (work / "fapolicyd.log").read_text(errors="replace")[-600:] if (work / "fapolicyd.log").exists() else ""
            )
            return f"fapolicyd run failed ({done.returncode}): {done.stderr.decode()[-400:]} {log}"
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return result
    finally:
        stop_stray(pidfile)
        shutil.rmtree(work, ignore_errors=True)


def stop_stray(pidfile: Path) -> None:
    """Stop the fapolicyd this bench started if the namespace script could not (by its pid only)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        if Path(f"/proc/{pid}/exe").resolve() != Path(FAPOLICYD).resolve():
            return
        os.kill(pid, signal.SIGTERM)
    except (OSError, ProcessLookupError):
        return
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)


def median_run(runs: list[Any]) -> Any:
    """The median of each timing over the rounds (a skip reason wins if any round was skipped)."""
    skipped = [r for r in runs if isinstance(r, str)]
    if skipped:
        return skipped[0]
    merged = dict(runs[-1])
    for name in ("spawn_s", "script_s", "p50_us", "p99_us"):
        if name in merged:
            merged[name] = statistics.median(r[name] for r in runs)
    merged["rounds"] = len(runs)
    return merged


# -- report ----------------------------------------------------------------------------------------


def table(results: dict[str, Any], n: int) -> None:
    base = results["none"]
    print(f"\nexec benchmark: {n} execs per workload on a dedicated tmpfs")
    print(f"{'config':<10} {'spawn s':>9} {'us/exec':>9} {'ratio':>7} {'script s':>9} {'us/exec':>9} {'ratio':>7}")
    for name, value in results.items():
        if isinstance(value, str):
            print(f"{name:<10} skipped: {value}")
            continue
        spawn, script = value["spawn_s"], value["script_s"]
        print(
            f"{name:<10} {spawn:>9.3f} {spawn / n * 1e6:>9.1f} {spawn / base['spawn_s']:>7.2f} "
            f"{script:>9.3f} {script / n * 1e6:>9.1f} {script / base['script_s']:>7.2f}"
        )
    for name in ("medsec", "medsec-cache"):
        medsec = results.get(name)
        if not isinstance(medsec, dict):
            continue
        added_spawn = (medsec["spawn_s"] - base["spawn_s"]) / n * 1e6
        added_script = (medsec["script_s"] - base["script_s"]) / n * 1e6
        print(f"\n{name}: added time per exec: spawn {added_spawn:.1f} us, script {added_script:.1f} us")
        print(f"{name}: engine decisions by rule (last round): {medsec['decisions']}")
        print(
            f"{name}: decision latency, read to answer sent ({medsec['samples']} decisions, {medsec['cache_hits']} "
            f"cache hits): p50 {medsec['p50_us']:.1f} us (target <= {TARGET_P50_US:.0f}), "
            f"p99 {medsec['p99_us']:.1f} us (target <= {TARGET_P99_US:.0f})"
        )
    medsec = results.get("medsec")
    fapolicyd = results.get("fapolicyd")
    if isinstance(medsec, dict) and isinstance(fapolicyd, dict):
        print(
            f"medsec / fapolicyd time: spawn {medsec['spawn_s'] / fapolicyd['spawn_s']:.2f}, "
            f"script {medsec['script_s'] / fapolicyd['script_s']:.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="execs per workload")
    parser.add_argument("--no-fapolicyd", action="store_true", help="skip the fapolicyd comparison")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workload", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-ignore-marks", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    args = parser.parse_args(argv)
    if args.workload:
        print(json.dumps(workload(args.workload, args.n)))
        return 0
    if args.engine:
        engine_child(args.engine, not args.no_ignore_marks)
        return 0
    if os.geteuid() != 0:
        print("skipped: the exec benchmark needs root (fanotify permission events, tmpfs mounts)")
        return 0
    rounds: dict[str, list[Any]] = {"none": [], "medsec": [], "medsec-cache": [], "fapolicyd": []}
    with dedicated_mount(args.n) as mount:
        run_workload(mount, min(args.n, 200))  # warm the page cache and the dynamic loader
        for _ in range(max(1, args.rounds)):
            rounds["none"].append(run_workload(mount, args.n))
            rounds["medsec"].append(run_medsec(mount, args.n, ignore_marks=True))
            rounds["medsec-cache"].append(run_medsec(mount, args.n, ignore_marks=False))
            rounds["fapolicyd"].append("--no-fapolicyd given" if args.no_fapolicyd else run_fapolicyd(mount, args.n))
    results = {name: median_run(runs) for name, runs in rounds.items()}
    table(results, args.n)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
