"""Key ceremonies for the image and director repositories: create, load, rotate, revoke.

``init_keys(KEYS, ...)`` writes::

    KEYS/keyset.json                    which keys each role has, thresholds (public)
    KEYS/offline/<name>.key             root and targets keys: PKCS#8 PEM, encrypted, 0600
    KEYS/online/<name>.key              snapshot, timestamp, director online keys: unencrypted, 0600
    KEYS/public/<name>.pub.json         public keys (TUF key dicts with their keyid)
    KEYS/director/1.root.json           the director root, signed by the director root keys

``offline/`` belongs in a safe; ``online/`` is copied to the server's data folder. Key names are
``image-root-1`` … ``image-targets``, ``image-snapshot``, ``image-timestamp``, ``director-root-1`` …,
``director-targets``, ``director-snapshot``, ``director-timestamp``.

Signing keys are reached through a :class:`KeyBackend`: :class:`FileKey` for key files, and
:class:`Pkcs11Key` for a token through PKCS#11 (securesystemslib's ``HSMSigner``, which needs the
optional ``python-pkcs11`` package and supports ECDSA P-256/P-384 keys on the token).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medsec.atomic_file import atomic_write
from medsec.crypto.keys import write_private_file
from medsec.errors import KeyFileError
from medsec.updates.errors import KeyCeremonyError, RepositoryError
from medsec.updates.metadata_files import expiry, utc_now
from medsec.updates.repository import ImageRepository, OnlineSigners, sign_role
from medsec.updates.roots import ROOT_LIFETIME, TOP_LEVEL_ROLES, RoleKeys, RootHistory, new_root, sign_root_rotation
from medsec.updates.tuf_types import CryptoSigner, Key, Metadata, Root, Signer, SSlibKey

logger = logging.getLogger(__name__)

KEYSET_FORMAT = "medsec-keyset/v1"
REPOSITORIES = ("image", "director")
OFFLINE_ROLES = frozenset({("image", "root"), ("image", "targets"), ("director", "root")})
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")

PassphraseFor = Callable[[str], bytes | None]


# ---- backends ---------------------------------------------------------------------------------


class KeyBackend(Protocol):
    """Where a private key lives. ``signer()`` may ask for a passphrase or PIN and touch hardware."""

    def describe(self) -> str: ...

    def signer(self) -> Signer: ...


@dataclass(frozen=True)
class FileKey:
    """A PKCS#8 PEM private key file, encrypted when ``passphrase`` is given."""

    path: Path
    passphrase: bytes | None = field(default=None, repr=False)

    def describe(self) -> str:
        return f"file {self.path}"

    def signer(self) -> CryptoSigner:
        return load_file_signer(self.path, self.passphrase)


@dataclass(frozen=True)
class Pkcs11Key:
    """A key on a PKCS#11 token (HSM, smart card, YubiKey PIV).

    ``uri`` is securesystemslib's ``hsm:<keyid>[?label=<token label>]``; ``public_key`` is the key as
    recorded at the ceremony; ``pin`` is asked for the PIN when signing. The PKCS#11 module is
    named by the ``PYKCS11LIB`` environment variable. Needs ``pip install python-pkcs11``.
    """

    uri: str
    public_key: Key
    pin: Callable[[str], str] = field(repr=False)

    def describe(self) -> str:
        return f"PKCS#11 {self.uri}"

    def signer(self) -> Signer:
        require_pkcs11()
        from securesystemslib.signer._hsm_signer import HSMSigner

        try:
            return HSMSigner.from_priv_key_uri(self.uri, self.public_key, self.pin)
        except ValueError as e:
            raise KeyFileError(f"cannot use PKCS#11 key {self.uri}: {e}") from e


def require_pkcs11() -> None:
    """Raise a clear error unless the optional PKCS#11 binding is installed."""
    if importlib.util.find_spec("pkcs11") is None:
        raise KeyFileError(
            "PKCS#11 keys need the optional 'python-pkcs11' package (pip install python-pkcs11) "
            "and PYKCS11LIB set to the token's PKCS#11 module"
        )


def import_pkcs11_public_key(hsm_keyid: int | None = None, token_label: str | None = None) -> tuple[str, Key]:
    """Read the public key of a token key once, at the ceremony: returns ``(uri, public key)``."""
    require_pkcs11()
    from securesystemslib.signer._hsm_signer import HSMSigner

    try:
        return HSMSigner.import_(hsm_keyid, token_label)
    except ValueError as e:
        raise KeyFileError(f"cannot read the PKCS#11 public key: {e}") from e


# ---- key files --------------------------------------------------------------------------------


