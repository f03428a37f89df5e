"""Key ceremony files, expiry warnings, and the CLI commands end to end."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from repo_support import PASSPHRASE, PRODUCT, Ceremony, make_payload
from typer.testing import CliRunner

from medsec.cli import keys as keys_cli
from medsec.cli import release as release_cli
from medsec.errors import KeyFileError
from medsec.updates.expiry import check_expiry
from medsec.updates.keys import Pkcs11Key, load_file_signer, load_public_key, require_pkcs11
from medsec.updates.repository import ImageRepository

pytestmark = pytest.mark.req("SM-6")


def test_key_files_are_private_encrypted_and_exported(ceremony: Ceremony) -> None:
    offline = sorted(p.name for p in (ceremony.keys_dir / "offline").iterdir())
    assert offline == [
        "director-root-1.key", "director-root-2.key", "director-root-3.key",
        "image-root-1.key", "image-root-2.key", "image-root-3.key", "image-targets.key",
    ]  # fmt: skip
    for p in [*(ceremony.keys_dir / "offline").iterdir(), *(ceremony.keys_dir / "online").iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    for p in (ceremony.keys_dir / "offline").iterdir():
        assert b"ENCRYPTED PRIVATE KEY" in p.read_bytes()
        with pytest.raises(KeyFileError):
            load_file_signer(p, b"wrong")
    for p in (ceremony.keys_dir / "online").iterdir():
        assert b"BEGIN PRIVATE KEY" in p.read_bytes()
    pub = load_public_key(ceremony.keys_dir / "public" / "image-targets.pub.json")
    assert pub.keyid == ceremony.targets.public_key.keyid
    assert ceremony.keyset.image["root"].threshold == 2 and len(ceremony.keyset.image["root"].keys) == 3


def test_pkcs11_backend_is_optional_with_a_clear_error(ceremony: Ceremony) -> None:
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        with pytest.raises(KeyFileError, match="python-pkcs11"):
            require_pkcs11()
        with pytest.raises(KeyFileError, match="python-pkcs11"):
            Pkcs11Key("hsm:2", ceremony.targets.public_key, lambda _s: "1234").signer()
    else:
        pytest.skip("python-pkcs11 is installed; the missing-module path cannot be shown")


def test_expiry_warnings(repo: ImageRepository) -> None:
    now = datetime.now(UTC)
    assert check_expiry(repo, now) == []
    soon = check_expiry(repo, now + timedelta(days=80))
    roles = {w.role for w in soon}
    assert {"targets", "bins-0", "snapshot", "timestamp"} <= roles and "root" not in roles
    assert {w.action for w in soon if w.role == "targets"} == {"offline-resign"}
    assert {w.action for w in soon if w.role == "timestamp"} == {"auto-resign"}
    late = check_expiry(repo, now + timedelta(days=310))
    assert any(w.role == "root" and not w.expired for w in late)
    assert all(w.expired for w in late if w.role == "targets")


def test_refresh_resigns_only_what_is_due(repo: ImageRepository, ceremony: Ceremony) -> None:
    now = datetime.now(UTC)
    assert repo.refresh(ceremony.online, now).timestamp_version is None
    r = repo.refresh(ceremony.online, now + timedelta(hours=13))
    assert r.snapshot_version is None and r.timestamp_version == 2
    r = repo.refresh(ceremony.online, now + timedelta(days=5))
    assert r.snapshot_version == 2 and r.timestamp_version == 3


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(keys_cli.app, name="keys")
    app.add_typer(release_cli.app, name="release")
    app.add_typer(release_cli.repo_app, name="repo")
    return app


@pytest.mark.req("SM-1")
def test_cli_ceremony_build_sign_publish(tmp_path: Path) -> None:
    runner = CliRunner()
    app = _app()
    secret = tmp_path / "pass.txt"
    secret.write_text(PASSPHRASE.decode() + "\n")
    keys, repo = tmp_path / "keys", tmp_path / "repo"

    def run(*args: str) -> dict[str, object]:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        out: dict[str, object] = json.loads(result.stdout)
        return out

    run("keys", "init", "--dir", str(keys), "--passphrase-file", str(secret), "--root-keys", "2")
    run(
        "repo", "init", "--repo", str(repo), "--product", PRODUCT, "--keys", str(keys), "--passphrase-file", str(secret)
    )
    bundle = tmp_path / "release.tar"
    built = run(
        "release", "build", str(make_payload(tmp_path / "payload")), "--product", PRODUCT, "--version", "2.0.0",
        "--counter", "3", "--hardware-id", "ic300-rev-b", "--out", str(bundle), "--notes-en", "n", "--notes-ja", "ノ",
    )  # fmt: skip
    assert built["target"] == "infusion-pump/2.0.0/release.tar"
    key = str(keys / "offline" / "image-targets.key")
    signed = run(
        "release", "sign", "--repo", str(repo), "--bundle", str(bundle), "--key", key, "--passphrase-file", str(secret)
    )
    assert str(signed["bin"]).startswith("bins-")
    published = run(
        "release", "publish", "--repo", str(repo), "--bundle", str(bundle), "--online-keys", str(keys / "online")
    )
    assert published["snapshot_version"] == 2
    assert (
        run(
            "repo",
            "refresh",
            "--repo",
            str(repo),
            "--product",
            PRODUCT,
            "--online-keys",
            str(keys / "online"),
            "--force",
        )["snapshot_version"]
        == 3
    )
    assert run("repo", "check-expiry", "--repo", str(repo), "--product", PRODUCT)["warnings"] == []

    again = runner.invoke(app, ["release", "sign", "--repo", str(repo), "--bundle", str(bundle), "--key", key,
                                "--passphrase-file", str(secret), "--json"])  # fmt: skip
    assert again.exit_code == 1
    assert json.loads(again.stdout)["error"] == "ReleaseError"

    new_key = tmp_path / "image-root-9.key"
    run("keys", "new", "--out", str(new_key), "--passphrase-file", str(secret))
    root1, root2 = str(keys / "offline" / "image-root-1.key"), str(keys / "offline" / "image-root-2.key")
    rotated = run(
        "keys", "rotate-root", "--repo", str(repo), "--product", PRODUCT, "--old-key", root1, "--old-key", root2,
        "--new-key", root1, "--new-key", str(new_key),
        "--passphrase-file", str(secret),
    )  # fmt: skip
    assert rotated["root_version"] == 2

    ts_key = tmp_path / "image-timestamp-2.key"
    run("keys", "new", "--out", str(ts_key), "--insecure-no-passphrase")
    old_ts = load_public_key(keys / "public" / "image-timestamp.pub.json").keyid
    revoked = run(
        "keys", "revoke", "--repo", str(repo), "--product", PRODUCT, "--role", "timestamp", "--keyid", old_ts,
        "--new-key", str(ts_key), "--root-key", str(keys / "offline" / "image-root-1.key"), "--root-key", str(new_key),
        "--passphrase-file", str(secret),
    )  # fmt: skip
    assert revoked == {"ok": True, "root_version": 3, "resigned": ["timestamp"]}


def test_cli_refuses_to_overwrite_a_key_set(tmp_path: Path, ceremony: Ceremony) -> None:
    result = CliRunner().invoke(
        _app(), ["keys", "init", "--dir", str(ceremony.keys_dir), "--insecure-no-passphrase", "--json"]
    )
    assert result.exit_code == 1
    assert "refusing to overwrite" in json.loads(result.stdout)["detail"]
