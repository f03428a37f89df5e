"""A durable, crash-safe, file-backed Merkle log (the device agent's access log).

Files in the log directory::

    entries.dat      append-only records: u32 length (big-endian) || canonical JSON || SHA-256(0x00 || JSON)
    entries.idx      append-only u64 (big-endian) start offset of each record
    tree.hashes      append-only 32-byte perfect-subtree hashes in post-order: leaf i, then every
                     node it completes (RFC 9162 2.1.1 subtrees), so node (level, index) is at a
                     position computed from its last leaf
    tree.state       JSON {"version": 1, "size": n, "entries_bytes": b}: how much of entries.idx and
                     tree.hashes is known to be on disk (written atomically)
    checkpoint.note  the latest signed checkpoint (C2SP tlog-checkpoint), with any cosignatures
    lock             held with flock while the log is open

``entries.dat`` is the only file fsynced per append: an append is acknowledged
once its record is on disk. The index and the tree are derived from it; their
newest bytes stay in memory and are written and fsynced every
``sync_interval`` entries, on :meth:`FileLog.verify` and on close. On open they
are cut back to ``tree.state`` and rebuilt from the records after it. A record that is cut
short or whose hash does not match at the end of ``entries.dat`` is a torn
write and is truncated. Anything missing below ``tree.state`` or below the
signed checkpoint is damage, not a crash, and raises LogStoreError.

Appends use group commit: concurrent appenders queue their records and one of
them writes and fsyncs the whole queue for all.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write, fsync_dir
from medsec.auditlog import merkle
from medsec.auditlog.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from medsec.auditlog.export import build_export
from medsec.auditlog.note import NoteSigner
from medsec.crypto.canonical import canonical_json
from medsec.errors import AuditLogError, LogStoreError

logger = logging.getLogger(__name__)

MAX_ENTRY_BYTES = 1 << 20
_LEN = struct.Struct(">I")
_OFFSET = struct.Struct(">Q")
_H = merkle.HASH_SIZE

ENTRIES_FILE = "entries.dat"
INDEX_FILE = "entries.idx"
TREE_FILE = "tree.hashes"
STATE_FILE = "tree.state"
CHECKPOINT_FILE = "checkpoint.note"
LOCK_FILE = "lock"


def tree_node_count(size: int) -> int:
    """Number of perfect-subtree nodes of a tree of ``size`` leaves (2n - popcount(n))."""
    return 2 * size - size.bit_count()


def tree_node_position(level: int, index: int) -> int:
    """Post-order position of node (level, index): right after its last leaf and the nodes below it."""
    last_leaf = ((index + 1) << level) - 1
    return tree_node_count(last_leaf) + level


def encode_record(payload: bytes) -> tuple[bytes, bytes]:
    """The entries.dat record of ``payload`` and its leaf hash."""
    h = merkle.leaf_hash(payload)
    return _LEN.pack(len(payload)) + payload + h, h


class _Frontier:
    """The right edge of the tree: the perfect subtrees whose sizes add up to the tree size."""

    def __init__(self, nodes: dict[int, bytes]) -> None:
        self.nodes = nodes

    def node(self, level: int, index: int) -> bytes:
        return self.nodes[level]

    def push(self, size: int, new_leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        created = merkle.nodes_for_append(self, size, new_leaf_hash)
        top = created[-1][0]
        for level in range(top):
            self.nodes.pop(level, None)
        self.nodes[top] = created[-1][2]
        return created

    def root(self) -> bytes:
        result: bytes | None = None
        for level in sorted(self.nodes):
            result = self.nodes[level] if result is None else merkle.node_hash(self.nodes[level], result)
        return merkle.EMPTY_ROOT if result is None else result


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pread_exact(fd: int, size: int, offset: int, what: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise LogStoreError(f"{what} is cut short at byte {offset}")
    return data


class FileLog:
    """An append-only log of JSON entries with RFC 9162 proofs and signed checkpoints.

    It is also a :class:`~medsec.auditlog.merkle.NodeReader` over its own tree.
    """

    def __init__(
        self,
        directory: Path,
        origin: str,
        signer: NoteSigner,
        *,
        sync_interval: int = 4096,
    ) -> None:
        if signer.name != origin:
            raise LogStoreError(f"the log key is named {signer.name!r}; it must be the origin {origin!r}")
        self.directory = Path(directory)
        self.origin = origin
        self.signer = signer
        self._sync_interval = max(1, sync_interval)
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[tuple[bytes, bytes]] = []
        self._flushing = False
        self._failure: BaseException | None = None
        self._closed = False
        self._checkpoint_lock = threading.Lock()
        self._tail_lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise LogStoreError(f"log {self.directory} is open in another process") from e
            raise LogStoreError(f"cannot lock log {self.directory}: {e.strerror}") from e
        self._fds: list[int] = []
        try:
            self._entries_fd = self._open(ENTRIES_FILE)
            self._index_fd = self._open(INDEX_FILE)
            self._tree_fd = self._open(TREE_FILE)
            fsync_dir(self.directory)
            self._recover()
        except BaseException:
            self._close_fds()
            raise

    # -- opening and recovery -------------------------------------------------

    def _open(self, name: str) -> int:
        try:
            fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise LogStoreError(f"cannot open {self.directory / name}: {e.strerror}") from e
        self._fds.append(fd)
        return fd

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        os.close(self._lock_fd)

    def _read_state(self) -> tuple[int, int]:
        path = self.directory / STATE_FILE
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError) as e:
            raise LogStoreError(f"{path} is unreadable: {e}") from e
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise LogStoreError(f"{path} has an unknown format")
        size, end = doc.get("size"), doc.get("entries_bytes")
        if not isinstance(size, int) or not isinstance(end, int) or size < 0 or end < 0:
            raise LogStoreError(f"{path} is damaged")
        return size, end

    def _recover(self) -> None:
        size, end = self._read_state()
        entries_len = os.fstat(self._entries_fd).st_size
        if entries_len < end or os.fstat(self._index_fd).st_size < size * _OFFSET.size:
            raise LogStoreError(f"log {self.directory} is shorter than its recorded state: entries were removed")
        if os.fstat(self._tree_fd).st_size < tree_node_count(size) * _H:
            raise LogStoreError(f"log {self.directory}: the tree file is shorter than its recorded state")
        if size:
            last = _OFFSET.unpack(_pread_exact(self._index_fd, _OFFSET.size, (size - 1) * _OFFSET.size, "index"))[0]
            length = _LEN.unpack(_pread_exact(self._entries_fd, _LEN.size, last, "entries file"))[0]
            if last + _LEN.size + length + _H != end:
                raise LogStoreError(f"log {self.directory}: index and entries file disagree")
        # The derived files past the recorded state may hold anything a crash left; rebuild them.
        os.ftruncate(self._index_fd, size * _OFFSET.size)
        os.ftruncate(self._tree_fd, tree_node_count(size) * _H)
        self._size = size
        self._next_index = size
        self._entries_end = end
        self._synced_size = size
        # Index and tree bytes not yet written to their files; they reach the disk with tree.state.
        self._tree_tail = bytearray()
        self._index_tail = bytearray()
        self._tree_file_bytes = tree_node_count(size) * _H
        self._index_file_bytes = size * _OFFSET.size
        self._frontier = _Frontier({level: self.node(level, (size >> level) - 1) for level in _bits(size)})
        tail = self._scan_tail(end, entries_len)
        if tail:
            os.fsync(self._entries_fd)  # they were never acknowledged; they are now
            self._apply(tail)
            # New appends are numbered after the rebuilt entries, not over them.
            self._next_index = self._size
            logger.info("log %s: rebuilt %d entries after the last sync", self.directory, len(tail))
        self._sync_derived()
        self._check_stored_checkpoint()

    def _scan_tail(self, start: int, file_len: int) -> list[tuple[bytes, bytes]]:
        """Read complete, hashed records from ``start``; truncate a torn tail."""
        records: list[tuple[bytes, bytes]] = []
        pos = start
        with open(self.directory / ENTRIES_FILE, "rb") as f:
            f.seek(start)
            while pos < file_len:
                header = f.read(_LEN.size)
                if len(header) < _LEN.size:
                    break
                (length,) = _LEN.unpack(header)
                if length == 0 or length > MAX_ENTRY_BYTES:
                    break
                body = f.read(length + _H)
                if len(body) < length + _H:
                    break
                payload, stored = body[:length], body[length:]
                if merkle.leaf_hash(payload) != stored:
                    break
                records.append((header + body, stored))
                pos += _LEN.size + length + _H
        if pos < file_len:
            logger.warning(
                "log %s: dropping %d bytes of a torn write after entry %d",
                self.directory,
                file_len - pos,
                self._size + len(records),
            )
            os.ftruncate(self._entries_fd, pos)
            os.fsync(self._entries_fd)
        return records

    def _check_stored_checkpoint(self) -> None:
        note = self.latest_checkpoint()
        if note is None:
            return
        try:
            cp = verify_checkpoint(note, self.signer.verifier)
        except AuditLogError as e:
            raise LogStoreError(f"log {self.directory}: the stored checkpoint does not verify: {e}") from e
        if cp.size > self._size:
            raise LogStoreError(
                f"log {self.directory} has {self._size} entries but its signed checkpoint covers {cp.size}: "
                "entries were removed"
            )
        if merkle.root(self, cp.size) != cp.root_hash:
            raise LogStoreError(
                f"log {self.directory}: the tree does not match the signed checkpoint of size {cp.size}"
            )

    # -- appending ------------------------------------------------------------

    def append(self, entry: Mapping[str, Any]) -> int:
        """Append one entry durably and return its index."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Sequence[Mapping[str, Any]]) -> list[int]:
        """Append entries durably (one fsync shared with concurrent appenders); return their indexes."""
        records = []
        for entry in entries:
            payload = canonical_json(entry)
            if len(payload) > MAX_ENTRY_BYTES:
                raise LogStoreError(f"entry of {len(payload)} bytes is larger than {MAX_ENTRY_BYTES}")
            records.append(encode_record(payload))
        if not records:
            return []
        with self._cond:
            self._check_usable()
            first = self._next_index
            self._next_index += len(records)
            self._queue.extend(records)
            target = self._next_index
            while self._size < target:
                self._check_usable()
                if self._flushing:
                    self._cond.wait()
                    continue
                batch, self._queue = self._queue, []
                self._flushing = True
                self._cond.release()
                error: BaseException | None = None
                try:
                    self._write_batch(batch)
                except BaseException as e:
                    error = e
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    if error is not None:
                        self._failure = error  # fail-stop: the files' tail is unknown until reopened
                    self._cond.notify_all()
        return list(range(first, target))

    def _check_usable(self) -> None:
        if self._closed:
            raise LogStoreError(f"log {self.directory} is closed")
        if self._failure is not None:
            raise LogStoreError(
                f"log {self.directory} failed to write ({self._failure!r}); reopen it to recover"
            ) from self._failure

    def _write_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        """Write and fsync records (called by the one flushing thread, without the lock)."""
        _write_all(self._entries_fd, b"".join(record for record, _ in batch))
        os.fdatasync(self._entries_fd)
        self._apply(batch)
        if self._size - self._synced_size >= self._sync_interval:
            self._sync_derived()

    def _apply(self, batch: list[tuple[bytes, bytes]]) -> None:
        """Extend the index and the tree with records already in entries.dat."""
        offsets = bytearray()
        nodes = bytearray()
        pos, size = self._entries_end, self._size
        for record, h in batch:
            offsets += _OFFSET.pack(pos)
            pos += len(record)
            for _, _, node in self._frontier.push(size, h):
                nodes += node
            size += 1
        with self._tail_lock:
            self._tree_tail += nodes
            self._index_tail += offsets
        with self._cond:
            self._entries_end = pos
            self._size = size

    def _sync_derived(self) -> None:
        """Write the index and tree tails, fsync them, then record the new state (flushing thread only)."""
        with self._tail_lock:
            tree_data, index_data = bytes(self._tree_tail), bytes(self._index_tail)
        size, end = self._size, self._entries_end
        _write_all(self._tree_fd, tree_data)
        _write_all(self._index_fd, index_data)
        os.fsync(self._index_fd)
        os.fsync(self._tree_fd)
        state = {"version": 1, "size": size, "entries_bytes": end}
        atomic_write(self.directory / STATE_FILE, json.dumps(state).encode("ascii") + b"\n")
        with self._tail_lock:
            del self._tree_tail[: len(tree_data)]
            del self._index_tail[: len(index_data)]
            self._tree_file_bytes += len(tree_data)
            self._index_file_bytes += len(index_data)
        self._synced_size = size

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Keep the flushing role for work that must not overlap a batch write."""
        with self._cond:
            while self._flushing:
                self._cond.wait()
            self._flushing = True
        try:
            yield
        finally:
            with self._cond:
                self._flushing = False
                self._cond.notify_all()

    # -- reading --------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of acknowledged entries."""
        with self._cond:
            return self._size

    def node(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0:
            raise LogStoreError(f"no tree node at level {level}, index {index}")
        return self._derived(self._tree_fd, tree_node_position(level, index) * _H, _H, "tree")

    def _derived(self, fd: int, offset: int, size: int, what: str) -> bytes:
        """Read from the index or the tree: the synced file, or the tail still in memory."""
        tree = fd == self._tree_fd
        with self._tail_lock:
            file_bytes = self._tree_file_bytes if tree else self._index_file_bytes
            if offset >= file_bytes:
                tail = self._tree_tail if tree else self._index_tail
                data = bytes(tail[offset - file_bytes : offset - file_bytes + size])
                if len(data) != size:
                    raise LogStoreError(f"no {what} data at byte {offset}")
                return data
        return _pread_exact(fd, size, offset, f"{what} file")

    def root(self, size: int | None = None) -> bytes:
        """The RFC 9162 root hash of the first ``size`` entries (default: all)."""
        return merkle.root(self, self._check_size(size))

    def _check_size(self, size: int | None) -> int:
        current = self.size
        if size is None:
            return current
        if not 0 <= size <= current:
            raise LogStoreError(f"log has {current} entries, not {size}")
        return size

    def entry_bytes(self, index: int) -> bytes:
        """The canonical JSON of entry ``index``, checked against its hash in the tree."""
        size = self.size
        if not 0 <= index < size:
            raise LogStoreError(f"no entry {index}: the log has {size} entries")
        start = _OFFSET.unpack(self._derived(self._index_fd, index * _OFFSET.size, _OFFSET.size, "index"))[0]
        (length,) = _LEN.unpack(_pread_exact(self._entries_fd, _LEN.size, start, "entries file"))
        if length == 0 or length > MAX_ENTRY_BYTES:
            raise LogStoreError(f"entry {index} has a damaged length")
        body = _pread_exact(self._entries_fd, length + _H, start + _LEN.size, "entries file")
        payload = body[:length]
        h = merkle.leaf_hash(payload)
        if h != body[length:] or h != self.node(0, index):
            raise LogStoreError(f"entry {index} does not match its hash: the entry was modified")
        return payload

    def entry(self, index: int) -> dict[str, Any]:
        value = json.loads(self.entry_bytes(index))
        if not isinstance(value, dict):
            raise LogStoreError(f"entry {index} is not a JSON object")
        return value

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return merkle.inclusion_proof(self, index, self._check_size(size))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return merkle.consistency_proof(self, old_size, self._check_size(new_size))

    # -- checkpoints ----------------------------------------------------------

    def checkpoint(self) -> str:
        """Sign a checkpoint of the current tree, keep it in checkpoint.note and return it."""
        with self._checkpoint_lock:
            size = self.size
            note = sign_checkpoint(Checkpoint(self.origin, size, merkle.root(self, size)), self.signer)
            atomic_write(self.directory / CHECKPOINT_FILE, note.encode("utf-8"))
            return note

    def latest_checkpoint(self) -> str | None:
        """The last checkpoint note kept by :meth:`checkpoint` or :meth:`store_cosigned_checkpoint`."""
        try:
            return (self.directory / CHECKPOINT_FILE).read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise LogStoreError(f"cannot read {CHECKPOINT_FILE}: {e}") from e

    def store_cosigned_checkpoint(self, note: str) -> None:
        """Keep ``note`` (the latest checkpoint plus witness cosignatures) as the latest checkpoint."""
        with self._checkpoint_lock:
            cp = verify_checkpoint(note, self.signer.verifier)
            current = self.latest_checkpoint()
            if current is None or verify_checkpoint(current, self.signer.verifier) != cp:
                raise LogStoreError("a cosigned checkpoint must be the log's latest checkpoint")
            atomic_write(self.directory / CHECKPOINT_FILE, note.encode("utf-8"))

    # -- audit ----------------------------------------------------------------

    def verify(self) -> None:
        """Re-hash every entry and check the index, the tree and the signed checkpoint.

        Raises LogStoreError naming the first entry or node that does not match.
        """
        with self._exclusive():
            self._check_usable()
            self._sync_derived()  # the files must hold everything read below
        note = self.latest_checkpoint()
        try:
            cp = verify_checkpoint(note, self.signer.verifier) if note is not None else None
        except AuditLogError as e:
            raise LogStoreError(f"the stored checkpoint does not verify: {e}") from e
        size = self.size
        if cp is not None and cp.size > size:
            raise LogStoreError(
                f"log has {size} entries but its signed checkpoint covers {cp.size}: entries were removed"
            )
        frontier = _Frontier({})
        pos = 0
        with (
            open(self.directory / ENTRIES_FILE, "rb") as entries,
            open(self.directory / INDEX_FILE, "rb") as index,
            open(self.directory / TREE_FILE, "rb") as tree,
        ):
            if cp is not None and cp.size == 0 and cp.root_hash != merkle.EMPTY_ROOT:
                raise LogStoreError("the signed checkpoint of size 0 has a wrong root")
            for i in range(size):
                offset = index.read(_OFFSET.size)
                if len(offset) < _OFFSET.size or _OFFSET.unpack(offset)[0] != pos:
                    raise LogStoreError(f"index entry {i} does not point at record {i}")
                header = entries.read(_LEN.size)
                if len(header) < _LEN.size:
                    raise LogStoreError(f"entry {i} is missing: the entries file was truncated")
                (length,) = _LEN.unpack(header)
                body = entries.read(length + _H)
                if length == 0 or length > MAX_ENTRY_BYTES or len(body) != length + _H:
                    raise LogStoreError(f"entry {i} is damaged or truncated")
                h = merkle.leaf_hash(body[:length])
                if h != body[length:]:
                    raise LogStoreError(f"entry {i} does not match its stored hash: the entry was modified")
                for level, idx, node in frontier.push(i, h):
                    if tree.read(_H) != node:
                        raise LogStoreError(f"tree node (level {level}, index {idx}) does not match entry {i}")
                pos += _LEN.size + length + _H
                if cp is not None and i + 1 == cp.size and frontier.root() != cp.root_hash:
                    raise LogStoreError(f"entries 0..{i} do not hash to the signed checkpoint's root")

    # -- export and lifecycle -------------------------------------------------

    def export(self, start: int, end: int, *, previous_checkpoint: str | None = None) -> dict[str, Any]:
        """An offline-verifiable export of entries [start, end) (see medsec.auditlog.export)."""
        note = self.latest_checkpoint()
        if note is None or verify_checkpoint(note, self.signer.verifier).size < end:
            note = self.checkpoint()
        if not 0 <= start <= end:
            raise LogStoreError(f"invalid range [{start}, {end})")
        return build_export(
            reader=self,
            log_vkey=self.signer.vkey,
            checkpoint_note=note,
            entries=((i, self.entry_bytes(i)) for i in range(start, end)),
            origin=self.origin,
            previous_checkpoint_note=previous_checkpoint,
        )

    def close(self) -> None:
        with self._exclusive():
            if self._closed:
                return
            if self._failure is None:
                self._sync_derived()
            self._closed = True
            self._close_fds()

    def __enter__(self) -> FileLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bits(n: int) -> list[int]:
    return [level for level in range(n.bit_length()) if n >> level & 1]
