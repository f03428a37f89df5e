"""The trust database: the allowlist of executable content of one product release (RL-3, SM-6).

A trust database lists, for one release of one product, every file that may run: its path on
the device, SHA-256, size, mode and where it came from (``payload`` of the release bundle, the
``os-image`` it was built on, or the medsec ``updater`` itself, pinned by hash). It travels as
a DSSE envelope (:mod:`medsec.crypto.envelope`) of type :data:`PAYLOAD_TYPE`, signed with the
release signing key(s), inside the release bundle (``trustdb.json``), and the installer writes
it into the A/B slot next to the payload, so switching the slot switches the database.

The document keeps its entries column by column, row ``i`` of every column being one file,
because a device must load and check 100,000 entries in well under a second (JSON objects per
entry cost several times more to decode and check)::

    {"format": "medsec-trustdb/v1", "product": "infusion-pump", "version": "1.2.0",
     "release_counter": 7, "created": "2026-01-10T09:00:00Z",
     "files": {"path":   ["/slots/current/bin/pump-ctl", "/usr/bin/python3.11", …],
               "sha256": ["9f86d0…", "2c26b4…", …],
               "size":   [4096, 6831736, …],
               "mode":   [493, 493, …],
               "source": ["payload", "os-image", …]}}

The enforcement engine asks only "is this digest allowed?" (``digest in db``) on every uncached
decision, so :class:`TrustDB` keeps a frozenset of raw 32-byte digests; paths are kept for
people (lint, dry run, display). Loading refuses, with :class:`TrustDatabaseError`, anything not
signed by a trusted key, for another product, or older than the release in use (rollback).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medsec.crypto.envelope import open_envelope, peek, seal
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import CryptoError, ProtocolError
from medsec.protect.errors import TrustDatabaseError
from medsec.protect.events import ProtectionEvent

logger = logging.getLogger(__name__)

PAYLOAD_TYPE = "application/vnd.medsec.trustdb+json"
FORMAT = "medsec-trustdb/v1"
SOURCES = ("payload", "os-image", "updater")
# Where the running slot's payload appears on the device (``ROOT/slots/current``, see
# medsec.updates.slots); payload entries get this prefix so every entry path is absolute.
DEFAULT_PAYLOAD_ROOT = "/slots/current"
MAX_TRUSTDB_BYTES = 64 * 1024 * 1024
_CHUNK = 1 << 20
COLUMNS = ("path", "sha256", "size", "mode", "source")
_HEX = frozenset("0123456789abcdef")

FileProgress = Callable[[Path, int], None]


@dataclass(frozen=True)
class TrustEntry:
    """One allowed file: absolute device path, SHA-256 (hex), size, permission mode, source."""

    path: str
    sha256: str
    size: int
    mode: int
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "mode": self.mode, "source": self.source}


class TrustDB:
    """A parsed trust database. ``digest in db`` answers the engine's one question in O(1).

    The columns are kept as given; :attr:`entries` builds :class:`TrustEntry` values only when
    somebody (lint, dry run, display) asks, so loading 100,000 entries stays cheap.
    """

    __slots__ = ("_columns", "_digests", "_entries", "created", "product", "release_counter", "version")

    def __init__(
        self,
        product: str,
        version: str,
        release_counter: int,
        created: str,
        entries: Iterable[TrustEntry] = (),
        *,
        _columns: dict[str, Sequence[Any]] | None = None,
        _digests: frozenset[bytes] | None = None,
    ) -> None:
        self.product = product
        self.version = version
        self.release_counter = release_counter
        self.created = created
        self._entries: tuple[TrustEntry, ...] | None = None
        if _columns is None:
            rows = tuple(entries)
            _columns = {name: tuple(getattr(e, name) for e in rows) for name in COLUMNS}
            self._entries = rows
        self._columns = _columns
        self._digests = _digests if _digests is not None else frozenset(bytes.fromhex(d) for d in _columns["sha256"])

    def __contains__(self, digest: object) -> bool:
        return digest in self._digests

    def __len__(self) -> int:
        return len(self._columns["path"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrustDB):
            return NotImplemented
        header = (self.product, self.version, self.release_counter, self.created)
        other_header = (other.product, other.version, other.release_counter, other.created)
        return header == other_header and all(tuple(self._columns[c]) == tuple(other._columns[c]) for c in COLUMNS)

    def __hash__(self) -> int:
        return hash((self.product, self.version, self.release_counter, self.created, len(self)))

    def __repr__(self) -> str:
        return f"TrustDB({self.product} {self.version}, counter {self.release_counter}, {len(self)} entries)"

    @property
    def entries(self) -> tuple[TrustEntry, ...]:
        if self._entries is None:
            self._entries = tuple(TrustEntry(*row) for row in zip(*(self._columns[c] for c in COLUMNS), strict=True))
        return self._entries

    @property
    def digests(self) -> frozenset[bytes]:
        return self._digests

    def to_document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "product": self.product,
            "version": self.version,
            "release_counter": self.release_counter,
            "created": self.created,
            "files": {name: list(self._columns[name]) for name in COLUMNS},
        }

    def seal(self, keys: Sequence[SigningKey]) -> bytes:
        """The signed envelope bytes (what goes into the release bundle)."""
        try:
            return seal(self.to_document(), PAYLOAD_TYPE, keys)
        except CryptoError as e:
            raise TrustDatabaseError(f"cannot sign the trust database: {e.diagnostics()}") from e

    def summary(self) -> dict[str, Any]:
        by_source = Counter(self._columns["source"])
        return {
            "product": self.product,
            "version": self.version,
            "release_counter": self.release_counter,
            "created": self.created,
            "entries": len(self),
            "by_source": {s: by_source.get(s, 0) for s in SOURCES},
        }


def _first_bad(column: Sequence[Any], good: Callable[[Any], bool], name: str, why: str) -> TrustDatabaseError:
    """The error for the first failing row (found by a slow scan, only once a check failed)."""
    for i, value in enumerate(column):
        if not good(value):
            return TrustDatabaseError(f"trust database files.{name}[{i}] {why}")
    return TrustDatabaseError(f"trust database files.{name} {why}")


def _is_path(p: Any) -> bool:
    return type(p) is str and p[:1] == "/" and "\x00" not in p


def _is_digest(d: Any) -> bool:
    return type(d) is str and len(d) == 64 and _HEX.issuperset(d)


def _is_size(n: Any) -> bool:
    return type(n) is int and n >= 0


def _is_mode(n: Any) -> bool:
    return type(n) is int and 0 <= n <= 0o7777


def _check_columns(files: Any) -> tuple[dict[str, Sequence[Any]], frozenset[bytes]]:
    """Validate the columns in bulk (C-speed passes); name the first bad row on failure.

    The lists are kept as decoded, not copied: they come from a document nobody else holds.
    """
    if not isinstance(files, dict) or set(files) != set(COLUMNS):
        raise TrustDatabaseError(f"trust database field 'files' must be an object with exactly {', '.join(COLUMNS)}")
    columns: dict[str, Sequence[Any]] = {}
    for name in COLUMNS:
        if not isinstance(files[name], list):
            raise TrustDatabaseError(f"trust database files.{name} must be a list")
        columns[name] = files[name]
    count = len(columns["path"])
    for name in COLUMNS:
        if len(columns[name]) != count:
            raise TrustDatabaseError(f"trust database files.{name} has {len(columns[name])} rows, files.path {count}")
    paths, digests = columns["path"], columns["sha256"]
    # Bulk checks first: set(map(type, ...)) and str.join run in C; the slow scan only names the culprit.
    joined_paths = "\x00".join(paths) if set(map(type, paths)) <= {str} else None
    if joined_paths is None or (
        count
        and (
            joined_paths[:1] != "/"
            or joined_paths.count("\x00/") != count - 1
            or joined_paths.count("\x00") != count - 1
        )
    ):
        raise _first_bad(paths, _is_path, "path", "must be an absolute path")
    raw = b""
    if set(map(type, digests)) <= {str} and set(map(len, digests)) <= {64}:
        joined = "".join(digests)
        try:
            raw = bytes.fromhex(joined)
        except ValueError:
            raw = b""
        # bytes.fromhex accepts upper case (refused here: one spelling per digest) and skips
        # spaces (a 64-character string with a space yields fewer than 32 bytes: caught below).
        if any(c in joined for c in "ABCDEF"):
            raw = b""
    if len(raw) != 32 * count:
        raise _first_bad(digests, _is_digest, "sha256", "must be 64 lowercase hex digits")
    for name, good, why in (
        ("size", _is_size, "must be a non-negative integer"),
        ("mode", _is_mode, "must be a permission mode from 0 to 0o7777"),
    ):
        column = columns[name]
        if count and (set(map(type, column)) != {int} or min(column) < 0 or (name == "mode" and max(column) > 0o7777)):
            raise _first_bad(column, good, name, why)
    if not set(columns["source"]) <= set(SOURCES):
        raise _first_bad(columns["source"], SOURCES.__contains__, "source", f"must be one of {', '.join(SOURCES)}")
    return columns, frozenset(raw[i : i + 32] for i in range(0, len(raw), 32))


def parse_document(document: Mapping[str, Any]) -> TrustDB:
    """Check a trust database document field by field (no signature check: see :func:`load_trustdb`)."""
    if document.get("format") != FORMAT:
        raise TrustDatabaseError(f"trust database format is {document.get('format')!r}, expected {FORMAT!r}")
    for name in ("product", "version", "created"):
        if not isinstance(document.get(name), str) or not document[name]:
            raise TrustDatabaseError(f"trust database field {name!r} is missing or not a string")
    counter = document.get("release_counter")
    if type(counter) is not int or counter < 1:
        raise TrustDatabaseError("trust database field 'release_counter' must be a positive integer")
    unknown = set(document) - {"format", "product", "version", "release_counter", "created", "files"}
    if unknown:
        raise TrustDatabaseError(f"trust database has unknown fields {sorted(unknown)}")
    columns, digests = _check_columns(document.get("files"))
    return TrustDB(
        document["product"], document["version"], counter, document["created"], _columns=columns, _digests=digests
    )


def load_trustdb(
    data: bytes,
    trusted_keys: Iterable[VerifyKey],
    *,
    product: str,
    min_counter: int,
    threshold: int = 1,
) -> TrustDB:
    """Verify a signed trust database and return it; TrustDatabaseError says why it was refused.

    Refused: a bad or missing signature ("unsigned"), another product, a ``release_counter``
    below ``min_counter`` (rollback, SM-6), and any malformed field.
    """
    try:
        document = open_envelope(data, PAYLOAD_TYPE, trusted_keys, threshold=threshold)
    except CryptoError as e:
        raise TrustDatabaseError(f"trust database refused: unsigned or not signed by a trusted key ({e})") from e
    db = parse_document(document)
    if db.product != product:
        raise TrustDatabaseError(f"trust database is for product {db.product!r}, this device is {product!r}")
    if db.release_counter < min_counter:
        raise TrustDatabaseError(
            f"trust database rollback refused: release_counter {db.release_counter} is below {min_counter}"
        )
    return db


def read_unverified(data: bytes) -> TrustDB:
    """Parse a trust database WITHOUT checking its signature (lint, show, dry run before signing).

    Accepts the signed envelope or the bare document.
    """
    try:
        document: Any = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise TrustDatabaseError(f"trust database is not JSON: {e}") from e
    if isinstance(document, dict) and "payloadType" in document:
        try:
            payload_type, document = peek(data)
        except CryptoError as e:
            raise TrustDatabaseError(f"trust database envelope is malformed: {e}") from e
        if payload_type != PAYLOAD_TYPE:
            raise TrustDatabaseError(f"envelope holds {payload_type!r}, not a trust database")
    if not isinstance(document, dict):
        raise TrustDatabaseError("trust database is not a JSON object")
    return parse_document(document)


# -- building ---------------------------------------------------------------------------------------


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def is_executable_content(path: Path, st: os.stat_result) -> bool:
    """Executable by mode bits, or an ELF file (programs, shared libraries), or a ``#!`` script."""
    if not stat.S_ISREG(st.st_mode):
        return False
    if st.st_mode & 0o111:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"\x7fELF" or head.startswith(b"#!")


