"""Fixtures for the repository side: a key ceremony, an image repository, a static HTTP server."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from repo_support import PASSPHRASE, PRODUCT, Ceremony, QuietHandler, QuietServer, StaticServer

from medsec.updates.keys import init_keys, load_file_signer, load_online_signers
from medsec.updates.repository import ImageRepository, OnlineSigners


@pytest.fixture(scope="session")
def ceremony(tmp_path_factory: pytest.TempPathFactory) -> Ceremony:
    keys_dir = tmp_path_factory.mktemp("keys")
    keyset = init_keys(keys_dir, passphrase_for=lambda _name: PASSPHRASE)
    root = keyset.signers("image", "root", lambda _n: PASSPHRASE)
    targets = load_file_signer(keys_dir / "offline" / "image-targets.key", PASSPHRASE)
    online = load_online_signers(keys_dir / "online", "image")
    return Ceremony(
        keys_dir=keys_dir,
        keyset=keyset,
        root=root,
        targets=targets,
        online=OnlineSigners(snapshot=online["snapshot"], timestamp=online["timestamp"]),
        director_online=load_online_signers(keys_dir / "online", "director"),
    )


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[StaticServer]:
    """A real HTTP server on 127.0.0.1 (port 0) serving ``tmp_path/www`` as static files."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield StaticServer(www, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def repo(static_server: StaticServer, ceremony: Ceremony) -> ImageRepository:
    return ImageRepository.create(
        static_server.root / "repo",
        PRODUCT,
        ceremony.keyset.image,
        root_signers=ceremony.root[:2],
        targets_signers=[ceremony.targets],
        online=ceremony.online,
        now=datetime.now(UTC),
    )
