"""The execution-allowlisting engine: fanotify permission events decided against a trust set (RL-3).

Only software registered in advance runs; everything else is refused at ``execve`` with EPERM,
while the device stays available (RL-1, RL-2)::

    kernel ──FAN_OPEN_EXEC_PERM / FAN_OPEN_PERM──▶ reader thread
              │ own pid: allow (never deadlock on ourselves)
              │ cache hit (dev, ino, mtime, ctime, size): answer at once
              └ miss ──bounded queue──▶ worker threads: SHA-256 via the event fd, trust lookup
    watchdog thread: any event not answered by its deadline is answered by the policy's
    failure mode (``deadline_fail_open`` / ``deadline_fail_closed``) and an ``error`` event is recorded.

What is checked:

* every exec of a file on the marked mount (``FAN_OPEN_EXEC_PERM``): its content must be trusted;
* files opened on the mount by a listed interpreter (``FAN_OPEN_PERM`` with ``/proc/<pid>/exe``
  matching the policy's interpreters) when they are a script: the script argument of the
  interpreter's command line (:func:`script_argument`: the first argument after its options, so
  ``python3 app.py --config data.json`` loads ``app.py`` and only reads ``data.json``), a file
  ending in one of the policy's script suffixes, or one starting with ``#!``;
* every file opened on the mount by a dynamic loader run directly (``ld-linux-x86-64.so.2 ./x``):
  the kernel sees only the loader's exec, the program is opened and mapped by the loader.

Modes: ``learn`` allows and collects every executed file (for the trust database builder),
``monitor`` allows and records ``would_deny``, ``enforce`` refuses what is not trusted.

:class:`Engine` refuses to mark anything but a dedicated mount point unless
``allow_system_mount=True``: a stalled permission listener on the machine's own root blocks
every exec.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import heapq
import itertools
import logging
import os
import queue
import re
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from medsec.protect.errors import FanotifyError, ProtectError
from medsec.protect.events import Metrics, Object, ProtectionEvent, Subject
from medsec.protect.fanotify import (
    FAN_CLASS_CONTENT,
    FAN_CLOSE_WRITE,
    FAN_OPEN_EXEC_PERM,
    FAN_OPEN_PERM,
    FAN_UNLIMITED_MARKS,
    Fanotify,
    FanotifyEvent,
)
from medsec.protect.policy import Policy

logger = logging.getLogger(__name__)

EventSink = Callable[[ProtectionEvent], None]
MEMFD_NOEXEC_SYSCTL = Path("/proc/sys/vm/memfd_noexec")
# Dynamic loaders are always treated as interpreters: glibc, musl and generic names.
BUILTIN_LOADER_NAMES = ("ld-linux*.so*", "ld-musl-*.so*", "ld.so", "ld.so.*", "ld-[0-9]*.so")
_CHUNK = 1 << 20
_LATENCY_SAMPLES = 200_000


@dataclass(frozen=True)
class LearnedFile:
    """A file executed (or loaded as a script) while in learn mode."""

    path: str
    sha256: str
    size: int
    mode: int


CacheKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_ctime_ns, st_size


@dataclass(frozen=True)
class _Verdict:
    key: CacheKey
    digest: bytes
    trusted: bool
    updater: bool


class DecisionCache:
    """LRU of content verdicts keyed by (st_dev, st_ino, mtime_ns, ctime_ns, size).

    Any write changes mtime/ctime (and usually size), so a modified file misses and is hashed
    again; entries are also dropped on ``FAN_CLOSE_WRITE`` and whenever the trust set changes.
    """

    def __init__(self, capacity: int = 65536) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[int, int], _Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> _Verdict | None:
        with self._lock:
            verdict = self._entries.get((key[0], key[1]))
            if verdict is None or verdict.key != key:
                return None
            self._entries.move_to_end((key[0], key[1]))
            return verdict

    def put(self, verdict: _Verdict) -> None:
        with self._lock:
            self._entries[(verdict.key[0], verdict.key[1])] = verdict
            self._entries.move_to_end((verdict.key[0], verdict.key[1]))
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def drop(self, dev: int, ino: int) -> None:
        with self._lock:
            self._entries.pop((dev, ino), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def cache_key(st: os.stat_result) -> CacheKey:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def sha256_fd(fd: int) -> bytes:
    """SHA-256 of a file read through ``fd`` with pread (the event fd raises no new events)."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            return digest.digest()
        digest.update(chunk)
        offset += len(chunk)


