"""The device's TUF client: the director says *what* to install, the image repository says *what it is*.

Two ``tuf.ngclient.Updater`` instances, each anchored in a root embedded in the device image
(``ROOT/usr/share/medsec/trust/{director,image}-root.json``), each with its own metadata cache
under ``ROOT/var/lib/medsec/tuf/``. The rule (docs/updates-format.md, Uptane 5.4.4 simplified):

1. the director assigns at most one target, for this serial and hardware id, with a release
   counter greater than the installed one (no downgrade, SM-6);
2. the image repository lists the same target name with the same length, hashes, release
   counter and hardware id;
3. the bundle is downloaded through the image repository, bounded and resumable, and is used
   only after its length and hashes matched.

:func:`verify_assignment` is that rule with no I/O; :class:`UpdateClient` does the I/O around it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from tuf.api import exceptions as tuf_exceptions

# tuf re-exports these without __all__; mypy --strict needs implicit_reexport for tuf.* to drop the ignore.
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from medsec.updates.device_errors import (
    AssignmentRejected,
    DirectorImageMismatch,
    DowngradeRefused,
    MetadataRejected,
    TargetNotInImageRepository,
    TargetRejected,
    UpdateStateError,
    UpdateTransportError,
    WrongHardware,
)
from medsec.updates.fetcher import Failpoint, HttpxFetcher, copy_target, no_failpoint

logger = logging.getLogger(__name__)

TRUST_RELDIR = Path("usr/share/medsec/trust")
TUF_CACHE_RELDIR = Path("var/lib/medsec/tuf")
UPDATES_RELDIR = Path("var/lib/medsec/updates")
OFFLINE_IMAGE_DIR = "image"
OFFLINE_DIRECTOR_DIR = "director"
MAX_ROOT_BYTES = 512 * 1024
_VERSION_RE = re.compile(r"\d+(\.\d+)*")


@dataclass(frozen=True)
class UpdatePaths:
    """Where the update client keeps its files under one device root."""

    root: Path

    @property
    def image_root_file(self) -> Path:
        return self.root / TRUST_RELDIR / "image-root.json"

    @property
    def director_root_file(self) -> Path:
        return self.root / TRUST_RELDIR / "director-root.json"

    @property
    def image_metadata_dir(self) -> Path:
        return self.root / TUF_CACHE_RELDIR / "image"

    @property
    def director_metadata_dir(self) -> Path:
        return self.root / TUF_CACHE_RELDIR / "director"

    @property
    def downloads_dir(self) -> Path:
        return self.root / UPDATES_RELDIR / "downloads"

    @property
    def state_file(self) -> Path:
        return self.root / UPDATES_RELDIR / "state.json"

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"


@dataclass(frozen=True)
class DeviceIdentity:
    serial: str
    hardware_id: str
    product: str


@dataclass(frozen=True)
class InstalledRelease:
    """What the committed slot runs."""

    version: str
    release_counter: int
    target_name: str | None = None  # the target it was installed from, when installed by an update


@dataclass(frozen=True)
class AssignedTarget:
    """A target both repositories verified and agree on: the only thing the device will install."""

    name: str
    length: int
    hashes: Mapping[str, str]
    product: str
    version: str
    release_counter: int
    hardware_ids: tuple[str, ...]
    min_from_version: str | None = None
    campaign: str | None = None
    install_window: Mapping[str, Any] | None = None
    rollback_supported: bool = True
    expected_downtime_minutes: int | None = None
    custom: Mapping[str, Any] = field(default_factory=dict)

    @property
    def bundle_filename(self) -> str:
        # Named by content so a new assignment never resumes into another target's part file.
        return f"{self.hashes.get('sha256') or next(iter(self.hashes.values()))}.release.tar"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "length": self.length,
            "hashes": dict(self.hashes),
            "product": self.product,
            "version": self.version,
            "release_counter": self.release_counter,
            "hardware_ids": list(self.hardware_ids),
            "min_from_version": self.min_from_version,
            "campaign": self.campaign,
            "install_window": dict(self.install_window) if self.install_window is not None else None,
            "rollback_supported": self.rollback_supported,
            "expected_downtime_minutes": self.expected_downtime_minutes,
            "custom": dict(self.custom),
        }

    @classmethod
    def from_json(cls, data: Any) -> AssignedTarget:
        """Rebuild a target from the device's own state file (written by :meth:`to_json`)."""
        try:
            return cls(
                name=str(data["name"]),
                length=int(data["length"]),
                hashes={str(k): str(v) for k, v in data["hashes"].items()},
                product=str(data["product"]),
                version=str(data["version"]),
                release_counter=int(data["release_counter"]),
                hardware_ids=tuple(str(h) for h in data["hardware_ids"]),
                min_from_version=data.get("min_from_version"),
                campaign=data.get("campaign"),
                install_window=data.get("install_window"),
                rollback_supported=bool(data.get("rollback_supported", True)),
                expected_downtime_minutes=data.get("expected_downtime_minutes"),
                custom=data.get("custom") or {},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UpdateStateError(f"stored target is damaged: {e}") from e


@dataclass(frozen=True)
class VerifiedBundle:
    target: AssignedTarget
    path: Path


# -- the device's rule, no I/O ----------------------------------------------------------------------


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DirectorImageMismatch(f"{what} is missing or not an object")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DirectorImageMismatch(f"{what} is not a non-negative integer")
    return value


def _version_key(version: str) -> tuple[int, ...] | None:
    return tuple(int(p) for p in version.split(".")) if _VERSION_RE.fullmatch(version) else None


def verify_assignment(
    director_target: TargetFile,
    image_target: TargetFile | None,
    device: DeviceIdentity,
    installed: InstalledRelease | None,
) -> AssignedTarget:
    """Apply the device's rule to one director target; return it or raise why it must not be installed."""
    directive = director_target.custom.get("medsec_director")
    if not isinstance(directive, dict):
        raise AssignmentRejected(f"director target {director_target.path!r} has no 'medsec_director' custom data")
    if directive.get("serial") != device.serial:
        raise AssignmentRejected(f"director target is for serial {directive.get('serial')!r}, not {device.serial!r}")
    if directive.get("hardware_id") != device.hardware_id:
        raise WrongHardware(
            f"director target is for hardware {directive.get('hardware_id')!r}, not {device.hardware_id!r}"
        )
    counter = _int(directive.get("release_counter"), "the director's release_counter")
    if installed is not None and counter <= installed.release_counter:
        # SM-6, Uptane 5.4.4.2: never install a release older than or equal to the running one.
        raise DowngradeRefused(
            f"director assigns release counter {counter}, but {installed.release_counter} is installed"
        )
    if image_target is None:
        raise TargetNotInImageRepository(
            f"the director assigns {director_target.path!r}, which the image repository does not list"
        )
    if image_target.length != director_target.length:
        raise DirectorImageMismatch(
            f"{director_target.path!r}: director length {director_target.length}, image length {image_target.length}"
        )
    if dict(image_target.hashes) != dict(director_target.hashes):
        raise DirectorImageMismatch(f"{director_target.path!r}: director and image repository list different hashes")
    release = _object(image_target.custom.get("medsec"), "the image target's 'medsec'")
    if _int(release.get("release_counter"), "the image release_counter") != counter:
        raise DirectorImageMismatch(
            f"{director_target.path!r}: director release counter {counter}, image {release.get('release_counter')}"
        )
    hardware_ids = release.get("hardware_ids")
    if not isinstance(hardware_ids, list) or not all(isinstance(h, str) for h in hardware_ids):
        raise DirectorImageMismatch(f"{director_target.path!r}: the image target's hardware_ids is not a list")
    if device.hardware_id not in hardware_ids:
        raise DirectorImageMismatch(
            f"{director_target.path!r}: the image repository does not list hardware {device.hardware_id!r}"
        )
    if release.get("product") != device.product:
        raise DirectorImageMismatch(f"{director_target.path!r} is for product {release.get('product')!r}")
    version = release.get("version")
    if not isinstance(version, str) or not version:
        raise DirectorImageMismatch(f"{director_target.path!r}: the image target has no version")
    min_from = release.get("min_from_version")
    if min_from is not None and installed is not None:
        have, need = _version_key(installed.version), _version_key(str(min_from))
        if have is None or need is None or have < need:
            raise AssignmentRejected(f"{version} installs only over {min_from} or later; {installed.version} runs")
    window = directive.get("install_window")
    downtime = release.get("expected_downtime_minutes")
    return AssignedTarget(
        name=director_target.path,
        length=image_target.length,
        hashes=dict(image_target.hashes),
        product=device.product,
        version=version,
        release_counter=counter,
        hardware_ids=tuple(hardware_ids),
        min_from_version=str(min_from) if min_from is not None else None,
        campaign=str(directive["campaign"]) if directive.get("campaign") is not None else None,
        install_window=window if isinstance(window, dict) else None,
        rollback_supported=release.get("rollback_supported") is not False,
        expected_downtime_minutes=downtime if isinstance(downtime, int) and not isinstance(downtime, bool) else None,
        custom=release,
    )


# -- I/O -------------------------------------------------------------------------------------------


class LocalFetcher(FetcherInterface):
    """Serves ``file://`` URLs below one folder: TUF metadata brought on a USB stick."""

    def __init__(self, base: Path) -> None:
        self._base = base.resolve()

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        path = Path(unquote(parts.path)).resolve()
        if parts.scheme != "file" or not path.is_relative_to(self._base):
            raise tuf_exceptions.DownloadError(f"{url} is outside the offline metadata folder")
        if not path.is_file():
            raise tuf_exceptions.DownloadHTTPError(f"{url} does not exist", 404)
        return self._read(path)

    @staticmethod
    def _read(path: Path) -> Iterator[bytes]:
        with path.open("rb") as f:
            while block := f.read(64 * 1024):
                yield block


def _read_embedded_root(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_ROOT_BYTES + 1)
    except OSError as e:
        raise UpdateStateError(f"embedded trust root {path} cannot be read: {e.strerror}") from e
    if len(data) > MAX_ROOT_BYTES:
        raise UpdateStateError(f"embedded trust root {path} is larger than {MAX_ROOT_BYTES} bytes")
    return data


def _translate(action: str, call: Callable[[], Any]) -> Any:
    """Run one ngclient call, mapping its exceptions to ours at this boundary."""
    try:
        return call()
    except tuf_exceptions.RepositoryError as e:
        raise MetadataRejected(f"{action}: {type(e).__name__}: {e}") from e
    except tuf_exceptions.DownloadLengthMismatchError as e:
        raise MetadataRejected(f"{action}: metadata longer than allowed: {e}") from e
    except tuf_exceptions.DownloadError as e:
        raise UpdateTransportError(f"{action}: {e}") from e
    except OSError as e:
        raise UpdateStateError(f"{action}: cannot write the metadata cache: {e}") from e
    except ValueError as e:
        raise MetadataRejected(f"{action}: {e}") from e


def _trusted_metadata(metadata_dir: Path, role: str) -> Metadata[Any]:
    # ngclient persists exactly the metadata it trusted during refresh(), under the role's name.
    try:
        return Metadata.from_file(str(metadata_dir / f"{role}.json"))
    except (OSError, ValueError) as e:
        raise UpdateStateError(f"trusted {role} metadata in {metadata_dir} cannot be read: {e}") from e


class UpdateClient:
    """Refreshes both repositories, applies the device's rule, downloads the assigned bundle."""

    def __init__(
        self,
        paths: UpdatePaths,
        device: DeviceIdentity,
        server_url: str,
        *,
        fetcher: HttpxFetcher | None = None,
        config: UpdaterConfig | None = None,
    ) -> None:
        self.paths = paths
        self.device = device
        base = server_url.rstrip("/")
        self.image_metadata_url = f"{base}/repo/{device.product}/metadata/"
        self.image_targets_url = f"{base}/repo/{device.product}/targets/"
        self.director_metadata_url = f"{base}/director/{device.serial}/metadata/"
        self._own_fetcher = fetcher is None
        self._fetcher = fetcher or HttpxFetcher()
        self._config = config or UpdaterConfig(app_user_agent="medsec-agent")

    def close(self) -> None:
        if self._own_fetcher:
            self._fetcher.close()

    def __enter__(self) -> UpdateClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def check(self, installed: InstalledRelease | None) -> AssignedTarget | None:
        """Refresh both repositories; return the verified assignment, or None when there is nothing to do.

        The two refreshes share nothing until :meth:`_decide` compares their results (separate
        roots, caches and metadata), so the image repository refreshes on a second thread while
        the director refreshes here: a refresh is a chain of round trips, and two chains at once
        take about as long as the longer one. A director failure is reported first, as before.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsec-image-refresh") as pool:
            image_refresh = pool.submit(
                self._updater, self.paths.image_metadata_dir, self.image_metadata_url, self._fetcher, "image"
            )
            director = self._updater(
                self.paths.director_metadata_dir, self.director_metadata_url, self._fetcher, "director"
            )
            image = image_refresh.result()
        return self._decide(director, image, self.paths.director_metadata_dir, installed)

    def download(self, target: AssignedTarget, *, failpoint: Failpoint = no_failpoint) -> Path:
        """Download (or resume) the bundle of ``target``; return its path once it matches the signed hashes."""
        destination = self.paths.downloads_dir / target.bundle_filename
        if destination.exists():
            # Already complete from an earlier run; check it again rather than trust the name.
            return copy_target(destination, destination, target.length, target.hashes)
        return self._fetcher.download_target(
            self._target_url(target), destination, target.length, target.hashes, failpoint=failpoint
        )

    def install_offline_bundle(
        self, path: Path, metadata_dir: Path, *, installed: InstalledRelease | None
    ) -> VerifiedBundle:
        """Verify a bundle brought on a USB stick with the same rule as online, and copy it in.

        ``metadata_dir`` holds ``director/`` (this device's director metadata) and ``image/``
        (the image repository's metadata). Both are checked against the embedded roots and the
        device's metadata caches, so an old stick cannot roll the device back (TUF 5.3-5.6).
        """
        director_dir = metadata_dir / OFFLINE_DIRECTOR_DIR
        image_dir = metadata_dir / OFFLINE_IMAGE_DIR
        director = self._updater(
            self.paths.director_metadata_dir,
            director_dir.resolve().as_uri() + "/",
            LocalFetcher(director_dir),
            "director",
        )
        image = self._updater(
            self.paths.image_metadata_dir, image_dir.resolve().as_uri() + "/", LocalFetcher(image_dir), "image"
        )
        target = self._decide(director, image, self.paths.director_metadata_dir, installed)
        if target is None:
            raise AssignmentRejected("the offline director metadata assigns no release to this device")
        destination = self.paths.downloads_dir / target.bundle_filename
        return VerifiedBundle(target, copy_target(path, destination, target.length, target.hashes))

    # -- internals ---------------------------------------------------------------------------------

    def _updater(self, cache: Path, metadata_url: str, fetcher: FetcherInterface, name: str) -> Updater:
        root_file = self.paths.director_root_file if name == "director" else self.paths.image_root_file
        bootstrap = _read_embedded_root(root_file)
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        updater: Updater = _translate(
            f"load {name} root",
            lambda: Updater(str(cache), metadata_url, fetcher=fetcher, config=self._config, bootstrap=bootstrap),
        )
        _translate(f"refresh {name} repository", updater.refresh)
        return updater

    def _decide(
        self, director: Updater, image: Updater, director_cache: Path, installed: InstalledRelease | None
    ) -> AssignedTarget | None:
        names = sorted(_trusted_metadata(director_cache, Targets.type).signed.targets)
        if not names:
            return None
        if len(names) > 1:
            raise AssignmentRejected(f"the director assigns {len(names)} targets; a device takes at most one")
        director_target = _translate("director target", lambda: director.get_targetinfo(names[0]))
        if director_target is None:
            raise AssignmentRejected(f"director target {names[0]!r} cannot be resolved")
        if installed is not None and installed.target_name == director_target.path:
            # The director still names what runs: up to date, not a downgrade.
            return None
        image_target = _translate("image target", lambda: image.get_targetinfo(names[0]))
        target = verify_assignment(director_target, image_target, self.device, installed)
        logger.info("director assigns %s (release counter %d)", target.name, target.release_counter)
        return target

    def _target_url(self, target: AssignedTarget) -> str:
        root = _trusted_metadata(self.paths.image_metadata_dir, Root.type).signed
        path = target.name
        if not isinstance(root, Root):
            raise UpdateStateError("the cached image root is not root metadata")
        if root.consistent_snapshot:
            # TUF 5.7.3 with consistent snapshots: <dir>/<hash>.<basename>, first listed hash as ngclient does.
            if not target.hashes:
                raise TargetRejected(f"{target.name} lists no hashes")
            digest = next(iter(target.hashes.values()))
            dirname, sep, basename = path.rpartition("/")
            path = f"{dirname}{sep}{digest}.{basename}"
        return self.image_targets_url + path
