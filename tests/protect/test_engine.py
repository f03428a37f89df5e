"""Attack tests of the allowlisting engine against the real kernel, on a dedicated tmpfs mount only."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medsec.protect.engine import Engine
from medsec.protect.errors import ProtectError
from medsec.protect.events import ProtectionEvent
from medsec.protect.policy import parse_document

from .conftest import install_binary, mount_tmpfs, policy_document, unmount

pytestmark = [pytest.mark.timeout(90)]

SYSTEM_LOADER = "/lib64/ld-linux-x86-64.so.2"


def sha(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


@dataclass
class Device:
    """A simulated device root on the dedicated mount: trusted tools and one unknown binary."""

    root: Path
    true: Path
    sh: Path
    unknown: Path
    good_script: Path
    bad_script: Path
    trust: set[bytes] = field(default_factory=set)


@pytest.fixture
def device(device_mount: Path) -> Device:
    true = install_binary(device_mount, "/bin/true")
    sh = install_binary(device_mount, "/bin/sh")
    unknown = install_binary(device_mount, "/bin/false", "unknown")
    good = device_mount / "opt" / "good.sh"
    good.parent.mkdir()
    good.write_text("#!/bin/sh\nexit 0\n")
    bad = device_mount / "opt" / "bad.sh"
    bad.write_text("exit 0\n")
    return Device(device_mount, true, sh, unknown, good, bad, {sha(true), sha(sh), sha(good)})


class Recorder:
    """Collects engine events; ``wait`` polls because events are delivered by the engine's thread."""

    def __init__(self) -> None:
        self.events: list[ProtectionEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: ProtectionEvent) -> None:
        with self._lock:
            self.events.append(event)

    def wait(self, match: Callable[[ProtectionEvent], bool], timeout: float = 5.0) -> ProtectionEvent:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                for event in self.events:
                    if match(event):
                        return event
            time.sleep(0.01)
        raise AssertionError(f"no matching event in {[e.to_json() for e in self.events]}")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def run_engine(device: Device, recorder: Recorder) -> Iterator[Callable[..., Engine]]:
    """Start an engine on the device mount; it is always closed, even when the test fails."""
    engines: list[Engine] = []

    def start(trust: object = None, **policy: object) -> Engine:
        doc = policy_document(interpreters=[str(device.sh)], **policy)
        engine = Engine(
            device.root, parse_document(doc), trust if trust is not None else device.trust, on_event=recorder
        )  # type: ignore[arg-type]
        engines.append(engine)
        engine.start()
        return engine

    try:
        yield start
    finally:
        for engine in engines:
            engine.close()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Counters are updated just after the kernel is answered, so poll briefly."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def run(*argv: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in argv], capture_output=True, check=False, timeout=20)


def assert_exec_refused(*argv: str | Path) -> None:
    with pytest.raises(PermissionError) as caught:
        run(*argv)
    assert caught.value.errno == errno.EPERM