def memfd_noexec_state(sysctl: Path = MEMFD_NOEXEC_SYSCTL) -> int | None:
    """The current ``vm.memfd_noexec`` of this pid namespace, or None where the kernel lacks it."""
    try:
        return int(sysctl.read_text().strip())
    except (OSError, ValueError):
        return None


def apply_memfd_noexec(level: int, sysctl: Path = MEMFD_NOEXEC_SYSCTL) -> int:
    """Raise ``vm.memfd_noexec`` of this pid namespace to ``level`` (never lower it); return the new state.

    The sysctl is per pid namespace (Linux >= 6.3). 2 refuses ``memfd_create(MFD_EXEC)`` and
    makes every memfd non-executable, so code cannot be run from anonymous memory files.
    """
    current = memfd_noexec_state(sysctl)
    if current is None:
        raise ProtectError("vm.memfd_noexec is not available on this kernel (needs Linux 6.3 or later)")
    if current >= level:
        return current
    try:
        sysctl.write_text(f"{level}\n")
    except OSError as e:
        raise ProtectError(f"cannot set vm.memfd_noexec to {level}: {e.strerror}") from e
    state = memfd_noexec_state(sysctl)
    if state is None or state < level:
        raise ProtectError(f"vm.memfd_noexec is {state} after setting it to {level}")
    return state


def _globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One compiled regular expression for a list of fnmatch globs (None for an empty list)."""
    parts = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None


_LOADER_NAMES = _globs(BUILTIN_LOADER_NAMES)


class SubjectRoles:
    """Which executables are loaders or interpreters, from the built-in names and the policy's globs."""

    def __init__(self, policy: Policy) -> None:
        self._loaders = _globs(policy.loaders)
        self._interpreters = _globs(policy.interpreters)

    def is_loader(self, exe: str) -> bool:
        name = exe.rsplit("/", 1)[-1]
        if _LOADER_NAMES is not None and _LOADER_NAMES.match(name):
            return True
        return self._loaders is not None and self._loaders.match(exe) is not None

    def is_interpreter(self, exe: str) -> bool:
        return self._interpreters is not None and self._interpreters.match(exe) is not None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


# Interpreter families by executable name, each with the options that mean "no script file" and
# the options whose value is the next argument (when not attached), as their manuals define them.
_PYTHON_NAMES = re.compile(r"^(?:python|pypy)[0-9.]*(?:[a-z]*)$")
_SHELL_NAMES = frozenset({"sh", "ash", "dash", "bash", "ksh", "ksh93", "mksh", "zsh"})
_PERL_NAMES = re.compile(r"^perl[0-9.]*$")


@dataclass(frozen=True)
class _Grammar:
    """How one interpreter family reads its command line up to the script argument."""

    no_script: frozenset[str]  # short options after which no script file is read (-c, -m, -e)
    takes_value: frozenset[str]  # short options whose value is attached or the next argument
    attached_only: frozenset[str]  # short options whose value, if any, is the rest of the same argument
    long_with_value: frozenset[str]  # long options whose value is the next argument unless given with '='
    plus_options: bool  # '+o opt' and friends (shells)
    digit_options: frozenset[str] = frozenset()  # options followed by optional digits, then more options


