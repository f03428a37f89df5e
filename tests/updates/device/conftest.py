from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from .device_env import DeviceEnv, provision, release_files
from .range_server import serve
from .repo_builder import DirectorRepo, ImageRepo, make_bundle, release_custom, target_name


@pytest.fixture
def env(tmp_path: Path) -> Iterator[DeviceEnv]:
    """A device running 1.0.0 (release counter 1); no update assigned yet."""
    www = tmp_path / "www"
    image = ImageRepo(www)
    director = DirectorRepo(www)
    factory = make_bundle("1.0.0", 1, release_files("1.0.0"))
    image.add_target(target_name("1.0.0"), factory.data, release_custom(factory))
    image.publish()
    director.publish()
    root = tmp_path / "device"
    provision(root, image.root_bytes, director.root_bytes, factory)
    with ExitStack() as stack:
        url, behaviour = stack.enter_context(serve(www))
        yield DeviceEnv(tmp_path, www, url, behaviour, image, director, root, stack)
