"""Signed updates in the demo: demo TUF keys, a repository with 1.0.0 and 1.1.0, provisioned devices.

What a manufacturer does once per product and once per device at the factory, done with
throwaway keys so a newcomer can watch a campaign:

- a TUF key set under ``<data>/update-keys/`` with **no passphrases** (labelled as demo keys);
- the image repository for ``infusion-pump`` with release 1.0.0 (counter 1) and 1.1.0
  (counter 2, notes in Japanese and English, fixed vulnerabilities, downtime, rollback);
- the online keys and the director root copied where the server reads them;
- every simulated device gets the embedded trust roots, release 1.0.0 in slot A (it really
  runs it) and an ``update`` section in ``agent.json``; ``IC300-0003`` gets a health check
  that 1.1.0 cannot pass, so it rolls back.

Everything is idempotent: a reused data directory keeps its keys, repository and slots.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write
from medsec.crypto.keys import write_private_file
from medsec.updates.client import UpdatePaths
from medsec.updates.installer import DirectoryInstaller
from medsec.updates.keys import KeySet, init_keys, load_file_signer, load_keyset
from medsec.updates.release import ReleaseInfo, build_release, publish, read_bundle, sign_release
from medsec.updates.repository import ImageRepository, OnlineSigners
from medsec.updates.slots import DirectorySlots
from medsec.updates.tuf_types import Signer

PRODUCT = "infusion-pump"
HARDWARE_ID = "ic300-rev-b"
KEYS_DIR = "update-keys"
RELEASES_DIR = "update-releases"
STATE_FILE = "demo-updates.json"
FAILING_DEVICE = "IC300-0003"
NEW_VERSION = "1.1.0"
CREATED = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)  # fixed, so rebuilding gives the same bundle bytes

UPDATE_KEYS_WARNING = """THESE ARE DEMO UPDATE KEYS.

'medsec demo' generated this TUF key set for a throwaway demonstration. The offline
keys (root, targets) have NO passphrase and sit next to the online keys, which a real
installation must never do. Never sign anything for a real device with them.
A real key ceremony is 'medsec keys init --dir KEYS' (passphrases or an HSM; see
docs/updates-format.md), with the offline keys kept offline.
"""

SELFTEST = """#!/bin/sh
# InfuCare 300 self-test: pump controller and configuration present.
test -x "$(dirname "$0")/pump-ctl" && test -r "$(dirname "$0")/../etc/pump.conf"
"""

RELEASES: tuple[dict[str, Any], ...] = (
    {
        "version": "1.0.0",
        "counter": 1,
        "min_from": None,
        "en": "First release of the InfuCare 300 firmware.",
        "ja": "InfuCare 300 ファームウェアの最初のリリースです。",
        "fixed": [],
        "downtime": 5,
    },
    {
        "version": NEW_VERSION,
        "counter": 2,
        "min_from": "1.0.0",
        "en": (
            "Fixes a crash of the dose calculator with very small infusion rates and hardens the "
            "maintenance interface (TLS 1.3 only). The pump restarts once; infusions must not be running."
        ),
        "ja": (
            "極めて低い流量で投与量計算が異常終了する不具合を修正し、保守インターフェースを強化しました"
            "（TLS 1.3 のみ）。ポンプは一度再起動します。投与中は更新しないでください。"
        ),
        "fixed": ["CVE-2025-0001", "CVE-2025-0002"],
        "downtime": 5,
    },
)


@dataclass(frozen=True)
class DemoKeys:
    dir: Path
    keyset: KeySet
    root: list[Signer]
    targets: Signer
    online: OnlineSigners


def demo_keys(folder: Path) -> DemoKeys:
    """Create (or reuse) a TUF key set without passphrases, with a DEMO README next to it."""
    keyset = load_keyset(folder) if (folder / "keyset.json").exists() else init_keys(folder, passphrase_for=_none)
    atomic_write(folder / "DEMO-KEYS-README.txt", UPDATE_KEYS_WARNING.encode())
    return DemoKeys(
        dir=folder,
        keyset=keyset,
        root=keyset.signers("image", "root", _none),
        targets=load_file_signer(folder / "offline" / "image-targets.key"),
        online=OnlineSigners(
            snapshot=load_file_signer(folder / "online" / "image-snapshot.key"),
            timestamp=load_file_signer(folder / "online" / "image-timestamp.key"),
        ),
    )


def _none(_name: str) -> None:
    return None


def install_server_keys(keys: DemoKeys, online_dir: Path, director_dir: Path) -> None:
    """What an operator does: KEYS/online and KEYS/director into the server's data folder."""
    shutil.copytree(keys.dir / "online", online_dir, dirs_exist_ok=True)
    shutil.copytree(keys.dir / "director", director_dir, dirs_exist_ok=True)


def open_repository(keys: DemoKeys, repo_dir: Path) -> ImageRepository:
    repo = ImageRepository(repo_dir, PRODUCT)
    if repo.exists():
        return repo
    return ImageRepository.create(
        repo_dir,
        PRODUCT,
        keys.keyset.image,
        root_signers=keys.root[:2],
        targets_signers=[keys.targets],
        online=keys.online,
        now=datetime.now(UTC),
    )


def write_payload(folder: Path, version: str) -> Path:
    """The firmware files of one release (a tiny stand-in for the pump's software)."""
    files = {
        "bin/pump-ctl": (f"#!/bin/sh\necho 'InfuCare 300 firmware {version}'\n", 0o755),
        "bin/selftest": (SELFTEST, 0o755),
        "etc/pump.conf": (f"firmware={version}\nmax_rate_ml_h=1200\n", 0o644),
    }
    for rel, (text, mode) in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
    return folder