_PYTHON = _Grammar(
    no_script=frozenset("cm"),
    takes_value=frozenset("WX"),
    attached_only=frozenset(),
    long_with_value=frozenset({"--check-hash-based-pycs"}),
    plus_options=False,
)
_SHELL = _Grammar(
    no_script=frozenset("cs"),
    takes_value=frozenset("oO"),
    attached_only=frozenset(),
    long_with_value=frozenset({"--rcfile", "--init-file"}),
    plus_options=True,
)
_PERL = _Grammar(
    no_script=frozenset("eE"),
    takes_value=frozenset("I"),
    attached_only=frozenset("ixdDCmMV"),
    long_with_value=frozenset(),
    plus_options=False,
    digit_options=frozenset("0l"),  # perl -l012ne: the digits belong to -l, then -n and -e follow
)
_GENERIC = _Grammar(frozenset(), frozenset(), frozenset(), frozenset(), plus_options=False)


def _grammar(exe: str) -> _Grammar:
    name = exe.rsplit("/", 1)[-1]
    if _PYTHON_NAMES.match(name):
        return _PYTHON
    if name in _SHELL_NAMES:
        return _SHELL
    if _PERL_NAMES.match(name):
        return _PERL
    return _GENERIC


def _short_options(flags: str, grammar: _Grammar) -> tuple[bool, bool]:
    """Read one group of short options (without its '-'): (no script file, next argument is a value)."""
    i = 0
    while i < len(flags):
        flag = flags[i]
        i += 1
        if flag in grammar.no_script:
            return True, False
        if flag in grammar.takes_value:
            return False, i == len(flags)  # '-Wignore' carries its value, '-W ignore' does not
        if flag in grammar.attached_only:
            return False, False
        if flag in grammar.digit_options:
            while i < len(flags) and flags[i] in "0123456789abcdefxABCDEF":
                i += 1
    return False, False


def script_argument(argv: list[str], exe: str) -> str | None:
    """The script file an interpreter command line names, or None when it runs none.

    The script is the first argument after the interpreter's options: ``-c``/``-m`` (python),
    ``-c``/``-s`` (shells) and ``-e``/``-E`` (perl) mean no script file; the values of options
    such as python's ``-W x``/``-X x`` or a shell's ``-o opt``/``+o opt`` are skipped; ``--``
    (and a shell's lone ``-``) ends the options. A lone ``-`` for python means standard input.
    ``argv[0]`` is the interpreter itself, as the kernel passes it (also for a ``#!`` script).
    """
    grammar = _grammar(exe)
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            return next(args, None)
        if arg == "-":
            return next(args, None) if grammar is _SHELL else None
        if arg.startswith("--"):
            if arg in grammar.long_with_value:
                next(args, None)
            continue
        if arg.startswith("-") or (grammar.plus_options and arg.startswith("+") and len(arg) > 1):
            no_script, value_follows = _short_options(arg[1:], grammar)
            if no_script:
                return None
            if value_follows:
                next(args, None)
            continue
        return arg
    return None


