"""Server settings, read from ``MEDSEC_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSEC_", extra="ignore")

    data_dir: Path = Field(default=Path("./medsec-data"), description="keys, SQLite database, static trees")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is SQLite (WAL) at <data_dir>/medsec.db"
    )
    log_origin: str = Field(default="medsec.local/audit", description="origin line of the audit log checkpoints")
    public_url: str = Field(default="http://127.0.0.1:8000", description="URL devices and browsers use")
    session_hours: int = Field(default=8, ge=1, le=24 * 7, description="web session lifetime")
    secure_cookies: bool = Field(default=False, description="set the Secure flag on cookies (behind HTTPS)")
    checkin_interval_seconds: int = Field(default=60, ge=1, le=86400)
    checkin_batch_max: int = Field(
        default=64, ge=1, le=1024, description="check-ins committed together (group commit); 1 = one per transaction"
    )
    enrollment_token_hours: int = Field(default=72, ge=1, le=24 * 30)
    max_request_bytes: int = Field(default=256 * 1024, description="largest JSON request body accepted")
    login_max_failures: int = Field(default=5, description="failed logins before a temporary lockout")
    login_lockout_minutes: int = Field(default=15)
    witness_keys: list[str] = Field(
        default_factory=list,
        description="verifier keys (name+keyid+base64) of witnesses whose cosignatures on audit checkpoints are kept",
    )

    repo_path: Path | None = Field(default=None, description="TUF image repositories; default <data_dir>/repo")
    updates_tick_seconds: float = Field(
        default=30.0, ge=0, description="background step (re-signing, campaigns, notifications); 0 turns it off"
    )
    remote_tick_seconds: float = Field(
        default=60.0,
        ge=0,
        description="background check of remote-maintenance sessions (escalation, closed windows); 0 turns it off",
    )
    director_resign_before_hours: int = Field(
        default=12, ge=1, le=23, description="re-sign a device's director metadata when its timestamp expires sooner"
    )
    smtp_host: str | None = Field(default=None, description="SMTP relay for notification e-mail; unset = no e-mail")
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = Field(default="medsec@localhost", description="From address of notification e-mail")
    smtp_starttls: bool = Field(default=False)
    smtp_username: str | None = Field(default=None)
    smtp_password: str | None = Field(default=None, repr=False)
    notify_max_attempts: int = Field(default=8, ge=1, le=100, description="delivery attempts before giving up")

    feed_stale_days: int = Field(default=7, ge=1, description="warn when a vulnerability feed is older than this")
    feed_urls: dict[str, str] = Field(
        default_factory=lambda: {
            "osv-debian": "https://osv-vulnerabilities.storage.googleapis.com/Debian/all.zip",
            "osv-pypi": "https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip",
            "kev": "https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json",
            "epss": "https://epss.empiricalsecurity.com/epss_scores-current.csv.gz",
        },
        description="feed name -> URL for 'medsec feeds sync' (osv-*, nvd*, kev, epss)",
    )
    feed_bundle_keys: list[str] = Field(
        default_factory=list, description="base64 Ed25519 keys trusted to sign offline feed bundles"
    )
    sla_notice_days: int = Field(default=30, ge=1, description="customer notice deadline for critical or KEV items")
    sla_fix_days: int = Field(default=60, ge=1, description="fix deadline for critical or KEV items")
    csaf_base_url: str | None = Field(
        default=None, description="https URL the CSAF provider tree is served under; default public_url"
    )
    psirt_key_passphrase: str = Field(default="", repr=False, description="passphrase of the PSIRT OpenPGP key")
    display_timezone: str = Field(
        default="UTC",
        description="IANA time zone the portal shows times in (e.g. Asia/Tokyo); the API always answers in UTC",
    )

    @field_validator("display_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        # Refuse at startup rather than on the first page view.
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown IANA time zone {value!r}") from e
        return value

    @property
    def display_zone(self) -> ZoneInfo:
        return ZoneInfo(self.display_timezone)

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def repo_dir(self) -> Path:
        return self.repo_path or self.data_dir / "repo"

    @property
    def tuf_online_keys_dir(self) -> Path:
        """A copy of ``KEYS/online`` (image snapshot/timestamp and director online keys)."""
        return self.keys_dir / "tuf-online"

    @property
    def director_root_dir(self) -> Path:
        """A copy of ``KEYS/director`` (the director's ``N.root.json`` files)."""
        return self.keys_dir / "tuf-director"

    @property
    def csaf_root(self) -> Path:
        """Web root of the CSAF trusted-provider tree (``.well-known/csaf`` lives below it)."""
        return self.data_dir / "csaf"

    @property
    def psirt_key_dir(self) -> Path:
        return self.keys_dir / "psirt"

    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'medsec.db').resolve()}"
