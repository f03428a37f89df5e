"""Integrity monitoring with recovery (RL-1, RL-2): a signed baseline, checks, restore or quarantine.

The baseline lists the files whose content must not change outside a signed update: the device's
binaries and configuration and the agent's own files (its settings, the public trust roots, its
policies, the trust database) and, for logs, the promise that they only grow. It is a DSSE
envelope (:mod:`medsec.crypto.envelope`) of type :data:`PAYLOAD_TYPE`::

    {"format": "medsec-integrity-baseline/v1", "label": "IC300-0001", "created": "…Z",
     "watch": ["opt/device/bin"],                  # folders where an unlisted file is unexpected
     "files": [{"path": "opt/device/bin/pump-ctl", "kind": "binary", "sha256": "…",
                "size": 4096, "mode": 493}, …]}

Paths are relative to the device root. ``kind`` is ``binary``, ``config``, ``agent`` or ``log``;
for a log, ``sha256`` and ``size`` describe its content when the baseline was made, and the check
is that this content is still the file's beginning (append-only), not that the file is unchanged.

:class:`IntegrityMonitor` checks at start (:meth:`~IntegrityMonitor.check_all`), on a schedule,
and whenever a fanotify notification (``FAN_CLOSE_WRITE`` / ``FAN_MODIFY``) names a protected
file. A finding is logged as a :class:`~medsec.protect.events.ProtectionEvent` (category
``integrity``, action ``detected``), then repaired: the file is put back atomically from a
known-good copy whose hash matches the baseline (action ``restored``), or, with no such copy,
moved to a quarantine folder with mode 0000 (action ``quarantined``). ``on_event`` receives
every event (the agent forwards them to its Merkle access log and the server).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from medsec.atomic_file import atomic_write, fsync_dir
from medsec.crypto.envelope import open_envelope, peek, seal
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import CryptoError
from medsec.protect.errors import FanotifyError, IntegrityError
from medsec.protect.events import Object, ProtectionEvent

logger = logging.getLogger(__name__)

PAYLOAD_TYPE = "application/vnd.medsec.integrity-baseline+json"
FORMAT = "medsec-integrity-baseline/v1"
KINDS = ("binary", "config", "agent", "log")
_CHUNK = 1 << 20
_FIELDS = frozenset({"path", "kind", "sha256", "size", "mode"})

# The A/B slots below a device root (medsec.updates.client.UpdatePaths.slots_dir). Every update
# replaces their content, which the slot's signed manifest and the trust database protect; fixed
# hashes in a baseline would make the monitor put an old release's files back after an update.
SLOTS_DIR = "slots"

# Where the agent's own files live under a device root (medsec.agent.config.DeviceLayout and
# medsec.updates): settings and policies, the public trust roots, and its logs.
AGENT_FILES: tuple[tuple[str, str], ...] = (
    ("etc/medsec", "config"),
    ("usr/share/medsec/trust", "agent"),
    ("var/log/medsec", "log"),
)

EventSink = Callable[[ProtectionEvent], None]
FileProgress = Callable[[Path, int], None]


# -- the baseline ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineEntry:
    path: str  # relative to the device root, POSIX
    kind: str
    sha256: str
    size: int
    mode: int  # permission bits including set-id and sticky

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "sha256": self.sha256, "size": self.size, "mode": self.mode}


def _safe_relpath(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise IntegrityError(f"{what} must be a non-empty path")
    parts = PurePosixPath(value).parts
    if value.startswith("/") or any(p in ("..", ".") for p in value.split("/")) or not parts:
        raise IntegrityError(f"{what} {value!r} must be relative to the device root, without '..'")
    return value


def _in_slots(path: str) -> bool:
    return PurePosixPath(path).parts[0] == SLOTS_DIR


def _parse_entry(index: int, raw: Any) -> BaselineEntry:
    where = f"baseline files[{index}]"
    if not isinstance(raw, dict) or set(raw) != _FIELDS:
        raise IntegrityError(f"{where} must be an object with exactly {', '.join(sorted(_FIELDS))}")
    path = _safe_relpath(raw["path"], f"{where}.path")
    if raw["kind"] not in KINDS:
        raise IntegrityError(f"{where}.kind must be one of {', '.join(KINDS)}")
    digest = raw["sha256"]
    if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
        raise IntegrityError(f"{where}.sha256 must be 64 lowercase hex digits")
    for name, top in (("size", 2**53), ("mode", 0o7777)):
        value = raw[name]
        if type(value) is not int or not 0 <= value <= top:
            raise IntegrityError(f"{where}.{name} must be an integer from 0 to {top}")
    return BaselineEntry(path, raw["kind"], digest, raw["size"], raw["mode"])


@dataclass(frozen=True)
class Baseline:
    label: str
    created: str
    entries: tuple[BaselineEntry, ...]
    watch: tuple[str, ...] = ()
    # Paths in the A/B slots that a signed baseline listed (one built before they were refused):
    # left to the slot's manifest and the trust database, never monitored.
    ignored: tuple[str, ...] = ()

    def to_document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "label": self.label,
            "created": self.created,
            "watch": list(self.watch),
            "files": [e.to_json() for e in self.entries],
        }

    def seal(self, keys: Sequence[SigningKey]) -> bytes:
        try:
            return seal(self.to_document(), PAYLOAD_TYPE, keys)
        except CryptoError as e:
            raise IntegrityError(f"cannot sign the baseline: {e.diagnostics()}") from e


def parse_baseline(document: Mapping[str, Any]) -> Baseline:
    if document.get("format") != FORMAT:
        raise IntegrityError(f"baseline format is {document.get('format')!r}, expected {FORMAT!r}")
    unknown = set(document) - {"format", "label", "created", "watch", "files"}
    if unknown:
        raise IntegrityError(f"baseline has unknown fields {sorted(unknown)}")
    for name in ("label", "created"):
        if not isinstance(document.get(name), str):
            raise IntegrityError(f"baseline field {name!r} is missing or not a string")
    watch = document.get("watch")
    files = document.get("files")
    if not isinstance(watch, list) or not isinstance(files, list):
        raise IntegrityError("baseline fields 'watch' and 'files' must be lists")
    entries = tuple(_parse_entry(i, raw) for i, raw in enumerate(files))
    seen: set[str] = set()
    for e in entries:
        if e.path in seen:
            raise IntegrityError(f"baseline lists {e.path!r} twice")
        seen.add(e.path)
    watched = tuple(_safe_relpath(w, f"baseline watch[{i}]") for i, w in enumerate(watch))
    return Baseline(
        document["label"],
        document["created"],
        tuple(e for e in entries if not _in_slots(e.path)),
        tuple(w for w in watched if not _in_slots(w)),
        tuple(sorted({e.path for e in entries if _in_slots(e.path)} | {w for w in watched if _in_slots(w)})),
    )


def load_baseline(data: bytes, trusted_keys: Iterable[VerifyKey], *, threshold: int = 1) -> Baseline:
    """Verify a signed baseline; IntegrityError when unsigned, wrongly signed or malformed."""
    try:
        document = open_envelope(data, PAYLOAD_TYPE, trusted_keys, threshold=threshold)
    except CryptoError as e:
        raise IntegrityError(f"integrity baseline refused: unsigned or not signed by a trusted key ({e})") from e
    return parse_baseline(document)


def read_baseline_unverified(data: bytes) -> Baseline:
    """Parse a baseline envelope WITHOUT checking signatures (display only)."""
    try:
        payload_type, document = peek(data)
    except CryptoError as e:
        raise IntegrityError(f"not a baseline envelope: {e}") from e
    if payload_type != PAYLOAD_TYPE:
        raise IntegrityError(f"envelope holds {payload_type!r}, not an integrity baseline")
    return parse_baseline(document)


def hash_file(path: Path, limit: int | None = None) -> tuple[str, int]:
    """SHA-256 (hex) and byte count of a file, or of its first ``limit`` bytes."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while True:
            want = _CHUNK if limit is None else min(_CHUNK, limit - size)
            if want <= 0:
                break
            chunk = f.read(want)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _files_below(root: Path, rel: str) -> Iterator[str]:
    target = root / rel
    if target.is_file():
        yield rel
        return
    if not target.is_dir():
        raise IntegrityError(f"{target} does not exist; cannot protect it")
    found = []
    for dirpath, _dirs, names in os.walk(target, followlinks=False):
        for name in names:
            p = Path(dirpath) / name
            if stat.S_ISREG(p.lstat().st_mode):
                found.append((p.relative_to(root)).as_posix())
    yield from sorted(found)


