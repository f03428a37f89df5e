from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from medsec.advisories.csaf import build_security_advisory, build_vex
from medsec.advisories.errors import AdvisoryIntegrityError, AdvisorySignatureError, PublicationError
from medsec.advisories.model import Revision
from medsec.advisories.openpgp import GpgSigner, PsirtKey, generate_psirt_key, verify_detached
from medsec.advisories.provider import ProviderConfig, ProviderTree, verify_published, verify_sha512
from medsec.errors import SignatureError

from .conftest import PUBLISHER, T0, T1, document, not_affected_xz

pytestmark = pytest.mark.req("SM-2")

NOW = dt.datetime(2025, 4, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def psirt_key() -> PsirtKey:
    return generate_psirt_key("Example Medical PSIRT <psirt@example-medical.jp>")


@pytest.fixture(scope="session")
def other_key() -> PsirtKey:
    return generate_psirt_key("Mallory <mallory@example.org>")


@pytest.fixture
def tree(tmp_path: Path) -> ProviderTree:
    return ProviderTree(tmp_path / "www", ProviderConfig("https://psirt.example-medical.jp", PUBLISHER, rolie=True))


def _publish(tree: ProviderTree, key: PsirtKey, *docs):
    with GpgSigner(key) as signer:
        return [tree.publish(d, signer, now=NOW) for d in docs]


def test_trusted_provider_layout(tree: ProviderTree, psirt_key: PsirtKey, schema_errors) -> None:
    advisory = build_security_advisory(document("en"))
    vex = build_vex(document("ja", tracking_id="EXMED-VEX-2025-0002", vulns=(not_affected_xz(),)))
    published = _publish(tree, psirt_key, advisory, vex)
    assert [p.path for p in published] == ["2025/exmed-2025-0001.json", "2025/exmed-vex-2025-0002.json"]
    assert published[0].url == "https://psirt.example-medical.jp/.well-known/csaf/white/2025/exmed-2025-0001.json"
    csaf = tree.root / ".well-known" / "csaf"
    metadata = json.loads((csaf / "provider-metadata.json").read_bytes())
    assert schema_errors(metadata, "provider_json_schema.json") == []
    assert metadata["role"] == "csaf_trusted_provider"
    assert metadata["canonical_url"] == "https://psirt.example-medical.jp/.well-known/csaf/provider-metadata.json"
    assert metadata["public_openpgp_keys"][0]["fingerprint"] == psirt_key.fingerprint
    assert (csaf / "openpgp" / f"{psirt_key.fingerprint}.asc").read_bytes() == psirt_key.public_key
    white = csaf / "white"
    assert (white / "index.txt").read_text() == "2025/exmed-2025-0001.json\n2025/exmed-vex-2025-0002.json\n"
    sha = (white / "2025" / "exmed-2025-0001.json.sha512").read_text()
    data = (white / "2025" / "exmed-2025-0001.json").read_bytes()
    assert sha == f"{hashlib.sha512(data).hexdigest()}  exmed-2025-0001.json\n"
    for p in published:
        doc = verify_published(white / p.path, psirt_key.public_key, psirt_key.fingerprint)
        assert schema_errors(doc) == []
    feed = json.loads((white / "csaf-feed-tlp-white.json").read_bytes())["feed"]
    assert {e["id"] for e in feed["entry"]} == {"EXMED-2025-0001", "EXMED-VEX-2025-0002"}
    assert {link["rel"] for link in feed["entry"][0]["link"]} == {"self", "hash", "signature"}


def test_new_revision_updates_changes_csv_and_hashes(tree: ProviderTree, psirt_key: PsirtKey) -> None:
    first = build_security_advisory(document("en"))
    other = build_vex(document("en", tracking_id="EXMED-VEX-2025-0002", vulns=(not_affected_xz(),)))
    (v1, _) = _publish(tree, psirt_key, first, other)
    revised = build_security_advisory(
        document(
            "en",
            revisions=(
                Revision("1", T0, "Initial release"),
                Revision("2", T1 + dt.timedelta(days=1), "Add mitigation"),
            ),
        )
    )
    (v2,) = _publish(tree, psirt_key, revised)
    assert v2.path == v1.path and v2.sha512 != v1.sha512 and v2.version == "2"
    rows = list(csv.reader(io.StringIO((tree.white / "changes.csv").read_text())))
    assert rows == [
        ["2025/exmed-2025-0001.json", "2025-04-02T09:00:00.000Z"],
        ["2025/exmed-vex-2025-0002.json", "2025-03-03T09:00:00.000Z"],
    ]
    assert (
        (tree.white / "changes.csv").read_text().startswith('"2025/exmed-2025-0001.json","2025-04-02T09:00:00.000Z"\n')
    )
    assert verify_sha512(tree.white / v2.path) == v2.sha512
    verify_published(tree.white / v2.path, psirt_key.public_key, psirt_key.fingerprint)


def test_republishing_the_same_version_is_idempotent_but_changes_need_a_new_revision(
    tree: ProviderTree, psirt_key: PsirtKey
) -> None:
    doc = build_security_advisory(document("en"))
    _publish(tree, psirt_key, doc)
    _publish(tree, psirt_key, doc)
    changed = build_security_advisory(document("en", title="Changed title"))
    with pytest.raises(PublicationError, match="not newer"):
        _publish(tree, psirt_key, changed)


def test_rollback_to_an_older_revision_is_refused(tree: ProviderTree, psirt_key: PsirtKey) -> None:
    revised = build_security_advisory(
        document("en", revisions=(Revision("1", T0, "Initial release"), Revision("2", T1, "Add mitigation")))
    )
    _publish(tree, psirt_key, revised)
    with pytest.raises(PublicationError):
        _publish(tree, psirt_key, build_security_advisory(document("en")))


def test_tampered_advisory_fails_its_sha512(tree: ProviderTree, psirt_key: PsirtKey) -> None:
    (p,) = _publish(tree, psirt_key, build_vex(document("en", vulns=(not_affected_xz(),))))
    path = tree.white / p.path
    path.write_bytes(path.read_bytes().replace(b"known_not_affected", b"known_affected"))
    with pytest.raises(AdvisoryIntegrityError):
        verify_published(path, psirt_key.public_key, psirt_key.fingerprint)


def test_tampered_advisory_with_recomputed_hash_fails_its_signature(tree: ProviderTree, psirt_key: PsirtKey) -> None:
    (p,) = _publish(tree, psirt_key, build_vex(document("en", vulns=(not_affected_xz(),))))
    path = tree.white / p.path
    forged = path.read_bytes().replace(b"known_not_affected", b"known_affected")
    path.write_bytes(forged)
    path.with_name(path.name + ".sha512").write_text(f"{hashlib.sha512(forged).hexdigest()}  {path.name}\n")
    verify_sha512(path)
    with pytest.raises(AdvisorySignatureError):
        verify_published(path, psirt_key.public_key, psirt_key.fingerprint)


def test_signature_by_another_key_is_refused(tree: ProviderTree, psirt_key: PsirtKey, other_key: PsirtKey) -> None:
    (p,) = _publish(tree, other_key, build_security_advisory(document("en")))
    with pytest.raises(SignatureError):
        verify_published(tree.white / p.path, psirt_key.public_key, psirt_key.fingerprint)
    # Even with the attacker's public key offered, the expected fingerprint must match.
    with pytest.raises(AdvisorySignatureError):
        verify_published(tree.white / p.path, other_key.public_key, psirt_key.fingerprint)


def test_cisa_signature_is_not_accepted_for_our_key(psirt_key: PsirtKey) -> None:
    path = Path(__file__).parent.parent / "data" / "csaf" / "cisa-icsma" / "icsma-24-163-01.json"
    with pytest.raises(AdvisorySignatureError):
        verify_detached(
            path.read_bytes(),
            path.with_name(path.name + ".asc").read_bytes(),
            psirt_key.public_key,
            psirt_key.fingerprint,
        )


def test_non_white_documents_stay_off_the_public_tree(tree: ProviderTree, psirt_key: PsirtKey) -> None:
    amber = build_security_advisory(dataclasses.replace(document("en"), tlp="AMBER"))
    with pytest.raises(PublicationError, match="TLP:AMBER"):
        _publish(tree, psirt_key, amber)
    assert not (tree.white / "index.txt").exists()


def test_signing_uses_a_private_keyring_that_is_removed(psirt_key: PsirtKey, monkeypatch) -> None:
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))  # room for the agent's sockets
    try:
        monkeypatch.setenv("TMPDIR", str(short))
        monkeypatch.setattr(tempfile, "tempdir", None)
        with GpgSigner(psirt_key) as signer:
            homes = list(short.glob("medsec-gpg-*"))
            assert len(homes) == 1 and (homes[0].stat().st_mode & 0o777) == 0o700
            signer.sign_detached(b"x")
        assert list(short.glob("medsec-gpg-*")) == []
    finally:
        shutil.rmtree(short)


def test_signing_works_under_a_temp_folder_too_deep_for_agent_sockets(
    tmp_path: Path, psirt_key: PsirtKey, monkeypatch
) -> None:
    import tempfile

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with GpgSigner(psirt_key) as signer:
        assert list(deep.glob("medsec-gpg-*")) == []  # the keyring went to a shorter folder
        home = signer._home  # where this signer's private keyring is
        assert home is not None and (home.stat().st_mode & 0o777) == 0o700
        assert b"BEGIN PGP SIGNATURE" in signer.sign_detached(b"x")
    assert not home.exists()


def test_base_url_must_be_https() -> None:
    with pytest.raises(PublicationError):
        ProviderConfig("http://psirt.example-medical.jp", PUBLISHER)