def _cmdline_script(pid: int, exe: str) -> str | None:
    """The absolute path of the script ``pid`` (an interpreter) was started with, or None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(65536)
    except OSError:
        return None
    argv = [os.fsdecode(a) for a in raw.split(b"\0")]
    if argv and argv[-1] == "":
        argv.pop()  # the terminating NUL
    script = script_argument(argv, exe)
    if not script:
        return None
    cwd = _readlink(f"/proc/{pid}/cwd") or "/"
    return os.path.normpath(os.path.join(cwd, script))


def _subject(pid: int, exe: str | None, *, with_hash: bool) -> Subject:
    """The acting process; its executable is hashed only for refusals (it may be gone by then)."""
    sha = None
    if with_hash and exe:
        try:
            with open(f"/proc/{pid}/exe", "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            sha = None
    return Subject(pid=pid, exe=exe[:4096] if exe else None, sha256=sha)


@dataclass(frozen=True)
class _EventItem:
    category: str
    action: str
    rule: str
    pid: int
    exe: str | None
    path: str | None
    digest: bytes | None
    detail: str


@dataclass
class _Pending:
    """One permission event between its read and its answer; ``answered`` is set exactly once."""

    event: FanotifyEvent
    deadline: float
    received: float
    category: str
    path: str | None = None
    subject_exe: str | None = None
    answered: bool = False
    # When the answer went to the kernel (just before the write): the end of the decision latency.
    # The write itself can return much later, when waking the waiting process hands it this core.
    answered_at: float = 0.0


class _Outcome(NamedTuple):  # a tuple: made on every decision, and cheaper to make than a frozen dataclass
    allow: bool
    rule: str
    action: str
    digest: bytes | None = None
    detail: str = ""
    cache_hit: bool = False


class Engine:
    """Decides every exec (and every script or loader open) on one mount.

    ``trust`` answers ``digest in trust`` for raw 32-byte SHA-256 digests (a
    :class:`medsec.protect.trustdb.TrustDB` or a plain set). ``on_event`` receives every
    deny, would_deny, learned and error event (and allows too with ``report_allowed``); it is
    called after the kernel has been answered, from the engine's own event thread.

    Once a file is found trusted, an inode ignore mark lets the kernel allow its further opens
    and execs without asking (cleared by the kernel on the file's next write);
    ``kernel_ignore_marks=False`` keeps every decision in the engine (its cache answers instead).
    """

    def __init__(
        self,
        mount: Path,
        policy: Policy,
        trust: Container[bytes],
        *,
        on_event: EventSink | None = None,
        report_allowed: bool = False,
        workers: int = 2,
        queue_size: int = 1024,
        cache_capacity: int = 65536,
        allow_system_mount: bool = False,
        kernel_ignore_marks: bool = True,
    ) -> None:
        self.mount = Path(mount)
        self.policy = policy
        self._trust = trust
        self._on_event = on_event
        self._report_allowed = report_allowed
        self._workers_count = max(1, workers)
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max(1, queue_size))
        self.cache = DecisionCache(cache_capacity)
        self.metrics = Metrics()
        self._allow_system_mount = allow_system_mount
        self._kernel_ignore_marks = kernel_ignore_marks
        self._pid = os.getpid()
        self._fan: Fanotify | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._deadlines: list[tuple[float, int, _Pending]] = []
        self._wake = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._learned: dict[bytes, LearnedFile] = {}
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._deadline_s = policy.decision_deadline_ms / 1000.0
        self._events: queue.Queue[_EventItem | ProtectionEvent | None] = queue.Queue(maxsize=10000)
        self._emitter: threading.Thread | None = None
        self.memfd_noexec: int | None = memfd_noexec_state()
        self._roles = SubjectRoles(policy)
        self._trust_generation = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Mark the mount and start deciding; raises FanotifyError or ProtectError on failure."""
        if self._fan is not None:
            raise ProtectError("engine is already running")
        self._check_dedicated_mount()
        if self.policy.memfd_noexec is not None:
            self.memfd_noexec = apply_memfd_noexec(self.policy.memfd_noexec)
        fan = Fanotify(FAN_CLASS_CONTENT | FAN_UNLIMITED_MARKS)
        try:
            fan.mark(self.mount, FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM | FAN_CLOSE_WRITE)
        except FanotifyError:
            fan.close()
            raise
        self._fan = fan
        self._stop.clear()
        self._threads = [threading.Thread(target=self._read_loop, name="medsec-fan-reader", daemon=True)]
        self._threads.append(threading.Thread(target=self._watchdog, name="medsec-fan-deadline", daemon=True))
        for i in range(self._workers_count):
            self._threads.append(threading.Thread(target=self._work_loop, name=f"medsec-fan-worker-{i}", daemon=True))
        for thread in self._threads:
            thread.start()
        self._emitter = threading.Thread(target=self._emit_loop, name="medsec-fan-events", daemon=True)
        self._emitter.start()
        logger.info("allowlisting %s in %s mode (%s)", self.mount, self.policy.mode, self.policy.failure_mode)

    def close(self) -> None:
        """Stop: answer every outstanding permission event (failure mode), then close the group."""
        fan = self._fan
        if fan is None:
            return
        self._stop.set()
        try:
            reader = self._threads[0] if self._threads else None
            if reader is not None:
                reader.join(timeout=5)
            self._drain_kernel(fan)
            self._answer_outstanding("engine stopping")
            for _ in range(self._workers_count):
                with contextlib.suppress(queue.Full):
                    self._queue.put_nowait(None)
            with self._wake:
                self._wake.notify_all()
            for thread in self._threads[1:]:
                thread.join(timeout=2)
        finally:
            with self._lock:
                self._fan = None
                fan.close()
            self._events.put(None)
            if self._emitter is not None:
                self._emitter.join(timeout=5)

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_dedicated_mount(self) -> None:
        path = self.mount
        if not path.is_dir() or not os.path.ismount(path):
            raise ProtectError(f"{path} is not a mount point; a mark there would cover its parent mount")
        if self._allow_system_mount:
            return
        dev = path.stat().st_dev
        system = {"/": os.stat("/").st_dev, sys.executable: os.stat(os.path.realpath(sys.executable)).st_dev}
        for what, system_dev in system.items():
            if dev == system_dev:
                raise ProtectError(
                    f"{path} is on the same filesystem as {what}; refusing to mark a system mount "
                    "(pass allow_system_mount=True on a device whose root this engine protects)"
                )

    # -- trust set and results ---------------------------------------------------------------

    def set_trust(self, trust: Container[bytes]) -> None:
        """Swap the trust set (a new signed trust database) and forget every cached verdict."""
        with self._lock:
            self._trust = trust
            self._trust_generation += 1
            self.cache.clear()
            if self._fan is not None:
                try:
                    self._fan.flush_inode_marks()
                except FanotifyError as e:
                    self._emit_error("ignore_flush_failed", str(e))

    def learned(self) -> list[LearnedFile]:
        """Files collected in learn mode, sorted by path."""
        with self._lock:
            return sorted(self._learned.values(), key=lambda f: (f.path, f.sha256))

    def latency_samples_us(self) -> list[float]:
        """Recent decision latencies (read of the event to its answer), microseconds."""
        return list(self._latencies.copy())  # copy() is atomic under appends

    # -- reader: fast path ------------------------------------------------------------------

    def _read_loop(self) -> None:
        fan = self._fan
        assert fan is not None
        while not self._stop.is_set():
            try:
                batch = list(fan.read_events(timeout=0.1))
            except FanotifyError as e:
                self._emit_error("fanotify_read", str(e))
                time.sleep(0.05)
                continue
            received = time.monotonic()
            for event in batch:
                try:
                    self._dispatch(fan, event, received)
                except Exception as e:  # the reader must survive anything, or every exec would wait
                    self._rescue(fan, event, e)

    def _rescue(self, fan: Fanotify, event: FanotifyEvent, error: Exception) -> None:
        """Answer an event whose handling failed unexpectedly by the failure mode.

        Its fd is left open: it may already be closed, and closing a reused number would be worse
        than a leak in a path that should never run. An answered event gets ENOENT, ignored here.
        """
        if event.is_permission:
            with self._lock, contextlib.suppress(FanotifyError):
                fan.respond(event.fd, self.policy.fail_open)
        rule = "deadline_fail_open" if self.policy.fail_open else "deadline_fail_closed"
        self.metrics.record(rule, 0.0, cache_hit=False)
        self._emit_error("reader_failed", f"{type(error).__name__}: {error}")

    def _dispatch(self, fan: Fanotify, event: FanotifyEvent, received: float) -> None:
        if event.is_overflow:
            self._emit_error("queue_overflow", "the kernel dropped events: its fanotify queue was full")
            return
        if not event.is_permission:
            self._invalidate(event)
            return
        if event.pid == self._pid:
            self._answer_now(fan, event, received, _Outcome(True, "self", "allow"))
            return
        pending = _Pending(
            event,
            received + self._deadline_s,
            received,
            "exec" if event.mask & FAN_OPEN_EXEC_PERM else "open",
        )
        try:
            outcome = self._fast_decision(pending)
        except OSError:
            outcome = None
        if outcome is not None:
            try:
                self._finish(pending, outcome)
            finally:
                event.close()
            return
        with self._wake:
            heapq.heappush(self._deadlines, (pending.deadline, next(self._seq), pending))
            self._wake.notify()
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            self._expire(pending, "decision queue full")
            event.close()

    def _invalidate(self, event: FanotifyEvent) -> None:
        try:
            st = os.fstat(event.fd)
            self.cache.drop(st.st_dev, st.st_ino)
        except OSError:
            pass
        finally:
            event.close()

    def _answer_now(self, fan: Fanotify, event: FanotifyEvent, received: float, outcome: _Outcome) -> None:
        answered_at = time.monotonic()
        try:
            fan.respond(event.fd, outcome.allow)
        except FanotifyError as e:
            self._emit_error("respond_failed", str(e))
        finally:
            event.close()
        self.metrics.record(outcome.rule, (answered_at - received) * 1e6, cache_hit=outcome.cache_hit)

    def _fast_decision(self, pending: _Pending) -> _Outcome | None:
        """Answers that need no hashing: exclusions, opens that are not script loads, cache hits."""
        event = pending.event
        if self.policy.excluded_paths:
            pending.path = event.path()
            if pending.path is not None and self._excluded(pending.path):
                return _Outcome(True, "excluded", "allow")
        if pending.category == "open":
            pending.subject_exe = _readlink(f"/proc/{event.pid}/exe")
            if not self._open_needs_check(pending):
                return _Outcome(True, "not_a_script_load", "allow")
        verdict = self.cache.get(cache_key(os.fstat(event.fd)))
        if verdict is None:
            return None
        return self._outcome(pending, verdict, cache_hit=True)

    def _excluded(self, path: str) -> bool:
        for prefix in self.policy.excluded_paths:
            if path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/"):
                return True
        return False

    def _open_needs_check(self, pending: _Pending) -> bool:
        exe = pending.subject_exe
        if exe is None:
            return False
        if self._roles.is_loader(exe):
            return True
        if not self._roles.is_interpreter(exe):
            return False
        try:
            head = os.pread(pending.event.fd, 4, 0)
        except OSError:
            return True
        if head.startswith(b"#!"):
            return True
        if head == b"\x7fELF":
            return False  # no interpreter runs ELF as a script; ELF execs are checked at exec or by the loader rule
        if pending.path is None:
            pending.path = pending.event.path()
        path = pending.path or ""
        if path.endswith(self.policy.script_suffixes):
            return True
        script = _cmdline_script(pending.event.pid, exe)
        if script is None:
            return False  # a data file (a configuration named by --config, say) is not a script load
        return path == script or (path == os.path.realpath(script))

    # -- workers: hashing and trust lookups --------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            pending = self._queue.get()
            if pending is None:
                return
            try:
                if pending.answered:
                    continue
                outcome = self._slow_decision(pending)
                self._finish(pending, outcome)
            except Exception as e:  # a decision must never be left unanswered
                logger.exception("decision failed")
                self._expire(pending, f"decision failed: {e}")
            finally:
                pending.event.close()

    def _slow_decision(self, pending: _Pending) -> _Outcome:
        st = os.fstat(pending.event.fd)
        key = cache_key(st)
        digest = sha256_fd(pending.event.fd)
        updater = digest == self.policy.updater_digest
        generation = self._trust_generation
        trusted = updater or digest in self._trust
        after = os.fstat(pending.event.fd)
        verdict = _Verdict(key, digest, trusted, updater)
        # A file written while hashed, or a verdict from a trust set replaced meanwhile, is not kept.
        if cache_key(after) == key and generation == self._trust_generation:
            self.cache.put(verdict)
            if trusted and self._kernel_ignore_marks:
                self._ignore_trusted(pending.event.fd, key)
        if self.policy.mode == "learn":
            self._learn(pending, digest, st)
        return self._outcome(pending, verdict, cache_hit=False)

    def _ignore_trusted(self, fd: int, key: CacheKey) -> None:
        """Let the kernel skip further events for a trusted file until it is written.

        The ignore mask is added after hashing and the file is checked again afterwards: a
        write before the mark moved mtime/ctime (the mark is then removed), a write after it
        clears the ignore mask in the kernel.
        """
        fan = self._fan
        if fan is None:
            return
        mask = FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM
        try:
            with self._lock:
                fan.ignore(fd, mask)
            if cache_key(os.fstat(fd)) != key:
                with self._lock:
                    fan.ignore(fd, mask, remove=True)
        except (FanotifyError, OSError) as e:
            logger.debug("no ignore mark: %s", e)

    def _learn(self, pending: _Pending, digest: bytes, st: os.stat_result) -> None:
        with self._lock:
            if digest not in self._learned:
                self._learned[digest] = LearnedFile(
                    pending.path or pending.event.path() or "", digest.hex(), st.st_size, st.st_mode & 0o7777
                )

    def _outcome(self, pending: _Pending, verdict: _Verdict, *, cache_hit: bool) -> _Outcome:
        if verdict.trusted:
            rule = "trusted_updater" if verdict.updater else "trusted"
            return _Outcome(True, rule, "allow", verdict.digest, cache_hit=cache_hit)
        rule = self._deny_rule(pending)
        mode = self.policy.mode
        if mode == "enforce":
            return _Outcome(False, rule, "deny", verdict.digest, cache_hit=cache_hit)
        if mode == "monitor":
            return _Outcome(True, rule, "would_deny", verdict.digest, cache_hit=cache_hit)
        return _Outcome(True, rule, "learned", verdict.digest, cache_hit=cache_hit)

    def _deny_rule(self, pending: _Pending) -> str:
        if pending.category == "exec":
            return "not_in_trustdb"
        if pending.subject_exe and self._roles.is_loader(pending.subject_exe):
            return "loader_direct"
        return "interpreter_script_untrusted"

    # -- answering ---------------------------------------------------------------------------

    def _claim_and_respond(self, pending: _Pending, allow: bool) -> bool:
        """Answer ``pending`` unless someone already did; False when it was already answered.

        Claim and write happen under one lock, so whoever loses the race can close the event
        fd only after the winner's write: an fd number is never answered after its reuse.
        """
        with self._lock:
            if pending.answered:
                return False
            pending.answered = True
            pending.answered_at = time.monotonic()
            fan = self._fan
            if fan is None:
                return True
            try:
                fan.respond(pending.event.fd, allow)
            except FanotifyError as e:
                if getattr(e.__cause__, "errno", None) != errno.ENOENT:
                    self._emit_error("respond_failed", str(e))
            return True

    def _finish(self, pending: _Pending, outcome: _Outcome) -> None:
        if not self._claim_and_respond(pending, outcome.allow):
            return
        latency = (pending.answered_at - pending.received) * 1e6
        depth = 0 if outcome.cache_hit else self._queue.qsize()
        self.metrics.record(outcome.rule, latency, cache_hit=outcome.cache_hit, queue_depth=depth)
        self._latencies.append(latency)  # deque.append is atomic
        if outcome.action != "allow" or self._report_allowed:
            self._emit_decision(pending, outcome)

    def _expire(self, pending: _Pending, why: str) -> None:
        """Answer by the policy's failure mode (deadline passed, queue full, engine stopping)."""
        allow = self.policy.fail_open
        if not self._claim_and_respond(pending, allow):
            return
        rule = "deadline_fail_open" if allow else "deadline_fail_closed"
        latency = (pending.answered_at - pending.received) * 1e6
        self.metrics.record(rule, latency, cache_hit=False, queue_depth=self._queue.qsize())
        with self._lock:
            self._latencies.append(latency)
        self._queue_event(pending, "error", rule, None, f"{why}; decided by failure mode {self.policy.failure_mode}")

    def _watchdog(self) -> None:
        while True:
            with self._wake:
                while not self._stop.is_set() and (not self._deadlines or self._deadlines[0][0] > time.monotonic()):
                    wait = self._deadlines[0][0] - time.monotonic() if self._deadlines else None
                    self._wake.wait(timeout=wait if wait is None else max(wait, 0.0005))
                    while self._deadlines and self._deadlines[0][2].answered:
                        heapq.heappop(self._deadlines)
                if self._stop.is_set():
                    return
                _, _, pending = heapq.heappop(self._deadlines)
            self._expire(pending, f"no decision within {self.policy.decision_deadline_ms} ms")

    def _answer_outstanding(self, why: str) -> None:
        with self._lock:
            outstanding = [p for _, _, p in self._deadlines if not p.answered]
            self._deadlines.clear()
        for pending in outstanding:
            self._expire(pending, why)

    def _drain_kernel(self, fan: Fanotify) -> None:
        """Answer what the kernel queued but the reader never read (by the failure mode)."""
        for _ in range(1000):
            batch = list(fan.read_events(timeout=0))
            if not batch:
                return
            now = time.monotonic()
            for event in batch:
                if not event.is_permission:
                    event.close()
                    continue
                pending = _Pending(event, now, now, "exec" if event.mask & FAN_OPEN_EXEC_PERM else "open")
                pending.path = event.path()
                self._expire(pending, "engine stopping")
                event.close()

    # -- events ------------------------------------------------------------------------------

    def _emit_decision(self, pending: _Pending, outcome: _Outcome) -> None:
        if outcome.action == "learned" and outcome.cache_hit:
            return  # reported once, when first hashed
        if pending.path is None:
            pending.path = pending.event.path()
        if pending.subject_exe is None:
            pending.subject_exe = _readlink(f"/proc/{pending.event.pid}/exe")
        self._queue_event(pending, outcome.action, outcome.rule, outcome.digest, outcome.detail)

    def _queue_event(self, pending: _Pending, action: str, rule: str, digest: bytes | None, detail: str) -> None:
        """Hand an event to the emitter thread: the sink may open files, which the reader never may."""
        if pending.path is None:
            pending.path = pending.event.path()
        item = _EventItem(
            category=pending.category,
            action=action,
            rule=rule,
            pid=pending.event.pid,
            exe=pending.subject_exe,
            path=pending.path,
            digest=digest,
            detail=detail[:500],
        )
        try:
            self._events.put_nowait(item)
        except queue.Full:
            self.metrics.record("events_dropped", 0.0, cache_hit=False)

    def _emit_loop(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            if isinstance(item, ProtectionEvent):
                self._emit(item)
                continue
            self._emit(
                ProtectionEvent(
                    category=item.category,
                    action=item.action,
                    rule=item.rule,
                    mode=self.policy.mode,
                    subject=_subject(item.pid, item.exe, with_hash=item.action in ("deny", "would_deny")),
                    object=Object(
                        path=item.path[:4096] if item.path else None, sha256=item.digest.hex() if item.digest else None
                    ),
                    detail=item.detail,
                )
            )

    def _emit_error(self, rule: str, detail: str) -> None:
        event = ProtectionEvent(category="agent", action="error", rule=rule, mode=self.policy.mode, detail=detail[:500])
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.metrics.record("events_dropped", 0.0, cache_hit=False)

    def _emit(self, event: ProtectionEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:  # a failing sink must not stop decisions
            logger.exception("protection event sink failed")
