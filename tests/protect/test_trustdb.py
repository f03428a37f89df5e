"""The trust database: signed form, refusals, builders, lint, dry run and the CLI (RL-3, SM-6)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsec.cli.main import app
from medsec.crypto.keys import SigningKey
from medsec.protect.errors import TrustDatabaseError
from medsec.protect.events import Object, ProtectionEvent, Subject
from medsec.protect.trustdb import (
    TrustDB,
    TrustEntry,
    dry_run,
    from_release,
    learn,
    lint,
    load_trustdb,
    read_events,
    read_unverified,
)

PRODUCT = "infusion-pump"
ELF_HEADER = b"\x7fELF\x02\x01\x01" + b"\x00" * 57


def _entry(path: str, content: bytes, mode: int = 0o755, source: str = "payload") -> TrustEntry:
    return TrustEntry(path, hashlib.sha256(content).hexdigest(), len(content), mode, source)


def _db(*entries: TrustEntry, product: str = PRODUCT, counter: int = 3, version: str = "1.2.0") -> TrustDB:
    return TrustDB(product, version, counter, "2026-01-10T09:00:00Z", entries)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def _reseal_payload(data: bytes, change: dict[str, object]) -> bytes:
    """An attacker's edit of the document inside an envelope, keeping the old signature."""
    envelope = json.loads(data)
    document = json.loads(base64.b64decode(envelope["payload"]))
    document.update(change)
    envelope["payload"] = base64.b64encode(json.dumps(document).encode()).decode()
    return json.dumps(envelope).encode()


@pytest.mark.req("RL-3")
def test_signed_database_round_trips_and_answers_by_raw_digest(key: SigningKey) -> None:
    pump = _entry("/slots/current/bin/pump-ctl", b"pump")
    shell = _entry("/bin/sh", b"shell", source="os-image")
    db = load_trustdb(_db(pump, shell).seal([key]), [key.verify_key], product=PRODUCT, min_counter=3)
    assert (db.product, db.version, db.release_counter, len(db)) == (PRODUCT, "1.2.0", 3, 2)
    assert hashlib.sha256(b"pump").digest() in db
    assert hashlib.sha256(b"shell").digest() in db
    assert hashlib.sha256(b"dropped by an attacker").digest() not in db
    assert hashlib.sha256(b"pump").hexdigest() not in db  # raw bytes only, never hex text
    assert set(db.entries) == {pump, shell}


@pytest.mark.req("RL-3")
def test_unsigned_database_is_refused(key: SigningKey) -> None:
    db = _db(_entry("/bin/x", b"x"))
    envelope = json.loads(db.seal([key]))
    envelope["signatures"] = []
    with pytest.raises(TrustDatabaseError, match="unsigned"):
        load_trustdb(json.dumps(envelope).encode(), [key.verify_key], product=PRODUCT, min_counter=0)
    bare = json.dumps(db.to_document()).encode()
    with pytest.raises(TrustDatabaseError, match="unsigned"):
        load_trustdb(bare, [key.verify_key], product=PRODUCT, min_counter=0)


@pytest.mark.req("RL-3")
def test_database_signed_by_an_untrusted_key_is_refused(key: SigningKey) -> None:
    data = _db(_entry("/bin/x", b"x")).seal([SigningKey.generate()])
    with pytest.raises(TrustDatabaseError, match="not signed by a trusted key"):
        load_trustdb(data, [key.verify_key], product=PRODUCT, min_counter=0)


@pytest.mark.req("RL-3")
def test_tampered_entry_is_refused(key: SigningKey) -> None:
    data = _db(_entry("/bin/x", b"x")).seal([key])
    evil = hashlib.sha256(b"evil").hexdigest()
    tampered = _reseal_payload(
        data, {"files": {"path": ["/bin/x"], "sha256": [evil], "size": [4], "mode": [493], "source": ["payload"]}}
    )
    with pytest.raises(TrustDatabaseError, match="unsigned or not signed"):
        load_trustdb(tampered, [key.verify_key], product=PRODUCT, min_counter=0)


