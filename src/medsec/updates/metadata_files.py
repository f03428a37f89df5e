"""Reading and writing TUF metadata files, and the small rules every writer shares.

Every metadata file is written with :func:`medsec.atomic_file.atomic_write` (temp file, fsync,
rename, fsync the folder), so a crash leaves either the previous file or the complete new one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.serialization import DeserializationError, SerializationError
from tuf.api.serialization.json import JSONSerializer

from medsec.atomic_file import atomic_write, fsync_dir
from medsec.updates.errors import KeyCeremonyError, RepositoryError
from medsec.updates.tuf_types import Metadata, Root, Signer, Snapshot, Targets, Timestamp

T = TypeVar("T", Root, Timestamp, Snapshot, Targets)

_COMPACT = JSONSerializer(compact=True)
_COPY_CHUNK = 1 << 20


def utc_now() -> datetime:
    return datetime.now(UTC)


def expiry(now: datetime, lifetime: timedelta) -> datetime:
    """``now + lifetime`` in UTC, whole seconds (TUF 4.2: expires is 'YYYY-MM-DDTHH:MM:SSZ')."""
    if now.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return (now + lifetime).astimezone(UTC).replace(microsecond=0)


def metadata_bytes(md: Metadata[Any]) -> bytes:
    try:
        return _COMPACT.serialize(md)
    except SerializationError as e:
        raise RepositoryError(f"cannot serialize {md.signed.type} metadata: {e}") from e


def write_metadata(path: Path, md: Metadata[Any]) -> bytes:
    """Write ``md`` atomically and return the bytes written."""
    data = metadata_bytes(md)
    atomic_write(path, data)
    return data


def read_metadata(path: Path, kind: type[T]) -> Metadata[T]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise RepositoryError(f"missing metadata file {path}") from e
    except OSError as e:
        raise RepositoryError(f"cannot read {path}: {e.strerror}") from e
    try:
        md = cast("Metadata[T]", Metadata.from_bytes(data))
    except DeserializationError as e:
        raise RepositoryError(f"{path} is not valid TUF metadata: {e}") from e
    if not isinstance(md.signed, kind):
        raise RepositoryError(f"{path} holds {md.signed.type} metadata, expected {kind.type}")
    return md


def sign(md: Metadata[Any], signers: Sequence[Signer]) -> None:
    """Replace the signatures of ``md`` with one from each signer."""
    md.signatures.clear()
    for signer in signers:
        try:
            md.sign(signer, append=True)
        except UnsignedMetadataError as e:
            raise KeyCeremonyError(f"signing {md.signed.type} failed: {e}") from e


def copy_file_atomically(source: Path, dest: Path) -> None:
    """Stream ``source`` to ``dest`` via a temp file in the same folder, fsync, rename (STYLE 7)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        with source.open("rb") as src, tmp.open("wb") as out:
            while chunk := src.read(_COPY_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