def executable_files(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative POSIX path, path, lstat) of every executable regular file below ``root``, sorted.

    Symlinks are never followed: a link's target is listed where it really is.
    """
    if not root.is_dir():
        raise TrustDatabaseError(f"{root} is not a folder")
    found: list[tuple[str, Path, os.stat_result]] = []
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in filenames:
            p = base / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if is_executable_content(p, st):
                found.append((p.relative_to(root).as_posix(), p, st))
    found.sort(key=lambda item: item[0])
    yield from found


def _entries_below(root: Path, prefix: str, source: str, progress: FileProgress | None) -> list[TrustEntry]:
    entries = []
    for rel, p, st in executable_files(root):
        digest, size = hash_file(p)
        entries.append(TrustEntry(f"{prefix.rstrip('/')}/{rel}", digest, size, stat.S_IMODE(st.st_mode), source))
        if progress is not None:
            progress(p, size)
    return entries


def learn(root: Path, *, source: str = "os-image", progress: FileProgress | None = None) -> list[TrustEntry]:
    """Entries for every executable file of a known-good tree; ``root`` becomes ``/`` on the device."""
    if source not in SOURCES:
        raise TrustDatabaseError(f"source must be one of {', '.join(SOURCES)}")
    return _entries_below(root, "/", source, progress)


def updater_entries(files: Mapping[str, Path]) -> list[TrustEntry]:
    """Pin the medsec updater (device path -> local copy) by hash, whatever its mode bits say."""
    entries = []
    for device_path, local in sorted(files.items()):
        if not device_path.startswith("/"):
            raise TrustDatabaseError(f"updater path {device_path!r} must be absolute on the device")
        try:
            st = local.stat()
            digest, size = hash_file(local)
        except OSError as e:
            raise TrustDatabaseError(f"cannot read updater file {local}: {e.strerror}") from e
        entries.append(TrustEntry(device_path, digest, size, stat.S_IMODE(st.st_mode), "updater"))
    return entries


def utc_text(t: datetime | None = None) -> str:
    return (t or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_release(
    payload_dir: Path,
    *,
    product: str,
    version: str,
    release_counter: int,
    os_image: Path | None = None,
    updater: Mapping[str, Path] | None = None,
    created: str | None = None,
    payload_root: str = DEFAULT_PAYLOAD_ROOT,
    progress: FileProgress | None = None,
) -> TrustDB:
    """The trust database of a release: its payload, optionally its OS image, and the updater."""
    if release_counter < 1:
        raise TrustDatabaseError("release_counter must be a positive integer")
    entries = _entries_below(payload_dir, payload_root, "payload", progress)
    if os_image is not None:
        entries += learn(os_image, progress=progress)
    entries += updater_entries(updater or {})
    entries.sort(key=lambda e: (e.path, e.source))
    if created is None:
        # The newest input's mtime, like the bundle: rebuilding the same tree gives the same bytes.
        newest = max((p.stat().st_mtime for p in _inputs(payload_dir, os_image, updater)), default=0.0)
        created = utc_text(datetime.fromtimestamp(int(newest), UTC))
    return TrustDB(product, version, release_counter, created, tuple(entries))


def _inputs(payload_dir: Path, os_image: Path | None, updater: Mapping[str, Path] | None) -> Iterator[Path]:
    for root in (payload_dir, os_image):
        if root is not None:
            yield from (p for _rel, p, _st in executable_files(root))
    yield from (updater or {}).values()


def build_signed_for_release(
    payload_dir: Path,
    keys: Sequence[SigningKey],
    *,
    product: str,
    version: str,
    release_counter: int,
    os_image: Path | None = None,
    updater: Mapping[str, Path] | None = None,
    created: str | None = None,
    payload_root: str = DEFAULT_PAYLOAD_ROOT,
    progress: FileProgress | None = None,
) -> bytes:
    """The signed trust database envelope ``medsec release build`` puts into the bundle."""
    db = from_release(
        payload_dir,
        product=product,
        version=version,
        release_counter=release_counter,
        os_image=os_image,
        updater=updater,
        created=created,
        payload_root=payload_root,
        progress=progress,
    )
    if not len(db):
        raise TrustDatabaseError(f"{payload_dir} holds no executable file; the trust database would be empty")
    return db.seal(keys)


def read_verify_key(path: Path) -> VerifyKey:
    """A verification key from a file: PEM public or private key, a TUF ``*.pub.json``, or base64."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TrustDatabaseError(f"cannot read key file {path}: {e.strerror}") from e
    try:
        if b"PRIVATE KEY" in data:
            if b"ENCRYPTED" in data:
                raise TrustDatabaseError(f"{path} is an encrypted private key; give its public key file")
            return SigningKey.from_pem(data).verify_key
        if b"BEGIN PUBLIC KEY" in data:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            public = serialization.load_pem_public_key(data)
            if not isinstance(public, Ed25519PublicKey):
                raise TrustDatabaseError(f"{path} is not an Ed25519 public key")
            return VerifyKey(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        text = data.decode("utf-8").strip()
        if text.startswith("{"):
            doc = json.loads(text)
            if doc.get("keytype") != "ed25519":
                raise TrustDatabaseError(f"{path} is not an Ed25519 key")
            return VerifyKey(bytes.fromhex(doc["keyval"]["public"]))
        return VerifyKey.from_base64(text)
    except TrustDatabaseError:
        raise
    except (CryptoError, ValueError, KeyError, TypeError) as e:
        raise TrustDatabaseError(f"{path} is not a usable Ed25519 key: {e}") from e


def installer_check(
    trusted_keys: Sequence[VerifyKey], *, threshold: int = 1
) -> Callable[[bytes | None, str, int], None]:
    """A check for :class:`medsec.updates.installer.DirectoryInstaller`: refuse, before a slot is
    marked complete, a bundle whose trust database is missing, unsigned, for another product or
    for another release."""
    keys = tuple(trusted_keys)

    def check(data: bytes | None, product: str, release_counter: int) -> None:
        if data is None:
            raise TrustDatabaseError("the release carries no trust database")
        db = load_trustdb(data, keys, product=product, min_counter=release_counter, threshold=threshold)
        if db.release_counter != release_counter:
            raise TrustDatabaseError(
                f"trust database is for release counter {db.release_counter}, the bundle is {release_counter}"
            )

    return check


def count_files(root: Path) -> int:
    """How many regular files a tree holds (the total for a progress bar)."""
    return sum(len(names) for _d, _s, names in os.walk(root, followlinks=False))


# -- lint -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LintFinding:
    code: str  # empty | duplicate_path | world_writable | setuid | interpreter_not_listed
    path: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "path": self.path, "message": self.message}