@pytest.mark.req("SM-6")
def test_database_for_another_product_is_refused(key: SigningKey) -> None:
    data = _db(_entry("/bin/x", b"x"), product="ventilator").seal([key])
    with pytest.raises(TrustDatabaseError, match="for product 'ventilator'"):
        load_trustdb(data, [key.verify_key], product=PRODUCT, min_counter=0)


@pytest.mark.req("SM-6")
def test_rollback_to_an_older_database_is_refused(key: SigningKey) -> None:
    data = _db(_entry("/bin/x", b"x"), counter=2).seal([key])
    with pytest.raises(TrustDatabaseError, match="rollback refused"):
        load_trustdb(data, [key.verify_key], product=PRODUCT, min_counter=3)
    assert load_trustdb(data, [key.verify_key], product=PRODUCT, min_counter=2).release_counter == 2


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("sha256", ["a" * 64, "A" * 64], r"files\.sha256\[1\] must be 64 lowercase hex"),
        ("sha256", ["a" * 64, "ab " * 21 + "a"], r"files\.sha256\[1\]"),
        ("path", ["/ok", "relative/path"], r"files\.path\[1\] must be an absolute path"),
        ("size", [1, -1], r"files\.size\[1\] must be a non-negative integer"),
        ("mode", [0o755, True], r"files\.mode\[1\] must be a permission mode"),
        ("source", ["payload", "usb-stick"], r"files\.source\[1\] must be one of"),
    ],
)
def test_malformed_column_is_refused_naming_the_row(column: str, values: list[object], message: str) -> None:
    document = _db(_entry("/a", b"a"), _entry("/b", b"b")).to_document()
    document["files"][column] = values
    with pytest.raises(TrustDatabaseError, match=message):
        read_unverified(json.dumps(document).encode())


def test_columns_of_unequal_length_are_refused() -> None:
    document = _db(_entry("/a", b"a"), _entry("/b", b"b")).to_document()
    document["files"]["mode"] = [0o755]
    with pytest.raises(TrustDatabaseError, match=r"files\.mode has 1 rows, files\.path 2"):
        read_unverified(json.dumps(document).encode())


def _tree(root: Path) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/bin/tool").write_bytes(b"binary with exec bit")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/lib/libpump.so").write_bytes(ELF_HEADER)  # ELF without an exec bit: a library
    (root / "usr/lib/libpump.so").chmod(0o644)
    (root / "usr/bin/report").write_bytes(b"#!/usr/bin/python3\nprint(1)\n")
    (root / "usr/bin/report").chmod(0o644)
    (root / "etc/pump.conf").write_text("rate=5\n")
    os.symlink("tool", root / "usr/bin/tool-link")
    return root


@pytest.mark.req("RL-3")
def test_learn_lists_exec_bit_elf_and_script_files_only(tmp_path: Path) -> None:
    root = _tree(tmp_path / "image")
    entries = learn(root)
    assert [(e.path, e.mode, e.source) for e in entries] == [
        ("/usr/bin/report", 0o644, "os-image"),
        ("/usr/bin/tool", 0o755, "os-image"),
        ("/usr/lib/libpump.so", 0o644, "os-image"),
    ]
    assert entries[1].sha256 == hashlib.sha256(b"binary with exec bit").hexdigest()


