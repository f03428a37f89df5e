"""OpenPGP detached signatures for CSAF documents (CSAF 2.0 7.1.19), made with the ``gpg`` binary.

The PSIRT key travels as armored key material (kept by medsec's key handling, never in a user keyring). Every
operation runs in a private temporary GNUPGHOME that medsec creates with mode 0700 and removes afterwards,
together with the gpg-agent started for it; the user's own keyring and agent are never touched.
Verification raises :class:`AdvisorySignatureError`; it never returns a bool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

from medsec.advisories.errors import AdvisoryError, AdvisorySignatureError

GPG_TIMEOUT = 60


class OpenPgpSigner(Protocol):
    """What the provider tree needs from a PSIRT signing key."""

    @property
    def fingerprint(self) -> str: ...

    def public_key(self) -> bytes: ...

    def sign_detached(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class PsirtKey:
    """An OpenPGP key pair as armored text; the secret part is hidden from reprs."""

    fingerprint: str
    public_key: bytes
    secret_key: bytes = field(repr=False)


class GpgError(AdvisoryError):
    """The gpg binary failed or is missing."""


def _env(home: Path) -> dict[str, str]:
    # A minimal environment so no agent or keyring of the calling user leaks in.
    return {"GNUPGHOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


# gpg-agent puts its sockets in the home; a Unix socket path has at most 107 bytes.
_SOCKET_PATH_MAX = 107
_LONGEST_SOCKET = "S.gpg-agent.browser"
_SHORT_TEMP = "/tmp"  # noqa: S108 - the fallback when TMPDIR is too deep for the agent's sockets


def _temp_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="medsec-gpg-"))
    if len(os.fsencode(home / _LONGEST_SOCKET)) <= _SOCKET_PATH_MAX:
        return home
    home.rmdir()
    return Path(tempfile.mkdtemp(prefix="medsec-gpg-", dir=_SHORT_TEMP))


@contextmanager
def _gpg_home(gpg: str) -> Iterator[Path]:
    home = _temp_home()
    home.chmod(0o700)
    try:
        yield home
    finally:
        gpg_path = shutil.which(gpg)
        gpgconf = shutil.which("gpgconf", path=str(Path(gpg_path).parent)) if gpg_path else None
        if gpgconf:
            # Stop the gpg-agent that gpg started for this home, and only that one.
            subprocess.run(  # noqa: S603 - fixed arguments, our own temporary home
                [gpgconf, "--homedir", str(home), "--kill", "all"],
                capture_output=True,
                timeout=GPG_TIMEOUT,
                check=False,
                env=_env(home),
            )
        shutil.rmtree(home, ignore_errors=True)


def _run(gpg: str, home: Path, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = [gpg, "--homedir", str(home), "--batch", "--no-tty", "--pinentry-mode", "loopback", *args]
    try:
        return subprocess.run(  # noqa: S603 - arguments built here, no shell
            command, input=stdin, capture_output=True, timeout=GPG_TIMEOUT, check=False, env=_env(home)
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GpgError(f"cannot run {gpg}: {e}") from e


def _checked(result: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    if result.returncode != 0:
        raise GpgError(f"gpg {what} failed: {result.stderr.decode('utf-8', 'replace').strip()}")
    return result.stdout


def _secret_fingerprint(gpg: str, home: Path) -> str:
    out = _checked(_run(gpg, home, ["--with-colons", "--list-secret-keys"]), "list keys").decode()
    for line in out.splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9]
    raise GpgError("no secret key in the key material")


def generate_psirt_key(uid: str, passphrase: str = "", *, gpg: str = "gpg", expires: str = "3y") -> PsirtKey:
    """A new Ed25519 signing key for the PSIRT (``uid`` like ``"ACME PSIRT <psirt@example.com>"``)."""
    secret_pass = passphrase.encode()
    with _gpg_home(gpg) as home:
        generate = ["--passphrase-fd", "0", "--quick-gen-key", uid, "ed25519", "sign", expires]
        _checked(_run(gpg, home, generate, secret_pass), "key generation")
        fingerprint = _secret_fingerprint(gpg, home)
        public = _checked(_run(gpg, home, ["--armor", "--export", fingerprint]), "export")
        export = ["--passphrase-fd", "0", "--armor", "--export-secret-keys", fingerprint]
        secret = _checked(_run(gpg, home, export, secret_pass), "secret export")
    return PsirtKey(fingerprint=fingerprint, public_key=public, secret_key=secret)


class GpgSigner:
    """Signs with a PSIRT key inside a private temporary GNUPGHOME; use as a context manager."""

    def __init__(self, key: PsirtKey, passphrase: str = "", *, gpg: str = "gpg") -> None:
        self._key = key
        self._passphrase = passphrase
        self._gpg = gpg
        self._home: Path | None = None
        self._stack = ExitStack()

    def __repr__(self) -> str:
        return f"GpgSigner(fingerprint={self._key.fingerprint})"

    def __enter__(self) -> GpgSigner:
        home = self._stack.enter_context(_gpg_home(self._gpg))
        try:
            _checked(_run(self._gpg, home, ["--import"], self._key.secret_key), "import")
            if _secret_fingerprint(self._gpg, home) != self._key.fingerprint:
                raise GpgError("the key material does not hold the announced fingerprint")
        except BaseException:
            self._stack.close()
            raise
        self._home = home
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()
        self._home = None

    @property
    def fingerprint(self) -> str:
        return self._key.fingerprint

    def public_key(self) -> bytes:
        return self._key.public_key

    def sign_detached(self, data: bytes) -> bytes:
        if self._home is None:
            raise GpgError("GpgSigner is used outside its 'with' block")
        fd, name = tempfile.mkstemp(dir=self._home)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            args = ["--passphrase-fd", "0", "--local-user", self._key.fingerprint, "--armor", "--detach-sign"]
            args += ["--output", "-", name]
            return _checked(_run(self._gpg, self._home, args, self._passphrase.encode()), "sign")
        finally:
            Path(name).unlink(missing_ok=True)


def verify_detached(data: bytes, signature: bytes, public_key: bytes, fingerprint: str, *, gpg: str = "gpg") -> None:
    """Raise unless ``signature`` is a valid signature over ``data`` by the key with ``fingerprint``."""
    with _gpg_home(gpg) as home:
        _checked(_run(gpg, home, ["--import"], public_key), "import")
        (home / "data").write_bytes(data)
        (home / "data.asc").write_bytes(signature)
        result = _run(gpg, home, ["--status-fd", "1", "--verify", str(home / "data.asc"), str(home / "data")])
    wanted = fingerprint.upper()
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        parts = line.split()
        # "[GNUPG:] VALIDSIG <signing key fpr> ... <primary key fpr>" (GnuPG doc/DETAILS).
        is_valid = len(parts) >= 3 and parts[:2] == ["[GNUPG:]", "VALIDSIG"]
        if is_valid and wanted in (parts[2], parts[-1]) and result.returncode == 0:
            return
    raise AdvisorySignatureError(f"OpenPGP signature does not verify with key {fingerprint}")