def _interpreter(entry: TrustEntry, root: Path | None) -> str | None:
    """The ``#!`` interpreter of a script entry, read from ``root`` (the tree it was built from)."""
    if root is None:
        return None
    try:
        with (root / entry.path.lstrip("/")).open("rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
    if not words:
        return None
    if words[0].endswith("/env") and len(words) > 1:
        return words[1]
    return words[0]


def lint(db: TrustDB, *, tree: Path | None = None) -> list[LintFinding]:
    """Findings a release engineer must look at before signing (none means clean).

    ``tree`` is the device-shaped folder the entries can be read from (entry ``/x`` at
    ``tree/x``); with it, scripts are checked for an interpreter the database also allows.
    """
    findings: list[LintFinding] = []
    if not db.entries:
        findings.append(
            LintFinding("empty", None, "the trust database allows nothing; every execution would be denied")
        )
    by_path: dict[str, set[str]] = {}
    for e in db.entries:
        by_path.setdefault(e.path, set()).add(e.sha256)
    for path, digests in sorted(by_path.items()):
        if len(digests) > 1:
            findings.append(
                LintFinding("duplicate_path", path, f"{path} is listed with {len(digests)} different hashes")
            )
    paths = set(by_path)
    names = {p.rsplit("/", 1)[-1] for p in paths}
    for e in db.entries:
        if e.mode & 0o002:
            findings.append(LintFinding("world_writable", e.path, f"{e.path} is world-writable (mode {e.mode:o})"))
        if e.mode & (stat.S_ISUID | stat.S_ISGID):
            findings.append(LintFinding("setuid", e.path, f"{e.path} is set-user/group-id (mode {e.mode:o})"))
        interpreter = _interpreter(e, tree)
        if interpreter is not None and interpreter not in paths and ("/" in interpreter or interpreter not in names):
            findings.append(
                LintFinding(
                    "interpreter_not_listed", e.path, f"{e.path} runs {interpreter}, which the database does not allow"
                )
            )
    return findings


# -- dry run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DryRunDenial:
    path: str | None
    sha256: str
    count: int
    exe: str | None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "count": self.count, "exe": self.exe}