@pytest.mark.req("RL-3")
def test_unknown_binary_is_refused_in_enforce(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    run_engine()
    assert run(device.true).returncode == 0
    assert_exec_refused(device.unknown)
    event = recorder.wait(lambda e: e.action == "deny")
    assert (event.category, event.rule, event.mode) == ("exec", "not_in_trustdb", "enforce")
    assert event.object is not None and event.object.path == str(device.unknown)
    assert event.object.sha256 == sha(device.unknown).hex()
    assert event.subject is not None and event.subject.pid is not None


@pytest.mark.req("RL-2")
def test_unknown_binary_runs_and_is_logged_in_monitor(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    run_engine(mode="monitor")
    assert run(device.unknown).returncode == 1  # /bin/false ran
    event = recorder.wait(lambda e: e.action == "would_deny")
    assert (event.rule, event.mode) == ("not_in_trustdb", "monitor")
    assert not any(e.action == "deny" for e in recorder.events)


def test_learn_mode_collects_every_executed_file(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = run_engine(mode="learn", trust=set())
    assert run(device.unknown).returncode == 1
    assert run(device.true).returncode == 0
    learned = {f.sha256: f for f in engine.learned()}
    assert learned[sha(device.unknown).hex()].path == str(device.unknown)
    assert learned[sha(device.true).hex()].mode == 0o755
    recorder.wait(lambda e: e.action == "learned" and e.object is not None and e.object.path == str(device.true))


@pytest.mark.req("RL-3")
def test_modified_allowed_binary_is_refused(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    engine = run_engine()
    assert run(device.true).returncode == 0
    assert run(device.true).returncode == 0
    # trusted once: the kernel's ignore mark answers the second exec without asking the engine
    assert eventually(lambda: engine.metrics.snapshot()["decisions"].get("trusted") == 1)
    time.sleep(0.05)
    assert engine.metrics.snapshot()["decisions"]["trusted"] == 1
    with device.true.open("ab") as f:
        f.write(b"\0payload")
    assert_exec_refused(device.true)
    event = recorder.wait(lambda e: e.action == "deny")
    assert event.rule == "not_in_trustdb"
    assert event.object is not None and event.object.sha256 == sha(device.true).hex()


@pytest.mark.req("RL-3")
def test_same_size_modification_with_restored_mtime_is_refused(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    run_engine()
    assert run(device.true).returncode == 0
    before = device.true.stat()
    data = bytearray(device.true.read_bytes())
    data[-1] ^= 0xFF
    device.true.write_bytes(bytes(data))
    os.utime(device.true, ns=(before.st_atime_ns, before.st_mtime_ns))  # ctime still moves
    assert device.true.stat().st_size == before.st_size
    assert_exec_refused(device.true)
    recorder.wait(lambda e: e.action == "deny" and e.rule == "not_in_trustdb")


@pytest.mark.req("RL-3")
def test_modified_copy_of_trusted_binary_elsewhere_on_mount_is_refused(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    run_engine()
    other = device.root / "var" / "tmp" / "true"
    other.parent.mkdir(parents=True)
    shutil.copy2(device.true, other)
    assert run(other).returncode == 0  # an unmodified copy has trusted content
    with other.open("ab") as f:
        f.write(b"x")
    assert_exec_refused(other)
    event = recorder.wait(lambda e: e.action == "deny")
    assert event.object is not None and event.object.path == str(other)


@pytest.mark.req("RL-3")
def test_untrusted_script_through_trusted_interpreter_is_refused(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    run_engine()
    assert run(device.sh, device.good_script).returncode == 0
    done = run(device.sh, device.bad_script)
    assert done.returncode != 0
    assert b"Operation not permitted" in done.stderr
    event = recorder.wait(lambda e: e.action == "deny")
    assert (event.category, event.rule) == ("open", "interpreter_script_untrusted")
    assert event.subject is not None and event.subject.exe == str(device.sh)
    assert event.object is not None and event.object.path == str(device.bad_script)


@pytest.mark.req("RL-3")
def test_untrusted_script_without_suffix_named_on_command_line_is_refused(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    run_engine()
    plain = device.root / "opt" / "job"
    plain.write_text("exit 0\n")
    assert run(device.sh, plain).returncode != 0
    recorder.wait(lambda e: e.rule == "interpreter_script_untrusted")


@pytest.mark.req("RL-3")
@pytest.mark.parametrize("which", ["copy_on_mount", "system_loader"])
def test_binary_run_through_loader_directly_is_refused(
    which: str, device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    if not Path(SYSTEM_LOADER).exists():
        pytest.skip(f"{SYSTEM_LOADER} is not present (not x86-64 glibc)")
    loader = Path(SYSTEM_LOADER)
    if which == "copy_on_mount":
        loader = install_binary(device.root, SYSTEM_LOADER)
        device.trust.add(sha(loader))
    run_engine()
    assert run(loader, device.true).returncode == 0  # a trusted program may be loaded
    done = run(loader, device.unknown)
    assert done.returncode == 127
    assert b"Operation not permitted" in done.stderr
    event = recorder.wait(lambda e: e.action == "deny")
    assert (event.category, event.rule) == ("open", "loader_direct")
    assert event.object is not None and event.object.path == str(device.unknown)


@pytest.mark.req("RL-3")
def test_updater_pinned_by_policy_is_the_only_extra_trust(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    updater = install_binary(device.root, "/bin/false", "medsec-updater")
    run_engine(updater_sha256=sha(updater).hex())
    assert run(updater).returncode == 1
    with updater.open("ab") as f:
        f.write(b"x")
    assert_exec_refused(updater)
    recorder.wait(lambda e: e.action == "deny" and e.rule == "not_in_trustdb")


def test_excluded_path_is_not_checked(device: Device, run_engine: Callable[..., Engine]) -> None:
    scratch = device.root / "scratch"
    scratch.mkdir()
    tool = install_binary(device.root, "/bin/false", "tool")
    shutil.move(tool, scratch / "tool")
    run_engine(excluded_paths=[str(scratch) + "/"])
    assert run(scratch / "tool").returncode == 1
    assert_exec_refused(device.unknown)


def test_new_trust_set_clears_cached_verdicts(device: Device, run_engine: Callable[..., Engine]) -> None:
    engine = run_engine()
    assert_exec_refused(device.unknown)
    engine.set_trust(device.trust | {sha(device.unknown)})
    assert run(device.unknown).returncode == 1
    engine.set_trust(device.trust)
    assert_exec_refused(device.unknown)


@pytest.mark.req("RL-2")
def test_engine_process_itself_is_never_blocked(device: Device, run_engine: Callable[..., Engine]) -> None:
    engine = run_engine()
    assert device.bad_script.read_text() == "exit 0\n"  # our own open of an untrusted script
    (device.root / "opt" / "new.sh").write_text("exit 1\n")
    assert eventually(lambda: engine.metrics.snapshot()["decisions"].get("self", 0) >= 2)


def test_metrics_count_rules_hits_and_latency(device: Device, run_engine: Callable[..., Engine]) -> None:
    engine = run_engine()
    for _ in range(5):
        assert_exec_refused(device.unknown)
    assert run(device.true).returncode == 0
    assert eventually(lambda: sum(engine.metrics.snapshot()["decisions"].values()) >= 6)
    snap = engine.metrics.snapshot()
    assert snap["decisions"]["not_in_trustdb"] == 5
    assert snap["decisions"]["trusted"] == 1
    assert (snap["cache_misses"], snap["cache_hits"]) == (2, 4)
    assert sum(snap["latency_counts"]) >= 6
    assert len(engine.latency_samples_us()) >= 6


class BlockingTrust:
    """A trust lookup that hangs until released: a stalled database or a slow disk."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def __contains__(self, digest: object) -> bool:
        self.calls += 1
        self.release.wait(timeout=30)
        return False


@pytest.mark.req("RL-2")
@pytest.mark.parametrize("failure_mode", ["fail_closed", "fail_open"])
def test_stalled_trust_lookup_is_decided_by_failure_mode_at_deadline(
    failure_mode: str, device: Device, run_engine: Callable[..., Engine], recorder: Recorder
) -> None:
    blocking = BlockingTrust()
    try:
        run_engine(trust=blocking, failure_mode=failure_mode, decision_deadline_ms=200)
        started = time.monotonic()
        if failure_mode == "fail_closed":
            assert_exec_refused(device.true)
        else:
            assert run(device.true).returncode == 0
        elapsed = time.monotonic() - started
        assert 0.15 < elapsed < 5.0
        event = recorder.wait(lambda e: e.action == "error")
        assert event.rule == f"deadline_{failure_mode}"
        assert "no decision within 200 ms" in event.detail
        assert blocking.calls >= 1
    finally:
        blocking.release.set()


@pytest.mark.req("RL-1")
@pytest.mark.req("RL-2")
def test_close_answers_outstanding_events_and_does_not_hang(device: Device, recorder: Recorder) -> None:
    blocking = BlockingTrust()
    policy = parse_document(policy_document(failure_mode="fail_open", decision_deadline_ms=30_000))
    engine = Engine(device.root, policy, blocking, on_event=recorder)
    result: list[int] = []
    try:
        engine.start()
        worker = threading.Thread(target=lambda: result.append(run(device.true).returncode), daemon=True)
        worker.start()
        end = time.monotonic() + 5
        while blocking.calls == 0 and time.monotonic() < end:
            time.sleep(0.01)
        assert blocking.calls == 1 and worker.is_alive()  # the exec waits on the engine
        started = time.monotonic()
        engine.close()
        worker.join(timeout=10)
        assert time.monotonic() - started < 10
        assert result == [0]
    finally:
        blocking.release.set()
        engine.close()
    assert any(e.rule == "deadline_fail_open" and "engine stopping" in e.detail for e in recorder.events)


def test_engine_refuses_a_path_that_is_not_a_dedicated_mount(tmp_path: Path) -> None:
    policy = parse_document(policy_document())
    with pytest.raises(ProtectError, match="not a mount point"):
        Engine(tmp_path, policy, set()).start()
    with pytest.raises(ProtectError, match="refusing to mark a system mount"):
        Engine(Path("/"), policy, set()).start()


@pytest.mark.req("RL-3")
def test_exec_outside_the_marked_mount_is_not_seen(
    device: Device, run_engine: Callable[..., Engine], recorder: Recorder, tmp_path: Path
) -> None:
    """Honest coverage: marking covers one mount; another mount (like /dev/shm) needs its own mark or noexec."""
    run_engine()
    other = tmp_path / "other-mount"
    mount_tmpfs(other)
    try:
        stray = install_binary(other, "/bin/false", "stray")
        assert run(stray).returncode == 1
    finally:
        unmount(other)
    assert not any(e.object and e.object.path and e.object.path.startswith(str(other)) for e in recorder.events)


@pytest.mark.req("RL-2")
def test_failing_event_sink_does_not_stop_decisions(device: Device) -> None:
    calls: list[str] = []

    def broken_sink(event: ProtectionEvent) -> None:
        calls.append(event.rule)
        raise OSError("log disk full")

    engine = Engine(device.root, parse_document(policy_document()), device.trust, on_event=broken_sink)
    try:
        engine.start()
        assert_exec_refused(device.unknown)
        assert_exec_refused(device.unknown)
        assert run(device.true).returncode == 0
    finally:
        engine.close()
    assert calls == ["not_in_trustdb", "not_in_trustdb"]