def build_baseline(
    root: Path,
    protect: Sequence[tuple[str, str]],
    *,
    label: str,
    created: str | None = None,
    progress: FileProgress | None = None,
) -> Baseline:
    """Hash what ``protect`` names (``(relative file or folder, kind)``) below a known-good ``root``.

    Folders of kind binary, config or agent become watched: a new file there is unexpected.
    """
    entries: dict[str, BaselineEntry] = {}
    watch: list[str] = []
    for given, kind in protect:
        if kind not in KINDS:
            raise IntegrityError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        rel = _safe_relpath(given.strip("/"), "protected path")
        if _in_slots(rel):
            raise IntegrityError(
                f"protected path {rel!r} is in the A/B slots, which every update replaces; the slot's signed "
                "manifest and the trust database protect them, not the baseline"
            )
        if (root / rel).is_dir() and kind != "log":
            watch.append(rel)
        for path in _files_below(root, rel):
            p = root / path
            digest, size = hash_file(p)
            entries[path] = BaselineEntry(path, kind, digest, size, stat.S_IMODE(p.stat().st_mode))
            if progress is not None:
                progress(p, size)
    if not entries:
        raise IntegrityError("nothing to protect: the baseline would be empty")
    stamp = created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Baseline(label, stamp, tuple(entries[k] for k in sorted(entries)), tuple(sorted(set(watch))))