def release(keys: DemoKeys, repo: ImageRepository, work: Path, spec: dict[str, Any]) -> ReleaseInfo:
    """Build, sign (offline targets key) and publish one release; reuse it if already published."""
    version = spec["version"]
    bundle = work / "bundles" / version / "release.tar"
    if bundle.is_file() and f"{PRODUCT}/{version}/release.tar" in repo.signed_targets():
        info = read_bundle(bundle)
    else:
        info = build_release(
            write_payload(work / f"payload-{version}", version),
            PRODUCT,
            version,
            spec["counter"],
            [HARDWARE_ID],
            spec["min_from"],
            spec["en"],
            spec["ja"],
            spec["fixed"],
            spec["downtime"],
            True,
            bundle,
            created=CREATED,
        )
        sign_release(repo, info.path, keys.targets)
    publish(repo, info.path, keys.online)
    return info


def provision_device(root: Path, image_root: bytes, director_root: bytes, factory: ReleaseInfo) -> None:
    """The factory step: embed both trust roots and install ``factory`` into slot A (committed)."""
    paths = UpdatePaths(root)
    for path, data in ((paths.image_root_file, image_root), (paths.director_root_file, director_root)):
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data, mode=0o644)
    installer = DirectoryInstaller(DirectorySlots(paths.slots_dir))
    installer.recover()
    if installer.installed() is not None:
        return
    installer.install(factory.path, factory.assigned_target(), "a")
    installer.switch("a")
    installer.commit()


def update_section(*, failing: bool, poll_seconds: int = 10, retry_seconds: int = 5) -> dict[str, Any]:
    """The ``update`` section of a demo device's agent.json."""
    checks: list[dict[str, Any]] = [{"type": "command", "argv": ["bin/selftest"], "timeout_seconds": 10}]
    if failing:
        # This pump's flow sensor never reports ready under 1.1.0: the health check fails, it rolls back.
        checks.append({"type": "file", "path": "run/flow-sensor-ready", "timeout_seconds": 3})
    return {
        "product": PRODUCT,
        "health_checks": checks,
        "maintenance": {"always": True},
        "clinical_use": {"flag_file": "run/in-clinical-use"},
        "max_attempts": 3,
        "poll_seconds": poll_seconds,
        "retry_seconds": retry_seconds,
    }


def _configure_agent(root: Path, section: dict[str, Any]) -> None:
    path = root / "etc/medsec/agent.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("update") == section:
        return
    config["update"] = section
    atomic_write(path, json.dumps(config, indent=2).encode() + b"\n")


def _release_token(settings: Any, data_dir: Path) -> str:
    """An API token of the release engineer (maker-release), made once and kept in demo-updates.json."""
    state_path = data_dir / STATE_FILE
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("release_token"):
            return str(state["release_token"])
    from sqlalchemy import select

    from medsec.server.context import build_context
    from medsec.server.models import User
    from medsec.server.services import accounts

    ctx = build_context(settings)
    try:
        with ctx.tx() as session:
            user = session.scalar(select(User).where(User.username == "maker-release"))
            if user is None:
                raise RuntimeError("the demo database has no user 'maker-release'")
            token, _row = accounts.create_api_token(
                session, ctx.audit, user, name="demo-updates", expires_days=366, actor="system"
            )
    finally:
        ctx.close()
    write_private_file(state_path, json.dumps({"release_token": token}, indent=2).encode() + b"\n")
    return token


def setup_demo_updates(settings: Any, info: dict[str, Any]) -> str:
    """Prepare everything for the update tour; return the instructions to print."""
    data_dir: Path = settings.data_dir
    keys = demo_keys(data_dir / KEYS_DIR)
    install_server_keys(keys, settings.tuf_online_keys_dir, settings.director_root_dir)
    repo = open_repository(keys, settings.repo_dir)
    work = data_dir / RELEASES_DIR
    published = [release(keys, repo, work, spec) for spec in RELEASES]
    image_root = (repo.metadata_dir / "1.root.json").read_bytes()
    director_root = (keys.dir / "director" / "1.root.json").read_bytes()
    for device in info["devices"]:
        root = Path(device["root"])
        provision_device(root, image_root, director_root, published[0])
        _configure_agent(root, update_section(failing=device["serial"] == FAILING_DEVICE))
    return campaign_instructions(info["url"], _release_token(settings, data_dir), info["api_token"])


def campaign_instructions(url: str, release_token: str, admin_token: str) -> str:
    return f"""Signed updates: release {NEW_VERSION} of {PRODUCT} is published (demo TUF keys, no passphrases).
Start a campaign: maker-release creates it, maker-admin approves and starts it (two people):
  .venv/bin/medsec campaign create --server {url} --token {release_token} \\
      --name "InfuCare 300 {NEW_VERSION}" --product {PRODUCT} --version {NEW_VERSION} --error-threshold 50
  .venv/bin/medsec campaign approve --server {url} --token {admin_token} ID
  .venv/bin/medsec campaign start --server {url} --token {admin_token} ID
  .venv/bin/medsec campaign status --server {url} --token {admin_token} ID
(ID is the number 'campaign create' prints; or use the portal's Campaigns page as maker-release, then maker-admin.)
IC300-0001 and IC300-0002 commit {NEW_VERSION}; IC300-0003 fails its health check and rolls back to 1.0.0.
Hospitals see the outcomes and the release notes in the portal (a-responsible, b-responsible)."""
