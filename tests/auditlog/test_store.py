"""The file-backed log: durability, group commit, crash recovery and tamper detection."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medsec.auditlog import merkle
from medsec.auditlog.checkpoint import verify_checkpoint
from medsec.auditlog.note import NoteSigner
from medsec.auditlog.store import (
    CHECKPOINT_FILE,
    ENTRIES_FILE,
    INDEX_FILE,
    STATE_FILE,
    TREE_FILE,
    FileLog,
    encode_record,
    tree_node_count,
)
from medsec.crypto.canonical import canonical_json
from medsec.crypto.keys import SigningKey
from medsec.errors import CanonicalEncodingError, LogStoreError

pytestmark = pytest.mark.req("RA-2")

ORIGIN = "medsec-device/SN-1"
SEED = bytes(range(32))


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, SigningKey.from_seed(SEED))


def fill(log: FileLog, n: int, start: int = 0) -> None:
    log.append_many([{"event": "test", "n": i} for i in range(start, start + n)])


def record_offset(directory: Path, index: int) -> int:
    with open(directory / INDEX_FILE, "rb") as f:
        f.seek(index * 8)
        return int(struct.unpack(">Q", f.read(8))[0])


def test_append_read_and_prove(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        assert log.append({"event": "first"}) == 0
        assert log.append_many([{"n": 1}, {"n": 2}]) == [1, 2]
        assert log.append_many([]) == []
        assert log.size == 3
        assert log.entry(1) == {"n": 1}
        assert log.entry_bytes(2) == b'{"n":2}'
        reference = merkle.MemoryNodes.from_entries([b'{"event":"first"}', b'{"n":1}', b'{"n":2}'])
        assert log.root() == reference.root()
        for i in range(3):
            merkle.verify_inclusion(merkle.leaf_hash(log.entry_bytes(i)), i, 3, log.inclusion_proof(i), log.root())
        merkle.verify_consistency(1, 3, log.consistency_proof(1, 3), log.root(1), log.root(3))
        with pytest.raises(LogStoreError):
            log.entry(3)
        with pytest.raises(LogStoreError):
            log.inclusion_proof(0, 4)


def test_entries_must_have_a_canonical_form(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        with pytest.raises(CanonicalEncodingError):
            log.append({"x": 1.5})
        with pytest.raises(LogStoreError, match="larger"):
            log.append({"x": "a" * (1 << 20)})
        assert log.size == 0


def test_reopen_keeps_everything(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer, sync_interval=7) as log:
        fill(log, 100)
        note = log.checkpoint()
        root = log.root()
    with FileLog(tmp_path, ORIGIN, signer) as log:
        assert log.size == 100
        assert log.root() == root
        assert log.latest_checkpoint() == note
        assert verify_checkpoint(note, signer.vkey).size == 100
        log.verify()
        fill(log, 5, start=100)
        log.verify()


def test_tree_matches_memory_tree_at_every_size(tmp_path: Path, signer: NoteSigner) -> None:
    reference = merkle.MemoryNodes()
    with FileLog(tmp_path, ORIGIN, signer) as log:
        for i in range(70):
            log.append({"n": i})
            reference.append(canonical_json({"n": i}))
            assert log.root() == reference.root()
    assert os.path.getsize(tmp_path / TREE_FILE) == tree_node_count(70) * 32


def test_concurrent_appenders_share_commits(
    tmp_path: Path, signer: NoteSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    indexes: list[int] = []
    lock = threading.Lock()
    fsyncs = 0
    real_fdatasync = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fdatasync(fd)

    with FileLog(tmp_path, ORIGIN, signer) as log:

        def worker(t: int) -> None:
            for i in range(50):
                index = log.append({"thread": t, "i": i})
                with lock:
                    indexes.append(index)

        monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        monkeypatch.undo()
        assert sorted(indexes) == list(range(400))
        assert 0 < fsyncs <= 400
        seen = {(log.entry(i)["thread"], log.entry(i)["i"]) for i in range(400)}
        assert len(seen) == 400
        log.checkpoint()
        log.verify()


def test_second_open_is_refused(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer), pytest.raises(LogStoreError, match="another process"):
        FileLog(tmp_path, ORIGIN, signer)


def test_signer_must_be_named_for_the_origin(tmp_path: Path) -> None:
    with pytest.raises(LogStoreError, match="origin"):
        FileLog(tmp_path, ORIGIN, NoteSigner("other", SigningKey.generate()))


def test_torn_tail_is_truncated(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        fill(log, 10)
        root = log.root()
    record, _ = encode_record(b'{"event":"torn"}')
    with open(tmp_path / ENTRIES_FILE, "ab") as f:
        f.write(record[:-5])
    with open(tmp_path / TREE_FILE, "ab") as f:
        f.write(os.urandom(50))
    with open(tmp_path / INDEX_FILE, "ab") as f:
        f.write(b"\0" * 3)
    with FileLog(tmp_path, ORIGIN, signer) as log:
        assert log.size == 10
        assert log.root() == root
        log.verify()
        assert log.append({"after": "recovery"}) == 10
        log.verify()


def test_complete_records_after_the_last_sync_are_recovered(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        fill(log, 5)
    records = [encode_record(canonical_json({"late": i}))[0] for i in range(3)]
    bad, _ = encode_record(b'{"late":99}')
    with open(tmp_path / ENTRIES_FILE, "ab") as f:
        f.write(b"".join(records) + bad[:-1] + b"X")  # the fourth record's hash is wrong: torn
    with FileLog(tmp_path, ORIGIN, signer) as log:
        assert log.size == 8
        assert log.entry(7) == {"late": 2}
        log.verify()


def test_derived_files_are_rebuilt_when_the_state_is_lost(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        fill(log, 37)
        log.checkpoint()
        root = log.root()
    (tmp_path / STATE_FILE).unlink()
    (tmp_path / TREE_FILE).write_bytes(b"")
    with FileLog(tmp_path, ORIGIN, signer) as log:
        assert log.size == 37 and log.root() == root
        log.verify()


def test_flipped_byte_in_entry_is_detected(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        fill(log, 20)
        log.checkpoint()
    offset = record_offset(tmp_path, 5) + 4 + 3
    with open(tmp_path / ENTRIES_FILE, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    with FileLog(tmp_path, ORIGIN, signer) as log:
        with pytest.raises(LogStoreError, match="entry 5"):
            log.verify()
        with pytest.raises(LogStoreError, match="entry 5"):
            log.entry(5)


def test_entry_rewritten_with_a_matching_record_hash_is_detected(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        log.append_many([{"n": i} for i in range(10)])
        log.checkpoint()
    offset = record_offset(tmp_path, 3)
    forged, _ = encode_record(b'{"n":9}')  # same length as the original '{"n":3}'
    with open(tmp_path / ENTRIES_FILE, "r+b") as f:
        f.seek(offset)
        f.write(forged)
    with FileLog(tmp_path, ORIGIN, signer) as log, pytest.raises(LogStoreError, match=r"tree node .* entry 3"):
        log.verify()


def test_rebuilt_tree_with_a_changed_entry_is_detected(tmp_path: Path, signer: NoteSigner) -> None:
    """An attacker without the key rebuilds every file; the signed checkpoint still catches it."""
    with FileLog(tmp_path / "real", ORIGIN, signer) as log:
        fill(log, 16)
        note = log.checkpoint()
    forger = NoteSigner(ORIGIN, SigningKey.generate())
    with FileLog(tmp_path / "forged", ORIGIN, forger) as log:
        log.append_many([{"event": "test", "n": i if i != 4 else 400} for i in range(16)])
    for name in (ENTRIES_FILE, INDEX_FILE, TREE_FILE, STATE_FILE):
        (tmp_path / "real" / name).write_bytes((tmp_path / "forged" / name).read_bytes())
    assert (tmp_path / "real" / CHECKPOINT_FILE).read_text() == note
    with pytest.raises(LogStoreError, match="does not match the signed checkpoint"):
        FileLog(tmp_path / "real", ORIGIN, signer)


def test_truncated_log_is_detected(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        fill(log, 20)
        log.checkpoint()
    cut = record_offset(tmp_path, 10)
    # Naive truncation: only the entries file.
    os.truncate(tmp_path / ENTRIES_FILE, cut)
    with pytest.raises(LogStoreError, match="entries were removed"):
        FileLog(tmp_path, ORIGIN, signer)
    # Careful truncation: every derived file made to match a 10-entry log.
    os.truncate(tmp_path / INDEX_FILE, 10 * 8)
    os.truncate(tmp_path / TREE_FILE, tree_node_count(10) * 32)
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": 1, "size": 10, "entries_bytes": cut}))
    with pytest.raises(LogStoreError, match="signed checkpoint covers 20"):
        FileLog(tmp_path, ORIGIN, signer)


def test_replaced_checkpoint_is_detected(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        fill(log, 3)
        log.checkpoint()
    note = (tmp_path / CHECKPOINT_FILE).read_text()
    (tmp_path / CHECKPOINT_FILE).write_text(note.replace("\n3\n", "\n2\n", 1))
    with pytest.raises(LogStoreError):
        FileLog(tmp_path, ORIGIN, signer).verify()


def test_cosigned_checkpoint_must_be_the_latest(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer) as log:
        fill(log, 3)
        old = log.checkpoint()
        fill(log, 1, start=3)
        new = log.checkpoint()
        with pytest.raises(LogStoreError, match="latest"):
            log.store_cosigned_checkpoint(old)
        log.store_cosigned_checkpoint(new)
        assert log.latest_checkpoint() == new


def test_closed_log_refuses_appends(tmp_path: Path, signer: NoteSigner) -> None:
    log = FileLog(tmp_path, ORIGIN, signer)
    log.close()
    log.close()
    with pytest.raises(LogStoreError, match="closed"):
        log.append({"x": 1})


def test_write_failure_stops_the_log(tmp_path: Path, signer: NoteSigner, monkeypatch: pytest.MonkeyPatch) -> None:
    log = FileLog(tmp_path, ORIGIN, signer)
    fill(log, 2)

    def failing(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(LogStoreError, match="reopen"):
        log.append({"x": 1})
    monkeypatch.undo()
    with pytest.raises(LogStoreError, match="reopen"):
        log.append({"x": 2})
    log.close()
    with FileLog(tmp_path, ORIGIN, signer) as reopened:
        assert reopened.size in (2, 3)
        reopened.verify()


CHILD = """
import sys, threading
from pathlib import Path
from medsec.auditlog import FileLog, NoteSigner
from medsec.crypto.keys import SigningKey

