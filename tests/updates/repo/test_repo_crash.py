"""A process killed at any write of sign + publish leaves a repository the stock client accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from repo_support import PASSPHRASE, PRODUCT, Ceremony, StaticServer, make_bundle, updater_for

from medsec.updates.release import publish, sign_release
from medsec.updates.repository import ImageRepository

pytestmark = pytest.mark.req("SM-6")
NAME = "infusion-pump/1.1.0/release.tar"

# Kills itself (SIGKILL: no cleanup, no finally) just before the k-th rename, i.e. with the
# temp file written and fsynced but not yet in place.
_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from medsec.updates.keys import load_file_signer, load_image_online_signers
    from medsec.updates.release import publish, sign_release
    from medsec.updates.repository import ImageRepository

    repo_root, keys, bundle, kill_at, passphrase = sys.argv[1:6]
    targets = load_file_signer(Path(keys) / "offline" / "image-targets.key", passphrase.encode())
    online = load_image_online_signers(Path(keys) / "online")
    real_replace = os.replace
    calls = 0

    def replace(src, dst):
        global calls
        calls += 1
        if calls == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    os.replace = replace
    repo = ImageRepository(Path(repo_root), "infusion-pump")
    sign_release(repo, Path(bundle), targets)
    publish(repo, Path(bundle), online)
    print(calls)
    """
)


def _run(repo_root: Path, ceremony: Ceremony, bundle: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
    args = [str(repo_root), str(ceremony.keys_dir), str(bundle), str(kill_at), PASSPHRASE.decode()]
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_killed_publish_leaves_previous_metadata_intact(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "1.1.0", 7).path
    pristine = tmp_path / "pristine"
    shutil.copytree(repo.path, pristine)
    root_v1 = repo.roots.path(1).read_bytes()

    complete = _run(repo.path.parent, ceremony, bundle, kill_at=0)
    assert complete.returncode == 0, complete.stderr
    writes = int(complete.stdout)
    assert writes >= 5  # bin, targets, target file, snapshot, timestamp

    for kill_at in range(1, writes + 1):
        shutil.rmtree(repo.path)
        shutil.copytree(pristine, repo.path)
        result = _run(repo.path.parent, ceremony, bundle, kill_at)
        assert result.returncode == -9, (kill_at, result.stderr)

        # The previous state is what is served, and it verifies.
        updater = updater_for(static_server, PRODUCT, tmp_path / f"device-{kill_at}", root_v1)
        updater.refresh()
        assert updater.get_targetinfo(NAME) is None

        # Finishing the interrupted work publishes the release.
        if NAME not in repo.signed_targets():
            sign_release(repo, bundle, ceremony.targets)
        publish(repo, bundle, ceremony.online)
        updater = updater_for(static_server, PRODUCT, tmp_path / f"after-{kill_at}", root_v1)
        info = updater.get_targetinfo(NAME)
        assert info is not None
        updater.download_target(info)


def test_interrupted_create_leaves_no_repository(tmp_path: Path, ceremony: Ceremony) -> None:
    from medsec.updates.errors import KeyCeremonyError
    from medsec.updates.keys import load_file_signer

    with pytest.raises(KeyCeremonyError, match="required signatures"):
        ImageRepository.create(
            tmp_path / "repo",
            PRODUCT,
            ceremony.keyset.image,
            root_signers=ceremony.root[:1],  # below threshold: creation fails half-way
            targets_signers=[load_file_signer(ceremony.keys_dir / "offline" / "image-targets.key", PASSPHRASE)],
            online=ceremony.online,
            now=datetime.now(UTC),
        )
    assert not (tmp_path / "repo" / PRODUCT).exists()
    assert list((tmp_path / "repo").iterdir()) == []
