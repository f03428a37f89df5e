"""Release bundles: deterministic bytes, the contract's layout, an SBOM that validates, checks on read."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from repo_support import CREATED, PRODUCT, make_payload

from medsec.crypto.canonical import canonical_json
from medsec.errors import UserInputError
from medsec.updates.errors import ReleaseError
from medsec.updates.release import build_release, read_bundle

pytestmark = pytest.mark.req("SM-1")


def _build(payload: Path, out: Path, **kw: object) -> bytes:
    build_release(
        payload,
        PRODUCT,
        "1.1.0",
        7,
        ["ic300-rev-b"],
        "1.0.0",
        "notes",
        "ノート",
        ["CVE-2025-0001"],
        5,
        True,
        out,
        created=CREATED,
        **kw,  # type: ignore[arg-type]
    )
    return out.read_bytes()


def test_same_input_gives_the_same_bytes(tmp_path: Path) -> None:
    a = make_payload(tmp_path / "a")
    b = make_payload(tmp_path / "b")
    (b / "etc" / "pump.conf").touch()  # different mtime, owner-independent content
    first = _build(a, tmp_path / "1.tar")
    assert _build(a, tmp_path / "2.tar") == first
    assert _build(b, tmp_path / "3.tar") == first
    (b / "etc" / "pump.conf").write_text("changed\n")
    assert _build(b, tmp_path / "4.tar") != first


def test_bundle_layout_follows_the_contract(tmp_path: Path) -> None:
    trust_db = json.dumps({"sha256": ["00" * 32]}).encode()
    data = _build(make_payload(tmp_path / "p"), tmp_path / "r.tar", trust_db_json=trust_db)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == [
            "manifest.json",
            "sbom.cdx.json",
            "trustdb.json",
            "payload/bin/pump-ctl",
            "payload/etc/pump.conf",
        ]
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {
            (0, 0, "", "", int(CREATED.timestamp()))
        }
        assert tar.getmember("payload/bin/pump-ctl").mode == 0o755
        assert tar.getmember("payload/etc/pump.conf").mode == 0o644
        raw = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    manifest = json.loads(raw)
    assert raw == canonical_json(manifest)
    assert manifest["format"] == "medsec-release/v1"
    assert manifest["created"] == "2025-04-01T09:00:00Z"
    assert manifest["trust_db"] is not None and manifest["sbom"]
    assert [p["path"] for p in manifest["payload"]] == ["bin/pump-ctl", "etc/pump.conf"]
    assert manifest["notes"] == {"en": "notes", "ja": "ノート"}
    info = read_bundle(tmp_path / "r.tar")
    assert info.target_custom()["medsec"]["release_counter"] == 7
    assert info.target_name == "infusion-pump/1.1.0/release.tar"


def test_generated_sbom_is_valid_cyclonedx_1_6(tmp_path: Path) -> None:
    _build(make_payload(tmp_path / "p"), tmp_path / "r.tar")
    with tarfile.open(tmp_path / "r.tar") as tar:
        sbom = tar.extractfile("sbom.cdx.json").read()  # type: ignore[union-attr]
    doc = json.loads(sbom)
    assert doc["specVersion"] == "1.6"
    assert {c["type"] for c in doc["components"]} == {"file"}
    assert all(c["hashes"][0]["alg"] == "SHA-256" for c in doc["components"])
    validation = pytest.importorskip("cyclonedx.validation.json")
    schema = pytest.importorskip("cyclonedx.schema")
    try:
        validator = validation.JsonStrictValidator(schema.SchemaVersion.V1_6)
        error = validator.validate_str(sbom.decode())
    except Exception as e:  # the validator needs the optional jsonschema extra
        pytest.skip(f"CycloneDX validator unavailable: {e}")
    assert error is None, error


def test_bundle_with_a_changed_member_is_refused(tmp_path: Path) -> None:
    _build(make_payload(tmp_path / "p"), tmp_path / "r.tar")
    data = bytearray((tmp_path / "r.tar").read_bytes())
    at = data.index(b"rate_limit=100")
    data[at : at + 14] = b"rate_limit=999"
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="does not match the manifest"):
        read_bundle(tmp_path / "bad.tar")


def test_symlinks_in_the_payload_are_refused(tmp_path: Path) -> None:
    payload = make_payload(tmp_path / "p")
    (payload / "bin" / "link").symlink_to("/etc/shadow")
    with pytest.raises(UserInputError, match="not a regular file"):
        _build(payload, tmp_path / "r.tar")
    assert not (tmp_path / "r.tar").exists()