# -- known-good copies ---------------------------------------------------------------------------------


class KnownGood:
    """Known-good copies found by content: any file below ``sources`` whose SHA-256 is wanted.

    Sources are the active slot's payload and read-only stores. A copy is used only after its
    bytes hash to the baseline's value, so a tampered source can never be restored from.
    """

    def __init__(self, sources: Sequence[Path]) -> None:
        self.sources = tuple(sources)
        self._index: dict[str, Path] | None = None
        self._sizes: set[int] = set()

    def _build(self, sizes: set[int]) -> dict[str, Path]:
        index: dict[str, Path] = {}
        for source in self.sources:
            if not source.is_dir():
                continue
            for dirpath, _dirs, names in os.walk(source, followlinks=False):
                for name in names:
                    p = Path(dirpath) / name
                    try:
                        st = p.lstat()
                        if stat.S_ISREG(st.st_mode) and st.st_size in sizes:
                            index.setdefault(hash_file(p)[0], p)
                    except OSError:
                        continue
        return index

    def read(self, entry: BaselineEntry) -> bytes | None:
        """The bytes of a verified copy of ``entry``'s content, or None."""
        for attempt in range(2):
            if self._index is None or entry.size not in self._sizes or attempt:
                self._sizes.add(entry.size)
                self._index = self._build(self._sizes)
            path = self._index.get(entry.sha256)
            if path is None:
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() == entry.sha256:
                return data
        return None