log = FileLog(Path(sys.argv[1]), sys.argv[2], NoteSigner(sys.argv[2], SigningKey.from_seed(bytes.fromhex(sys.argv[3]))),
              sync_interval=64)
out = threading.Lock()

def work(t):
    i = 0
    while True:
        index = log.append({"t": t, "i": i, "pad": "x" * (i % 50)})
        if i % 97 == 0:
            log.checkpoint()
        with out:
            sys.stdout.write(f"{index}\\n")
            sys.stdout.flush()
        i += 1

for t in range(4):
    threading.Thread(target=work, args=(t,), daemon=True).start()
threading.Event().wait()
"""


@pytest.mark.slow
def test_sigkill_during_appends_loses_no_acknowledged_entry(tmp_path: Path, signer: NoteSigner) -> None:
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), ORIGIN, SEED.hex()],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        acknowledged = -1
        deadline = time.monotonic() + 10
        seen = 0
        while seen < 300 + 97 * round_ and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged = max(acknowledged, int(line))
            seen += 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in proc.stdout:
            acknowledged = max(acknowledged, int(line))
        proc.stdout.close()
        assert acknowledged >= 0, "the child acknowledged nothing"
        with FileLog(tmp_path, ORIGIN, signer) as log:
            assert log.size >= acknowledged + 1
            log.verify()
            note = log.latest_checkpoint()
            assert note is not None and verify_checkpoint(note, signer.vkey).size <= log.size


def test_proofs_stay_valid_while_appending(tmp_path: Path, signer: NoteSigner) -> None:
    with FileLog(tmp_path, ORIGIN, signer, sync_interval=50) as log:
        fill(log, 1)
        stop = threading.Event()
        failures: list[BaseException] = []

        def writer() -> None:
            for i in range(60):
                fill(log, 5, start=i * 5)
            stop.set()

        def reader() -> None:
            try:
                while not stop.is_set():
                    size = log.size
                    root = log.root(size)
                    index = size // 2
                    proof = log.inclusion_proof(index, size)
                    merkle.verify_inclusion(merkle.leaf_hash(log.entry_bytes(index)), index, size, proof, root)
                    if size > 1:
                        old = size // 3 + 1
                        merkle.verify_consistency(old, size, log.consistency_proof(old, size), log.root(old), root)
            except BaseException as e:
                failures.append(e)
                stop.set()

        threads = [threading.Thread(target=writer), threading.Thread(target=reader), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert log.size == 301
        log.verify()