@dataclass(frozen=True)
class DryRunReport:
    """What enforcing ``db`` would change against recorded, previously allowed executions."""

    events_read: int
    allowed_considered: int
    would_deny: tuple[DryRunDenial, ...]
    without_hash: int  # allowed events that carry no file hash and cannot be judged

    def to_json(self) -> dict[str, Any]:
        return {
            "events_read": self.events_read,
            "allowed_considered": self.allowed_considered,
            "would_deny": [d.to_json() for d in self.would_deny],
            "without_hash": self.without_hash,
        }


def read_events(lines: Iterable[str]) -> Iterator[ProtectionEvent]:
    """Parse JSON lines of protection events; errors name the line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield ProtectionEvent.from_json(json.loads(line))
        except ValueError as e:
            raise TrustDatabaseError(f"events line {number}: not JSON ({e})") from e
        except ProtocolError as e:
            raise TrustDatabaseError(f"events line {number}: {e.diagnostics()}") from e


ALLOWED_ACTIONS = frozenset({"allow", "learned"})


def dry_run(db: TrustDB, events: Iterable[ProtectionEvent]) -> DryRunReport:
    """Which executions and opens allowed until now would ``db`` deny (before enforcing it)?"""
    read = considered = without_hash = 0
    denied: dict[tuple[str | None, str], list[Any]] = {}
    for event in events:
        read += 1
        if event.category not in ("exec", "open") or event.action not in ALLOWED_ACTIONS:
            continue
        considered += 1
        digest = event.object.sha256 if event.object else None
        if digest is None:
            without_hash += 1
            continue
        if bytes.fromhex(digest) in db:
            continue
        key = (event.object.path if event.object else None, digest)
        slot = denied.setdefault(key, [0, event.subject.exe if event.subject else None])
        slot[0] += 1
    report = tuple(
        DryRunDenial(path, digest, count, exe) for (path, digest), (count, exe) in sorted(denied.items(), key=str)
    )
    return DryRunReport(read, considered, report, without_hash)


# -- the active slot's database ---------------------------------------------------------------------


def load_active(
    slots_dir: Path,
    trusted_keys: Iterable[VerifyKey],
    product: str,
    *,
    min_counter: int = 0,
    threshold: int = 1,
) -> TrustDB:
    """Load the trust database of the slot the device runs (``slots_dir/current``).

    The file must hash to the ``trust_db`` of the slot's manifest (written by the installer from
    the signed bundle), carry a valid signature, be for ``product``, and belong to the release the
    slot holds (same release counter, and not below ``min_counter``).
    """
    # Imported here: the engine loads this module on the enforcement path, the update stack only here.
    from medsec.updates.device_errors import DeviceUpdateError
    from medsec.updates.slots import DirectorySlots

    slots = DirectorySlots(slots_dir)
    try:
        current = slots.current()
        release = slots.release(current) if current is not None else None
    except DeviceUpdateError as e:
        raise TrustDatabaseError(f"cannot read the active slot: {e.diagnostics()}") from e
    if current is None or release is None:
        raise TrustDatabaseError(f"no active slot with a complete release in {slots_dir}")
    expected = release.manifest.get("trust_db")
    if not isinstance(expected, str):
        raise TrustDatabaseError(f"the release in slot {current} ({release.version}) has no trust database")
    path = slots.trust_db_path(current)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TRUSTDB_BYTES + 1)
    except OSError as e:
        raise TrustDatabaseError(f"cannot read {path}: {e.strerror}") from e
    if len(data) > MAX_TRUSTDB_BYTES:
        raise TrustDatabaseError(f"{path} is larger than {MAX_TRUSTDB_BYTES} bytes")
    if hashlib.sha256(data).hexdigest() != expected:
        raise TrustDatabaseError(f"{path} does not match the trust_db hash in the slot's manifest (tampered)")
    db = load_trustdb(
        data, trusted_keys, product=product, min_counter=max(min_counter, release.release_counter), threshold=threshold
    )
    if db.release_counter != release.release_counter or db.version != release.version:
        raise TrustDatabaseError(
            f"trust database is for {db.version} (counter {db.release_counter}), "
            f"the slot holds {release.version} (counter {release.release_counter})"
        )
    return db


class ActiveTrustDB:
    """The trust database in force. A refused reload keeps the one in force (and reports why)."""

    def __init__(
        self,
        slots_dir: Path,
        trusted_keys: Sequence[VerifyKey],
        product: str,
        *,
        threshold: int = 1,
        on_event: Callable[[ProtectionEvent], None] | None = None,
    ) -> None:
        self._slots_dir = slots_dir
        self._keys = tuple(trusted_keys)
        self._product = product
        self._threshold = threshold
        self._on_event = on_event
        self.current: TrustDB | None = None

    def reload(self) -> TrustDB:
        """Load the active slot's database; on refusal raise, keeping the current one in force.

        The rollback floor is the committed slot's release: a health-check rollback to the
        committed release is legitimate, anything older is not.
        """
        try:
            floor = self._committed_counter()
        except TrustDatabaseError as e:
            self._emit("error", "trustdb_refused", str(e)[:500])
            raise
        try:
            db = load_active(self._slots_dir, self._keys, self._product, min_counter=floor, threshold=self._threshold)
        except TrustDatabaseError as e:
            self._emit("error", "trustdb_refused", str(e)[:500])
            raise
        if self.current is None or db != self.current:
            self.current = db
            self._emit("applied", "trustdb_loaded", f"{db.product} {db.version} counter {db.release_counter}")
        return db

    def _committed_counter(self) -> int:
        from medsec.updates.device_errors import DeviceUpdateError
        from medsec.updates.slots import DirectorySlots

        slots = DirectorySlots(self._slots_dir)
        try:
            committed = slots.state().committed
            release = slots.release(committed) if committed is not None else None
        except DeviceUpdateError as e:
            raise TrustDatabaseError(f"cannot read the slot state: {e.diagnostics()}") from e
        return release.release_counter if release is not None else 0

    def _emit(self, action: str, rule: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(ProtectionEvent(category="agent", action=action, rule=rule, detail=detail))


def check_matches_release(data: bytes, *, product: str, version: str, release_counter: int) -> TrustDB:
    """Before a prepared trust database goes into a bundle: it must be a signed envelope (signature
    checked on the device) describing exactly this release."""
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise TrustDatabaseError(f"trust database is not JSON: {e}") from e
    if not isinstance(envelope, dict) or envelope.get("payloadType") != PAYLOAD_TYPE or not envelope.get("signatures"):
        raise TrustDatabaseError("the trust database must be a signed envelope ('medsec protect trustdb build')")
    db = read_unverified(data)
    got = (db.product, db.version, db.release_counter)
    if got != (product, version, release_counter):
        raise TrustDatabaseError(
            f"trust database is for {got[0]} {got[1]} counter {got[2]}, the release is {product} {version} "
            f"counter {release_counter}"
        )
    return db
