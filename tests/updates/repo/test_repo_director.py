"""Per-device director metadata: verifies with the stock client under the director root, stays small."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from repo_support import PRODUCT, Ceremony, StaticServer, make_bundle, updater_for
from tuf.api import exceptions as tuf_exc

from medsec.updates.director import DeviceMetadata, DirectorAssignment, DirectorRepository
from medsec.updates.errors import DirectorError, KeyCeremonyError
from medsec.updates.keys import director_root_history
from medsec.updates.release import publish, sign_release
from medsec.updates.repository import ImageRepository

pytestmark = pytest.mark.req("SM-6")
SERIAL = "IC300-0001"
NAME = "infusion-pump/1.1.0/release.tar"


def _director(ceremony: Ceremony) -> DirectorRepository:
    s = ceremony.director_online
    root = director_root_history(ceremony.keys_dir).latest()
    return DirectorRepository(root, targets=s["targets"], snapshot=s["snapshot"], timestamp=s["timestamp"])


def _serve(server: StaticServer, director: DirectorRepository, md: DeviceMetadata) -> None:
    folder = server.root / "director" / md.serial / "metadata"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{director.root_version}.root.json").write_bytes(director.root_bytes)
    for name, data in md.files().items():
        (folder / name).write_bytes(data)


def _assignment(repo: ImageRepository, ceremony: Ceremony, tmp_path: Path) -> DirectorAssignment:
    bundle = make_bundle(tmp_path, "1.1.0", 7)
    sign_release(repo, bundle.path, ceremony.targets)
    publish(repo, bundle.path, ceremony.online)
    image_target = repo.published_targets()[NAME]
    return DirectorAssignment.from_image_target(
        image_target, serial=SERIAL, hardware_id="ic300-rev-b", campaign="c-12", install_window={"tz": "Asia/Tokyo"}
    )


def test_director_metadata_verifies_with_the_stock_client(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    director = _director(ceremony)
    assignment = _assignment(repo, ceremony, tmp_path)
    md = director.device_metadata(SERIAL, assignment, 1, datetime.now(UTC))
    assert md.size <= 4096
    _serve(static_server, director, md)

    updater = updater_for(static_server, SERIAL, tmp_path / "device", director.root_bytes, director=True)
    info = updater.get_targetinfo(NAME)
    assert info is not None
    image = repo.published_targets()[NAME]
    assert (info.length, info.hashes) == (image.length, image.hashes)
    assert info.custom["medsec_director"] == {
        "serial": SERIAL,
        "hardware_id": "ic300-rev-b",
        "release_counter": 7,
        "campaign": "c-12",
        "install_window": {"tz": "Asia/Tokyo"},
    }
    assert PRODUCT in info.path


def test_next_version_without_assignment_replaces_the_old_one(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    director = _director(ceremony)
    now = datetime.now(UTC)
    _serve(static_server, director, director.device_metadata(SERIAL, _assignment(repo, ceremony, tmp_path), 1, now))
    client = tmp_path / "device"
    assert updater_for(static_server, SERIAL, client, director.root_bytes, director=True).get_targetinfo(NAME)
    _serve(static_server, director, director.device_metadata(SERIAL, None, 2, now))
    assert updater_for(static_server, SERIAL, client, director.root_bytes, director=True).get_targetinfo(NAME) is None

    # Replaying version 1 to that device is a rollback.
    _serve(static_server, director, director.device_metadata(SERIAL, None, 1, now))
    with pytest.raises(tuf_exc.BadVersionNumberError):
        updater_for(static_server, SERIAL, client, director.root_bytes, director=True).refresh()


def test_director_metadata_signed_by_another_key_is_refused(
    ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    director = _director(ceremony)
    md = director.device_metadata(SERIAL, None, 1, datetime.now(UTC))
    image_online = ceremony.online
    s = ceremony.director_online
    root = director.root
    with pytest.raises(KeyCeremonyError):
        DirectorRepository(root, targets=s["targets"], snapshot=image_online.snapshot, timestamp=s["timestamp"])
    forged = bytearray(md.targets)
    forged[forged.index(b'"version":1') + 10] = ord("7")
    _serve(static_server, director, md)
    (static_server.root / "director" / SERIAL / "metadata" / "targets.json").write_bytes(bytes(forged))
    with pytest.raises(tuf_exc.RepositoryError):
        updater_for(static_server, SERIAL, tmp_path / "d", director.root_bytes, director=True).refresh()


def test_assignment_must_match_device_and_hardware(repo: ImageRepository, ceremony: Ceremony, tmp_path: Path) -> None:
    director = _director(ceremony)
    assignment = _assignment(repo, ceremony, tmp_path)
    with pytest.raises(DirectorError, match="not 'IC300-0002'"):
        director.device_metadata("IC300-0002", assignment, 1, datetime.now(UTC))
    with pytest.raises(DirectorError, match="not built for hardware"):
        DirectorAssignment.from_image_target(
            repo.published_targets()[NAME], serial=SERIAL, hardware_id="ic200", campaign="c-1"
        )
    with pytest.raises(DirectorError, match="control characters"):
        director.device_metadata("IC300\n0001", None, 1, datetime.now(UTC))
