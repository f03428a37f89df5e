"""A CSAF trusted-provider tree in a directory any web server or CDN can serve (CSAF 2.0 section 7, SM-2).

Layout below ``root`` (the web root)::

    .well-known/csaf/provider-metadata.json        role csaf_trusted_provider (7.1.7)
    .well-known/csaf/openpgp/<FINGERPRINT>.asc      the PSIRT public key (7.1.20)
    .well-known/csaf/white/index.txt                every advisory path, one a line (7.1.12)
    .well-known/csaf/white/changes.csv              "path","current_release_date", newest first (7.1.13)
    .well-known/csaf/white/<year>/<id>.json         year of the initial release, file name per 5.1 (7.1.11)
    .well-known/csaf/white/<year>/<id>.json.sha512  (7.1.18)
    .well-known/csaf/white/<year>/<id>.json.asc     OpenPGP detached signature (7.1.19)
    .well-known/csaf/white/csaf-feed-tlp-white.json optional ROLIE feed (7.1.16)

Only TLP:WHITE documents are published here; anything else must not sit on a public tree. Each file is written
atomically; publishes must be serialised by the caller (one publishing job at a time).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.advisories.csaf import advisory_filename, timestamp
from medsec.advisories.csaf_checks import check_mandatory
from medsec.advisories.errors import AdvisoryIntegrityError, PublicationError
from medsec.advisories.model import Publisher
from medsec.advisories.openpgp import OpenPgpSigner, verify_detached
from medsec.atomic_file import atomic_write

WELL_KNOWN = Path(".well-known/csaf")
DISTRIBUTION = "white"
ROLIE_FEED = "csaf-feed-tlp-white.json"
CSAF_SCHEMA_URL = "https://docs.oasis-open.org/csaf/csaf/v2.0/csaf_json_schema.json"


@dataclass(frozen=True)
class ProviderConfig:
    base_url: str  # https://psirt.example.com, without a trailing slash
    publisher: Publisher
    list_on_aggregators: bool = True
    mirror_on_aggregators: bool = True
    rolie: bool = False

    def __post_init__(self) -> None:
        if not self.base_url.startswith("https://") or self.base_url.endswith("/"):
            raise PublicationError("base_url must be https:// and have no trailing slash (CSAF 7.1.1)")

    @property
    def csaf_url(self) -> str:
        return f"{self.base_url}/{WELL_KNOWN.as_posix()}"

    @property
    def directory_url(self) -> str:
        return f"{self.csaf_url}/{DISTRIBUTION}"


@dataclass(frozen=True)
class PublishedAdvisory:
    path: str  # relative to the distribution folder, e.g. "2025/acme-2025-0001.json"
    url: str
    sha512: str
    version: str
    current_release_date: str


def encode_document(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("-", 1)[0].split("+", 1)[0].split(".") if p.isdigit())


class ProviderTree:
    """Writes advisories into the trusted-provider layout and keeps its indexes consistent."""

    def __init__(self, root: Path, config: ProviderConfig) -> None:
        self.root = root
        self.config = config
        self.csaf_dir = root / WELL_KNOWN
        self.white = self.csaf_dir / DISTRIBUTION

    def publish(self, doc: dict[str, Any], signer: OpenPgpSigner, *, now: dt.datetime) -> PublishedAdvisory:
        """Write one advisory (new, or a newer revision of a published one) with its hash and signature."""
        check_mandatory(doc)
        document = doc["document"]
        label = document.get("distribution", {}).get("tlp", {}).get("label")
        if label != "WHITE":
            raise PublicationError(f"only TLP:WHITE documents go on the public tree, not TLP:{label}")
        if document["tracking"]["status"] == "draft":
            raise PublicationError("draft documents are not published")
        tracking = document["tracking"]
        year = tracking["initial_release_date"][:4]
        rel = f"{year}/{advisory_filename(tracking['id'])}"
        target = self.white / rel
        data = encode_document(doc)
        if target.exists():
            self._check_newer(target, data, tracking["version"])
        digest = hashlib.sha512(data).hexdigest()
        atomic_write(target.with_name(target.name + ".asc"), signer.sign_detached(data))
        atomic_write(target.with_name(target.name + ".sha512"), f"{digest}  {target.name}\n".encode())
        atomic_write(target, data)
        self._update_indexes(rel, tracking["current_release_date"])
        self.write_metadata(signer, now=now)
        if self.config.rolie:
            self._write_rolie(now)
        return PublishedAdvisory(
            path=rel,
            url=f"{self.config.directory_url}/{rel}",
            sha512=digest,
            version=tracking["version"],
            current_release_date=tracking["current_release_date"],
        )

    def _check_newer(self, target: Path, data: bytes, version: str) -> None:
        old = json.loads(target.read_bytes())
        old_version = old["document"]["tracking"]["version"]
        if target.read_bytes() == data:
            return
        if _version_key(version) <= _version_key(old_version):
            # Re-publishing must move forward: a changed document needs a new revision (CSAF 3.2.1.12.8).
            raise PublicationError(f"{target.name}: version {version} is not newer than published {old_version}")

    def _update_indexes(self, rel: str, date: str) -> None:
        changes = {path: when for path, when in self.changes()}
        changes[rel] = date
        rows = sorted(changes.items(), key=lambda item: (item[1], item[0]), reverse=True)
        out = io.StringIO()
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerows(rows)
        atomic_write(self.white / "changes.csv", out.getvalue().encode())
        atomic_write(self.white / "index.txt", "".join(f"{p}\n" for p in sorted(changes)).encode())

    def changes(self) -> list[tuple[str, str]]:
        """The (path, current_release_date) lines of changes.csv, newest first."""
        path = self.white / "changes.csv"
        if not path.exists():
            return []
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        for row in rows:
            if len(row) != 2:
                raise PublicationError(f"changes.csv has a malformed line: {row!r}")
        return [(row[0], row[1]) for row in rows]

    def metadata(self, signer: OpenPgpSigner, *, now: dt.datetime) -> dict[str, Any]:
        publisher = self.config.publisher
        distributions: list[dict[str, Any]] = [{"directory_url": self.config.directory_url}]
        if self.config.rolie:
            feed = {
                "summary": f"TLP:WHITE advisories of {publisher.name}",
                "tlp_label": "WHITE",
                "url": f"{self.config.directory_url}/{ROLIE_FEED}",
            }
            distributions.append({"rolie": {"feeds": [feed]}})
        publisher_json: dict[str, Any] = {
            "category": publisher.category,
            "name": publisher.name,
            "namespace": publisher.namespace,
        }
        if publisher.contact_details:
            publisher_json["contact_details"] = publisher.contact_details
        return {
            "canonical_url": f"{self.config.csaf_url}/provider-metadata.json",
            "distributions": distributions,
            "last_updated": timestamp(now),
            "list_on_CSAF_aggregators": self.config.list_on_aggregators,
            "metadata_version": "2.0",
            "mirror_on_CSAF_aggregators": self.config.mirror_on_aggregators,
            "public_openpgp_keys": [
                {"fingerprint": signer.fingerprint, "url": f"{self.config.csaf_url}/openpgp/{signer.fingerprint}.asc"}
            ],
            "publisher": publisher_json,
            "role": "csaf_trusted_provider",
        }

    def write_metadata(self, signer: OpenPgpSigner, *, now: dt.datetime) -> None:
        atomic_write(self.csaf_dir / "openpgp" / f"{signer.fingerprint}.asc", signer.public_key())
        metadata = encode_document(self.metadata(signer, now=now))
        atomic_write(self.csaf_dir / "provider-metadata.json", metadata)

    def _write_rolie(self, now: dt.datetime) -> None:
        entries = []
        for rel, _ in self.changes():
            doc = json.loads((self.white / rel).read_bytes())
            tracking = doc["document"]["tracking"]
            url = f"{self.config.directory_url}/{rel}"
            entries.append(
                {
                    "id": tracking["id"],
                    "title": doc["document"]["title"],
                    "link": [
                        {"rel": "self", "href": url},
                        {"rel": "hash", "href": f"{url}.sha512"},
                        {"rel": "signature", "href": f"{url}.asc"},
                    ],
                    "published": tracking["initial_release_date"],
                    "updated": tracking["current_release_date"],
                    "content": {"type": "application/json", "src": url},
                    "format": {"schema": CSAF_SCHEMA_URL, "version": "2.0"},
                }
            )
        feed = {
            "feed": {
                "id": f"{advisory_filename(self.config.publisher.name)[:-5]}-csaf-feed-tlp-white",
                "title": f"{self.config.publisher.name} CSAF feed (TLP:WHITE)",
                "link": [{"rel": "self", "href": f"{self.config.directory_url}/{ROLIE_FEED}"}],
                "category": [{"scheme": "urn:ietf:params:rolie:category:information-type", "term": "csaf"}],
                "updated": timestamp(now),
                "entry": entries,
            }
        }
        atomic_write(self.white / ROLIE_FEED, encode_document(feed))


def verify_sha512(path: Path) -> str:
    """Check ``path`` against ``path.sha512`` (``<hex>  <name>``); returns the digest."""
    try:
        data = path.read_bytes()
        line = path.with_name(path.name + ".sha512").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise AdvisoryIntegrityError(f"{path.name}: cannot read the file or its .sha512: {e}") from e
    expected = line.split()[0].lower() if line else ""
    actual = hashlib.sha512(data).hexdigest()
    if not hmac.compare_digest(expected, actual):
        raise AdvisoryIntegrityError(f"{path.name}: SHA-512 does not match its .sha512 file")
    return actual


def verify_published(path: Path, public_key: bytes, fingerprint: str) -> dict[str, Any]:
    """Check a published advisory's .sha512 and .asc; return the document only if both hold."""
    verify_sha512(path)
    data = path.read_bytes()
    try:
        signature = path.with_name(path.name + ".asc").read_bytes()
    except OSError as e:
        raise AdvisoryIntegrityError(f"{path.name}: no .asc signature: {e}") from e
    verify_detached(data, signature, public_key, fingerprint)
    result: dict[str, Any] = json.loads(data)
    return result