def load_file_signer(path: Path, passphrase: bytes | None = None) -> CryptoSigner:
    """A signer for an Ed25519 PKCS#8 key file; KeyFileError when unreadable or wrongly decrypted."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as e:
        what = "is encrypted; a passphrase is needed" if passphrase is None else "is not encrypted"
        raise KeyFileError(f"{path} {what}") from e
    except ValueError as e:
        raise KeyFileError(f"cannot load {path}: wrong passphrase or not a PKCS#8 key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return CryptoSigner(key)


def private_key_is_encrypted(path: Path) -> bool:
    try:
        head = path.read_bytes()[:64]
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from e
    return b"ENCRYPTED" in head


def generate_key_file(path: Path, passphrase: bytes | None) -> SSlibKey:
    """A new Ed25519 key at ``path`` (0600, encrypted when a passphrase is given); returns its public key."""
    if path.exists():
        raise KeyFileError(f"{path} exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    write_private_file(path, pem)
    return SSlibKey.from_crypto(private.public_key())


def write_public_key(path: Path, name: str, key: Key) -> None:
    doc = {"name": name, "keyid": key.keyid, **key.to_dict()}
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def load_public_key(path: Path) -> Key:
    """A ``*.pub.json`` file; its keyid is recomputed, never trusted from the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        key_dict = {k: doc[k] for k in ("keytype", "scheme", "keyval")}
        probe = SSlibKey.from_dict("probe", dict(key_dict))
        key = SSlibKey.from_crypto(probe._crypto_key(), scheme=probe.scheme)
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise KeyFileError(f"{path} is not a public key file: {e}") from e
    if doc.get("keyid") not in (None, key.keyid):
        raise KeyFileError(f"{path}: keyid does not match the key")
    return key


# ---- key sets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySet:
    """The public side of a key ceremony: which keys each role of each repository has."""

    dir: Path
    roles: Mapping[str, Mapping[str, RoleKeys]]
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def image(self) -> Mapping[str, RoleKeys]:
        return self.roles["image"]

    @property
    def director(self) -> Mapping[str, RoleKeys]:
        return self.roles["director"]

    def key_names(self, repository: str, role: str) -> tuple[str, ...]:
        return self.names[f"{repository}/{role}"]

    def private_key_path(self, name: str) -> Path:
        for sub in ("offline", "online"):
            p = self.dir / sub / f"{name}.key"
            if p.exists():
                return p
        raise KeyFileError(f"no private key file for {name} in {self.dir}/offline or {self.dir}/online")

    def file_keys(self, repository: str, role: str, passphrase_for: PassphraseFor) -> list[FileKey]:
        out = []
        for name in self.key_names(repository, role):
            path = self.private_key_path(name)
            passphrase = passphrase_for(name) if private_key_is_encrypted(path) else None
            out.append(FileKey(path, passphrase))
        return out

    def signers(self, repository: str, role: str, passphrase_for: PassphraseFor) -> list[Signer]:
        return [k.signer() for k in self.file_keys(repository, role, passphrase_for)]


def _key_names(repository: str, role: str, count: int) -> list[str]:
    if role == "root":
        return [f"{repository}-root-{i}" for i in range(1, count + 1)]
    return [f"{repository}-{role}"]


def load_keyset(keys_dir: Path) -> KeySet:
    path = keys_dir / "keyset.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}; run 'medsec keys init' first") from e
    except ValueError as e:
        raise KeyFileError(f"{path} is not JSON: {e}") from e
    if doc.get("format") != KEYSET_FORMAT:
        raise KeyFileError(f"{path} is not a {KEYSET_FORMAT} file")
    roles: dict[str, dict[str, RoleKeys]] = {}
    names: dict[str, tuple[str, ...]] = {}
    try:
        for repo in REPOSITORIES:
            roles[repo] = {}
            for role in TOP_LEVEL_ROLES:
                spec = doc["repositories"][repo][role]
                role_names = tuple(str(n) for n in spec["keys"])
                for n in role_names:
                    if not _NAME.match(n):
                        raise KeyFileError(f"{path}: bad key name {n!r}")
                keys = tuple(load_public_key(keys_dir / "public" / f"{n}.pub.json") for n in role_names)
                roles[repo][role] = RoleKeys(keys, int(spec["threshold"]))
                names[f"{repo}/{role}"] = role_names
    except (KeyError, TypeError) as e:
        raise KeyFileError(f"{path} is incomplete: {e}") from e
    return KeySet(keys_dir, roles, names)