@pytest.mark.req("RL-3")
def test_release_database_combines_payload_os_image_and_pinned_updater(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    (payload / "bin").mkdir(parents=True)
    (payload / "bin/pump-ctl").write_bytes(b"#!/bin/sh\necho pump\n")
    (payload / "bin/pump-ctl").chmod(0o755)
    (payload / "README").write_text("not executable\n")
    agent = tmp_path / "medsec-agent"
    agent.write_bytes(b"the updater")
    agent.chmod(0o644)
    db = from_release(
        payload,
        product=PRODUCT,
        version="1.2.0",
        release_counter=3,
        os_image=_tree(tmp_path / "image"),
        updater={"/usr/sbin/medsec-agent": agent},
    )
    assert {(e.path, e.source) for e in db.entries} == {
        ("/slots/current/bin/pump-ctl", "payload"),
        ("/usr/bin/report", "os-image"),
        ("/usr/bin/tool", "os-image"),
        ("/usr/lib/libpump.so", "os-image"),
        ("/usr/sbin/medsec-agent", "updater"),
    }
    assert hashlib.sha256(b"the updater").digest() in db
    again = from_release(payload, product=PRODUCT, version="1.2.0", release_counter=3)
    assert (
        again.to_document() == from_release(payload, product=PRODUCT, version="1.2.0", release_counter=3).to_document()
    )


def test_lint_reports_each_problem(tmp_path: Path) -> None:
    root = _tree(tmp_path / "image")
    good = _entry("/usr/bin/tool", b"binary with exec bit")
    db = _db(
        good,
        _entry("/usr/bin/tool", b"another build"),
        _entry("/usr/bin/open-door", b"x", mode=0o777),
        _entry("/usr/bin/su-helper", b"y", mode=0o4755),
        _entry("/usr/bin/report", (root / "usr/bin/report").read_bytes(), mode=0o644),
    )
    codes = {(f.code, f.path) for f in lint(db, tree=root)}
    assert codes == {
        ("duplicate_path", "/usr/bin/tool"),
        ("world_writable", "/usr/bin/open-door"),
        ("setuid", "/usr/bin/su-helper"),
        ("interpreter_not_listed", "/usr/bin/report"),
    }
    assert [f.code for f in lint(_db())] == ["empty"]
    with_python = _db(good, _entry("/usr/bin/python3", b"py"), _entry("/usr/bin/report", b"r", mode=0o644))
    assert lint(with_python, tree=root) == []


def _event(action: str, content: bytes | None, path: str, category: str = "exec") -> ProtectionEvent:
    digest = hashlib.sha256(content).hexdigest() if content is not None else None
    return ProtectionEvent(
        category=category,
        action=action,
        rule="trustdb_hash",
        mode="monitor",
        subject=Subject(pid=10, exe="/bin/sh"),
        object=Object(path=path, sha256=digest),
    )


@pytest.mark.req("RL-3")
def test_dry_run_names_previously_allowed_executions_the_new_database_denies() -> None:
    new = _db(_entry("/usr/bin/tool", b"tool v2"), _entry("/bin/sh", b"shell"))
    events = [
        _event("allow", b"shell", "/bin/sh"),
        _event("allow", b"tool v1", "/usr/bin/tool"),
        _event("allow", b"tool v1", "/usr/bin/tool"),
        _event("allow", b"helper", "/usr/lib/helper.so", category="open"),
        _event("would_deny", b"malware", "/tmp/x"),  # never allowed: not a regression
        _event("allow", None, "/usr/bin/unknown"),
        ProtectionEvent(category="integrity", action="detected", rule="baseline_mismatch"),
    ]
    report = dry_run(new, events)
    assert (report.events_read, report.allowed_considered, report.without_hash) == (7, 5, 1)
    assert [(d.path, d.count) for d in report.would_deny] == [("/usr/bin/tool", 2), ("/usr/lib/helper.so", 1)]


def test_event_lines_with_errors_name_the_line() -> None:
    good = json.dumps(_event("allow", b"x", "/x").to_json())
    assert len(list(read_events([good, "", good]))) == 2
    with pytest.raises(TrustDatabaseError, match="events line 2: not JSON"):
        list(read_events([good, "{oops"]))
    with pytest.raises(TrustDatabaseError, match="events line 1: event category"):
        list(read_events([json.dumps({**json.loads(good), "category": "bogus"})]))


# -- CLI ----------------------------------------------------------------------------------------------


def _invoke(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.req("RL-3")
def test_cli_build_verify_lint_show_and_dry_run(tmp_path: Path, key: SigningKey) -> None:
    key_file = tmp_path / "release.key"
    key.save(key_file)
    pub = tmp_path / "release.pub"
    pub.write_text(key.verify_key.to_base64())
    payload = tmp_path / "payload"
    (payload / "bin").mkdir(parents=True)
    (payload / "bin/pump-ctl").write_bytes(b"\x7fELF pump")
    db_file = tmp_path / "trustdb.json"
    code, out = _invoke(
        "protect", "trustdb", "build", str(payload), "--product", PRODUCT, "--version", "1.2.0",
        "--counter", "3", "--key", str(key_file), "--out", str(db_file),
    )  # fmt: skip
    assert code == 0 and out["entries"] == 1
    code, out = _invoke("protect", "trustdb", "verify", str(db_file), "--product", PRODUCT, "--key", str(pub))
    assert code == 0 and out["release_counter"] == 3
    code, out = _invoke(
        "protect", "trustdb", "verify", str(db_file), "--product", PRODUCT, "--key", str(pub), "--min-counter", "4"
    )
    assert code == 1 and "rollback" in str(out["detail"])
    other = tmp_path / "other.pub"
    other.write_text(SigningKey.generate().verify_key.to_base64())
    code, out = _invoke("protect", "trustdb", "verify", str(db_file), "--product", PRODUCT, "--key", str(other))
    assert code == 1 and out["error"] == "TrustDatabaseError"
    assert _invoke("protect", "trustdb", "lint", str(db_file))[0] == 0
    code, out = _invoke("protect", "trustdb", "show", str(db_file))
    assert out["verified"] is False and out["shown"][0]["path"] == "/slots/current/bin/pump-ctl"  # type: ignore[index]
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(_event("allow", b"old pump", "/slots/current/bin/pump-ctl").to_json()) + "\n")
    code, out = _invoke("protect", "trustdb", "dry-run", str(db_file), "--events", str(events))
    assert code == 0 and out["would_deny"][0]["path"] == "/slots/current/bin/pump-ctl"  # type: ignore[index]


def test_cli_learn_writes_an_unsigned_document_that_lint_flags(tmp_path: Path) -> None:
    root = _tree(tmp_path / "image")
    (root / "usr/bin/tool").chmod(0o4755)
    out_file = tmp_path / "learned.json"
    code, out = _invoke(
        "protect", "trustdb", "learn", str(root), "--product", PRODUCT, "--version", "1.0.0", "--counter", "1",
        "--out", str(out_file),
    )  # fmt: skip
    assert code == 0 and out["signed"] is False and out["entries"] == 3
    code, out = _invoke("protect", "trustdb", "lint", str(out_file), "--tree", str(root))
    assert code == 1
    assert {f["code"] for f in out["findings"]} == {"setuid", "interpreter_not_listed"}  # type: ignore[union-attr]


def test_keys_from_the_key_ceremony_sign_and_verify(tmp_path: Path) -> None:
    from medsec.protect.trustdb import read_verify_key
    from medsec.updates.keys import generate_key_file, write_public_key

    public = generate_key_file(tmp_path / "image-targets.key", b"secret passphrase")
    write_public_key(tmp_path / "image-targets.pub.json", "image-targets", public)
    (tmp_path / "pass.txt").write_text("secret passphrase\n")
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "run").write_bytes(b"#!/bin/sh\n")
    out = tmp_path / "db.json"
    code, _ = _invoke(
        "protect", "trustdb", "build", str(payload), "--product", PRODUCT, "--version", "1.0.0", "--counter", "1",
        "--key", str(tmp_path / "image-targets.key"), "--passphrase-file", str(tmp_path / "pass.txt"),
        "--out", str(out),
    )  # fmt: skip
    assert code == 0
    verify_key = read_verify_key(tmp_path / "image-targets.pub.json")
    assert load_trustdb(out.read_bytes(), [verify_key], product=PRODUCT, min_counter=1).version == "1.0.0"
    with pytest.raises(TrustDatabaseError, match="encrypted private key"):
        read_verify_key(tmp_path / "image-targets.key")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(TrustDatabaseError, match="not a usable Ed25519 key"):
        read_verify_key(tmp_path / "junk.pub")