def populate_store(store: Path, root: Path, baseline: Baseline) -> int:
    """Copy the baseline's files (except logs) into a known-good store named by hash; return how many."""
    store.mkdir(parents=True, exist_ok=True)
    copied = 0
    for e in baseline.entries:
        if e.kind == "log":
            continue
        dest = store / e.sha256
        if dest.exists():
            continue
        data = (root / e.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != e.sha256:
            raise IntegrityError(f"{e.path} changed since the baseline was built; not storing it")
        atomic_write(dest, data, mode=0o444)
        copied += 1
    return copied


# -- checking ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    rule: str  # baseline_mismatch | missing | unexpected_mode | unexpected_file | log_not_append_only
    path: str  # relative to the device root
    detail: str
    entry: BaselineEntry | None = None
    actual_sha256: str | None = None


def check_entry(root: Path, entry: BaselineEntry, log_state: tuple[int, str] | None = None) -> Finding | None:
    """Compare one file with its baseline entry (or, for logs, with the last content seen)."""
    path = root / entry.path
    try:
        st = path.lstat()
    except FileNotFoundError:
        return Finding("missing", entry.path, f"{entry.path} is missing", entry)
    if not stat.S_ISREG(st.st_mode):
        return Finding("baseline_mismatch", entry.path, f"{entry.path} is no longer a regular file", entry)
    if entry.kind == "log":
        size, digest = log_state or (entry.size, entry.sha256)
        if st.st_size < size:
            return Finding("log_not_append_only", entry.path, f"{entry.path} shrank from {size} to {st.st_size}", entry)
        if hash_file(path, size)[0] != digest:
            return Finding("log_not_append_only", entry.path, f"{entry.path}: earlier content was rewritten", entry)
        return None
    if st.st_size != entry.size:
        actual = hash_file(path)[0]
        return Finding("baseline_mismatch", entry.path, f"{entry.path} has {st.st_size} bytes", entry, actual)
    actual, _ = hash_file(path)
    if actual != entry.sha256:
        return Finding("baseline_mismatch", entry.path, f"{entry.path} content differs", entry, actual)
    if stat.S_IMODE(st.st_mode) != entry.mode:
        return Finding(
            "unexpected_mode",
            entry.path,
            f"{entry.path} mode {stat.S_IMODE(st.st_mode):o}, expected {entry.mode:o}",
            entry,
        )
    return None


class ChangeSource(Protocol):
    """Tells the monitor which files were written.

    ``changed(timeout)`` returns the absolute paths written since the last call (empty after
    ``timeout`` seconds of quiet), or None when notifications were lost and everything must be checked.
    """

    def changed(self, timeout: float) -> list[str] | None: ...

    def close(self) -> None: ...


class FanotifyChanges:
    """``FAN_CLOSE_WRITE`` and ``FAN_MODIFY`` notifications on one mount (notification class only).

    Only the dedicated device mount is marked; events caused by this process (its own restores)
    are ignored.
    """

    def __init__(self, mount: Path) -> None:
        from medsec.protect.fanotify import FAN_CLASS_NOTIF, FAN_CLOSE_WRITE, FAN_MODIFY, Fanotify

        self._fan = Fanotify(FAN_CLASS_NOTIF)
        try:
            self._fan.mark(mount, FAN_CLOSE_WRITE | FAN_MODIFY, mount=True)
        except FanotifyError:
            self._fan.close()
            raise
        self._pid = os.getpid()

    def changed(self, timeout: float) -> list[str] | None:
        paths: list[str] = []
        overflow = False
        for event in self._fan.read_events(timeout):
            try:
                if event.is_overflow:
                    overflow = True
                elif event.pid != self._pid:
                    path = event.path()
                    if path is not None:
                        paths.append(path.removesuffix(" (deleted)"))
            finally:
                event.close()
        return None if overflow else paths

    def close(self) -> None:
        self._fan.close()


@dataclass
class MonitorStats:
    full_checks: int = 0
    path_checks: int = 0
    findings: int = 0
    restored: int = 0
    quarantined: int = 0
    last_full_check: float | None = None
    by_rule: dict[str, int] = field(default_factory=dict)


class IntegrityMonitor:
    """Checks a device root against a verified baseline and repairs what it finds."""

    def __init__(
        self,
        root: Path,
        baseline: Baseline,
        known_good: KnownGood,
        *,
        quarantine_dir: Path,
        on_event: EventSink | None = None,
        interval: float = 300.0,
        repair: bool = True,
    ) -> None:
        if interval <= 0:
            raise IntegrityError("the check interval must be positive")
        self.root = root
        self.baseline = baseline
        self.known_good = known_good
        self.quarantine_dir = quarantine_dir
        self.interval = interval
        self.repair = repair  # False: report only (an operator's dry check)
        self.stats = MonitorStats()
        self._on_event = on_event
        self._lock = threading.Lock()
        self._log_state: dict[str, tuple[int, str]] = {}
        self._by_real: dict[str, BaselineEntry] = {}
        self._watch_real: tuple[str, ...] = ()
        self._map_paths()

    def _map_paths(self) -> None:
        # Notifications name real paths (slots/a/…), the baseline names device paths (slots/current/…).
        self._by_real = {os.path.realpath(self.root / e.path): e for e in self.baseline.entries}
        self._watch_real = tuple(os.path.realpath(self.root / w) + os.sep for w in self.baseline.watch)
        self._quarantine_real = os.path.realpath(self.quarantine_dir) + os.sep

    # -- entry points ------------------------------------------------------------------------------------

    def check_all(self) -> list[ProtectionEvent]:
        """Check every entry and every watched folder (at start and on the schedule)."""
        with self._lock:
            self._map_paths()
            events: list[ProtectionEvent] = []
            for entry in self.baseline.entries:
                events += self._check(entry)
            for folder in self.baseline.watch:
                for rel in self._unlisted(folder):
                    events += self._unexpected(rel)
            if self.quarantine_dir.is_dir():
                for item in self.quarantine_dir.iterdir():
                    self._seal_quarantine(str(item))
            self.stats.full_checks += 1
            self.stats.last_full_check = time.monotonic()
            return events

    def check_paths(self, paths: Iterable[str]) -> list[ProtectionEvent]:
        """Check the files a notification named; unrelated paths cost one dict lookup."""
        events: list[ProtectionEvent] = []
        with self._lock:
            for real in dict.fromkeys(paths):
                entry = self._by_real.get(real)
                if real.startswith(self._quarantine_real):
                    self._seal_quarantine(real)
                elif entry is not None:
                    self.stats.path_checks += 1
                    events += self._check(entry)
                elif real.startswith(self._watch_real) and os.path.lexists(real):
                    rel = self._device_relpath(real)
                    if rel is not None:
                        self.stats.path_checks += 1
                        events += self._unexpected(rel)
        return events

    def run(self, stop: threading.Event, changes: ChangeSource | None = None, *, poll: float = 0.5) -> None:
        """Check now, then on every change notification and every ``interval`` seconds until ``stop``."""
        self.check_all()
        next_full = time.monotonic() + self.interval
        while not stop.is_set():
            wait = max(0.0, min(poll, next_full - time.monotonic()))
            try:
                if changes is not None:
                    paths = changes.changed(wait)
                    if paths is None:
                        next_full = 0.0  # notifications were lost: check everything now
                    else:
                        self.check_paths(paths)
                else:
                    stop.wait(wait)
                if time.monotonic() >= next_full:
                    self.check_all()
                    next_full = time.monotonic() + self.interval
            except (OSError, IntegrityError, FanotifyError) as e:
                # The monitor must keep running; report the failure and carry on.
                logger.exception("integrity check failed")
                self._emit("error", "monitor_failed", None, f"integrity check failed: {e}"[:500])
                stop.wait(poll)

    # -- internals ----------------------------------------------------------------------------------------

    def _device_relpath(self, real: str) -> str | None:
        for folder in self.baseline.watch:
            base = os.path.realpath(self.root / folder) + os.sep
            if real.startswith(base):
                return f"{folder}/{real[len(base) :]}"
        return None

    def _unlisted(self, folder: str) -> Iterator[str]:
        listed = {e.path for e in self.baseline.entries}
        base = self.root / folder
        if not base.is_dir():
            return
        for dirpath, _dirs, names in os.walk(base, followlinks=False):
            for name in names:
                rel = f"{folder}/{(Path(dirpath) / name).relative_to(base).as_posix()}"
                if rel not in listed:
                    yield rel

    def _check(self, entry: BaselineEntry) -> list[ProtectionEvent]:
        try:
            finding = check_entry(self.root, entry, self._log_state.get(entry.path))
        except OSError as e:
            finding = Finding("baseline_mismatch", entry.path, f"{entry.path} cannot be read: {e.strerror}", entry)
        if finding is None:
            if entry.kind == "log":
                self._remember_log(entry)
            return []
        return self._respond(finding)

    def _remember_log(self, entry: BaselineEntry) -> None:
        path = self.root / entry.path
        digest, size = hash_file(path)
        self._log_state[entry.path] = (size, digest)

    def _unexpected(self, rel: str) -> list[ProtectionEvent]:
        path = self.root / rel
        try:
            actual = hash_file(path)[0] if path.is_file() else None
        except OSError:
            actual = None
        return self._respond(Finding("unexpected_file", rel, f"{rel} is not in the baseline", None, actual))

    def _respond(self, finding: Finding) -> list[ProtectionEvent]:
        self.stats.findings += 1
        self.stats.by_rule[finding.rule] = self.stats.by_rule.get(finding.rule, 0) + 1
        events = [self._emit("detected", finding.rule, finding, finding.detail)]
        entry = finding.entry
        if not self.repair:
            return events
        if finding.rule == "log_not_append_only" or (entry is not None and entry.kind == "log"):
            # Logs are evidence: never rewritten or moved; the finding itself is the alarm.
            return events
        if finding.rule == "unexpected_mode" and entry is not None:
            os.chmod(self.root / entry.path, entry.mode, follow_symlinks=False)
            events.append(self._emit("restored", finding.rule, finding, f"mode set back to {entry.mode:o}"))
            self.stats.restored += 1
            return events
        data = self.known_good.read(entry) if entry is not None else None
        if data is not None and entry is not None:
            atomic_write(self.root / entry.path, data, mode=entry.mode)
            self.stats.restored += 1
            events.append(self._emit("restored", finding.rule, finding, "restored from the known-good copy"))
            return events
        if finding.rule == "missing":
            events.append(self._emit("error", finding.rule, finding, "no known-good copy to restore from"))
            return events
        moved = self._quarantine(finding.path)
        if moved is not None:
            self.stats.quarantined += 1
            events.append(self._emit("quarantined", finding.rule, finding, f"moved to {moved}"[:500]))
        return events

    def _quarantine(self, rel: str) -> Path | None:
        source = self.root / rel
        self.quarantine_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        dest = self.quarantine_dir / f"{stamp}-{rel.replace('/', '_')}"
        try:
            os.rename(source, dest)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copyfile(source, dest, follow_symlinks=False)
            source.unlink()
        if not dest.is_symlink():
            os.chmod(dest, 0)
        fsync_dir(self.quarantine_dir)
        fsync_dir(source.parent)
        return dest

    def _seal_quarantine(self, real: str) -> None:
        # A writer that still holds the file open can chmod it after it was moved (same inode);
        # its close is reported here, and the quarantined file goes back to mode 0000.
        try:
            if not os.path.islink(real) and stat.S_IMODE(os.stat(real).st_mode):
                os.chmod(real, 0)
        except FileNotFoundError:
            pass

    def _emit(self, action: str, rule: str, finding: Finding | None, detail: str) -> ProtectionEvent:
        obj = None
        if finding is not None:
            obj = Object(path="/" + finding.path, sha256=finding.actual_sha256)
        event = ProtectionEvent(category="integrity", action=action, rule=rule, object=obj, detail=detail[:500])
        logger.info("integrity %s %s: %s", action, rule, detail)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                # A failing sink (network, full disk) must not stop the repair that follows.
                logger.exception("integrity event sink failed")
        return event