def init_keys(
    keys_dir: Path,
    *,
    root_threshold: int = 2,
    root_keys: int = 3,
    passphrase_for: PassphraseFor,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> KeySet:
    """Create the image and director key sets and the director's ``1.root.json``.

    ``passphrase_for(name)`` is asked once per offline key; ``None`` leaves that key unencrypted
    (demos only). Refuses to touch a folder that already holds a key set.
    """
    if not 1 <= root_threshold <= root_keys:
        raise KeyCeremonyError(f"root threshold {root_threshold} must be between 1 and {root_keys}")
    if (keys_dir / "keyset.json").exists() or (keys_dir / "offline").exists() or (keys_dir / "online").exists():
        raise KeyCeremonyError(f"{keys_dir} already holds keys; refusing to overwrite them")
    now = now or utc_now()
    doc: dict[str, Any] = {"format": KEYSET_FORMAT, "repositories": {}}
    director_signers: dict[str, list[Signer]] = {}
    for repo in REPOSITORIES:
        doc["repositories"][repo] = {}
        for role in TOP_LEVEL_ROLES:
            count = root_keys if role == "root" else 1
            names = _key_names(repo, role, count)
            offline = (repo, role) in OFFLINE_ROLES
            for name in names:
                if progress:
                    progress(name)
                path = keys_dir / ("offline" if offline else "online") / f"{name}.key"
                passphrase = passphrase_for(name) if offline else None
                key = generate_key_file(path, passphrase)
                write_public_key(keys_dir / "public" / f"{name}.pub.json", name, key)
                if repo == "director" and role == "root":
                    director_signers.setdefault(role, []).append(load_file_signer(path, passphrase))
            doc["repositories"][repo][role] = {
                "threshold": root_threshold if role == "root" else 1,
                "keys": names,
            }
    atomic_write(keys_dir / "keyset.json", (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    keyset = load_keyset(keys_dir)
    root = new_root(keyset.director, director_signers["root"], now, consistent_snapshot=False)
    RootHistory(keys_dir / "director").append(root)
    logger.info("created key set in %s", keys_dir)
    return keyset


def load_online_signers(online_dir: Path, repository: Literal["image", "director"] = "image") -> dict[str, Signer]:
    """The unencrypted online keys of one repository, by role, from a server's key folder."""
    roles = ("snapshot", "timestamp") if repository == "image" else ("targets", "snapshot", "timestamp")
    out: dict[str, Signer] = {}
    for role in roles:
        out[role] = load_file_signer(online_dir / f"{repository}-{role}.key")
    return out


def load_image_online_signers(online_dir: Path) -> OnlineSigners:
    s = load_online_signers(online_dir, "image")
    return OnlineSigners(snapshot=s["snapshot"], timestamp=s["timestamp"])


# ---- rotation and revocation ------------------------------------------------------------------


def _writing(target: ImageRepository | RootHistory) -> contextlib.AbstractContextManager[None]:
    """An image repository's write lock; a director root history is written by key ceremonies alone."""
    return target.writing() if isinstance(target, ImageRepository) else contextlib.nullcontext()


def _history(target: ImageRepository | RootHistory) -> RootHistory:
    return target.roots if isinstance(target, ImageRepository) else target


def _root_lifetime(target: ImageRepository | RootHistory) -> timedelta:
    return target.policy.root if isinstance(target, ImageRepository) else ROOT_LIFETIME


def rotate_root(
    target: ImageRepository | RootHistory,
    new_root_keys: Sequence[Key],
    old_signers: Sequence[Signer],
    new_signers: Sequence[Signer],
    *,
    threshold: int | None = None,
    now: datetime | None = None,
) -> Metadata[Root]:
    """Write ``N+1.root.json`` with ``new_root_keys``, signed by both thresholds (TUF 5.3.4).

    ``old_signers`` must meet version N's root threshold and ``new_signers`` the new one; keys kept
    across the rotation may appear in both. Clients holding any earlier root walk the chain.
    """
    with _writing(target):
        history = _history(target)
        current = history.latest()
        t = threshold if threshold is not None else min(current.signed.roles["root"].threshold, len(new_root_keys))
        md = sign_root_rotation(
            current,
            now or utc_now(),
            replace={"root": RoleKeys(tuple(new_root_keys), t)},
            old_signers=old_signers,
            new_signers=new_signers,
            lifetime=_root_lifetime(target),
        )
        history.append(md)
    logger.info("root rotated to version %d in %s", md.signed.version, history.metadata_dir)
    return md


@dataclass(frozen=True)
class RevocationResult:
    root_version: int
    resigned: tuple[str, ...]


def revoke_key(
    target: ImageRepository | RootHistory,
    *,
    role: Literal["targets", "snapshot", "timestamp"],
    compromised_keyid: str,
    replacement: Signer,
    root_signers: Sequence[Signer],
    online: OnlineSigners | None = None,
    other_targets_signers: Iterable[Signer] = (),
    now: datetime | None = None,
) -> RevocationResult:
    """Remove a compromised key from ``role``, add ``replacement``, and re-sign what it signed.

    A new root (signed by the root threshold) drops the key; then, for an image repository, the
    role is signed again with the replacement so that nothing valid remains signed only by the
    compromised key: timestamp → new timestamp; snapshot → new snapshot and timestamp; targets →
    new targets, every bin, snapshot and timestamp (the bins are delegated to the targets keys).
    A director root history only gets the new root: the server signs per-device metadata afresh.
    Revoking a root key is a rotation: use :func:`rotate_root`.
    """
    if role not in ("targets", "snapshot", "timestamp"):
        raise KeyCeremonyError(f"cannot revoke a {role!r} key here; root keys are changed with rotate_root")
    now = now or utc_now()
    with _writing(target):
        return _revoke(target, role, compromised_keyid, replacement, root_signers, online, other_targets_signers, now)


def _revoke(
    target: ImageRepository | RootHistory,
    role: Literal["targets", "snapshot", "timestamp"],
    compromised_keyid: str,
    replacement: Signer,
    root_signers: Sequence[Signer],
    online: OnlineSigners | None,
    other_targets_signers: Iterable[Signer],
    now: datetime,
) -> RevocationResult:
    history = _history(target)
    current = history.latest()
    spec = current.signed.roles[role]
    if compromised_keyid not in spec.keyids:
        raise KeyCeremonyError(f"key {compromised_keyid[:12]}… is not a {role} key in root v{current.signed.version}")
    kept = tuple(current.signed.keys[k] for k in spec.keyids if k != compromised_keyid)
    new_keys = (*kept, replacement.public_key)
    replace: dict[str, RoleKeys] = {role: RoleKeys(new_keys, min(spec.threshold, len(new_keys)))}
    md = sign_root_rotation(
        current,
        now,
        replace=replace,
        old_signers=root_signers,
        new_signers=root_signers,
        lifetime=_root_lifetime(target),
    )
    if not isinstance(target, ImageRepository):
        history.append(md)
        return RevocationResult(md.signed.version, ())
    resigned = _resign_after_revocation(
        target, md, role, compromised_keyid, replacement, online, other_targets_signers, now
    )
    return RevocationResult(md.signed.version, resigned)


def _resign_after_revocation(
    repo: ImageRepository,
    root: Metadata[Root],
    role: str,
    compromised_keyid: str,
    replacement: Signer,
    online: OnlineSigners | None,
    other_targets_signers: Iterable[Signer],
    now: datetime,
) -> tuple[str, ...]:
    if role == "timestamp":
        repo.roots.append(root)
        repo.refresh_timestamp(replacement, now)
        return ("timestamp",)
    if online is None:
        raise KeyCeremonyError(f"re-signing after revoking a {role} key needs the online keys")
    if role == "snapshot":
        repo.roots.append(root)
        repo.publish_snapshot(OnlineSigners(snapshot=replacement, timestamp=online.timestamp), now)
        return ("snapshot", "timestamp")
    # targets: sign the new targets and bins before the root that makes the old ones invalid.
    signers = [replacement, *other_targets_signers]
    old = repo.load_targets()
    targets = copy.deepcopy(old.signed)
    targets.version = old.signed.version + 1
    targets.expires = expiry(now, repo.policy.targets)
    delegations = targets.delegations
    if delegations is None or delegations.succinct_roles is None:
        raise RepositoryError("targets metadata does not delegate to hash bins")
    succinct = delegations.succinct_roles
    if compromised_keyid in succinct.keyids:
        succinct.keyids.remove(compromised_keyid)
        delegations.keys.pop(compromised_keyid, None)
    if replacement.public_key.keyid not in succinct.keyids:
        succinct.keyids.append(replacement.public_key.keyid)
        if delegations.keys is None:
            raise RepositoryError("targets delegations have no keys")
        delegations.keys[replacement.public_key.keyid] = replacement.public_key
    targets_md = Metadata(targets)
    sign_role(targets_md, root.signed, "targets", signers)
    bins = []
    for name in succinct.get_roles():
        old_bin = repo.load_targets(name)
        b = copy.deepcopy(old_bin.signed)
        b.version = old_bin.signed.version + 1
        b.expires = expiry(now, repo.policy.bins)
        bin_md = Metadata(b)
        sign_role(bin_md, targets, name, signers)
        bins.append((name, bin_md))
    repo.roots.append(root)
    for name, bin_md in bins:
        repo.write_versioned(name, bin_md)
    repo.write_versioned("targets", targets_md)
    repo.publish_snapshot(online, now)
    return ("targets", *(n for n, _ in bins), "snapshot", "timestamp")


def director_root_history(keys_dir: Path) -> RootHistory:
    return RootHistory(keys_dir / "director")


__all__ = [
    "FileKey",
    "KeyBackend",
    "KeySet",
    "Pkcs11Key",
    "RevocationResult",
    "generate_key_file",
    "import_pkcs11_public_key",
    "init_keys",
    "load_file_signer",
    "load_image_online_signers",
    "load_keyset",
    "load_online_signers",
    "load_public_key",
    "revoke_key",
    "rotate_root",
]
