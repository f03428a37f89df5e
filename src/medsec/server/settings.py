"""Server settings, read from ``MEDSEC_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
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
    enrollment_token_hours: int = Field(default=72, ge=1, le=24 * 30)
    max_request_bytes: int = Field(default=256 * 1024, description="largest JSON request body accepted")
    login_max_failures: int = Field(default=5, description="failed logins before a temporary lockout")
    login_lockout_minutes: int = Field(default=15)
    witness_keys: list[str] = Field(
        default_factory=list,
        description="verifier keys (name+keyid+base64) of witnesses whose cosignatures on audit checkpoints are kept",
    )

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'medsec.db').resolve()}"
