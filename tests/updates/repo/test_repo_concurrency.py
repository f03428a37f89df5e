"""Several writers on one repository at once: the server's upkeep, ``medsec release publish``, another
replica sharing the folder. Each takes the repository's write lock, so no two take the same version."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

from repo_support import PRODUCT, Ceremony, StaticServer, updater_for

from medsec.updates.repository import ImageRepository, OnlineSigners

WRITERS = 4
REFRESHES = 8


def _writer(repo_root: str, online: OnlineSigners, start: multiprocessing.synchronize.Barrier) -> None:
    repo = ImageRepository(Path(repo_root), PRODUCT)
    start.wait()
    for _ in range(REFRESHES):
        repo.refresh(online, datetime.now(UTC), force=True)


def test_concurrent_writers_never_reuse_a_version(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    before = repo.timestamp().signed.version
    context = multiprocessing.get_context("fork")
    start = context.Barrier(WRITERS)
    writers = [
        context.Process(target=_writer, args=(str(repo.path.parent), ceremony.online, start)) for _ in range(WRITERS)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0] * WRITERS
    # Every forced refresh published one snapshot and one timestamp, each with a version of its own.
    assert repo.timestamp().signed.version == before + WRITERS * REFRESHES
    snapshots = repo.on_disk_versions("snapshot")
    assert snapshots == list(range(snapshots[0], snapshots[0] + len(snapshots)))
    assert repo.snapshot().signed.version == snapshots[-1]
    # And a stock TUF client accepts the result.
    updater = updater_for(static_server, PRODUCT, tmp_path / "client", repo.roots.path(1).read_bytes())
    updater.refresh()
