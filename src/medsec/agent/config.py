"""The agent's settings (``ROOT/etc/medsec/agent.json``) and the paths under the device root.

Relative paths in the settings are taken relative to the device root, so a
simulated device is fully described by its root folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from medsec.errors import ConfigError
from medsec.protocol import MAX_FIELD

if TYPE_CHECKING:
    from medsec.agent.protection import ProtectionConfig
    from medsec.agent.update_config import UpdateConfig

CONFIG_RELPATH = Path("etc/medsec/agent.json")
DEFAULT_VERSION_RELPATH = Path("etc/medsec/version")
MAX_CONFIG_BYTES = 64 * 1024

DEFAULT_CHECKIN_INTERVAL = 60
MAX_CHECKIN_INTERVAL = 24 * 3600
DEFAULT_RETRY_INITIAL = 5
DEFAULT_RETRY_MAX = 300
DEFAULT_HEARTBEAT = 5
MAX_HEARTBEAT = 300

# The serial goes into a URL path and into the access log's origin line, so it
# is kept to characters that need no escaping in either.
_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

_KNOWN_FIELDS = frozenset(
    {
        "server_url",
        "serial",
        "hardware_id",
        "checkin_interval_seconds",
        "enrollment_token_file",
        "version_file",
        "ca_file",
        "retry_initial_seconds",
        "retry_max_seconds",
        "heartbeat_seconds",
        "update",
        "protection",
    }
)


@dataclass(frozen=True)
class DeviceLayout:
    """Where the agent keeps its files under one device root."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_RELPATH

    @property
    def state_dir(self) -> Path:
        return self.root / "var/lib/medsec"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "device.key"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "agent.lock"

    @property
    def heartbeat_file(self) -> Path:
        return self.state_dir / "heartbeat.json"

    @property
    def access_log_dir(self) -> Path:
        return self.root / "var/log/medsec/access-log"


@dataclass(frozen=True)
class AgentConfig:
    root: Path
    server_url: str  # without a trailing slash
    serial: str
    hardware_id: str
    version_file: Path
    checkin_interval_seconds: int = DEFAULT_CHECKIN_INTERVAL
    enrollment_token_file: Path | None = None
    ca_file: Path | None = None  # extra trust anchor for an https server_url
    retry_initial_seconds: int = DEFAULT_RETRY_INITIAL
    retry_max_seconds: int = DEFAULT_RETRY_MAX
    heartbeat_seconds: int = DEFAULT_HEARTBEAT  # how stale the 'last seen alive' time of a crash can be
    update: UpdateConfig | None = None  # signed updates (medsec.agent.update_config)
    protection: ProtectionConfig | None = None  # allowlist, integrity, ports (medsec.agent.protection)

    @property
    def layout(self) -> DeviceLayout:
        return DeviceLayout(self.root)

    @property
    def log_origin(self) -> str:
        return f"medsec-device/{self.serial}"

    @classmethod
    def load(cls, root: Path) -> AgentConfig:
        """Read and validate ``ROOT/etc/medsec/agent.json``; raise ConfigError naming the bad field."""
        path = DeviceLayout(root).config_file
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError as e:
            raise ConfigError(f"agent config {path} does not exist") from e
        except OSError as e:
            raise ConfigError(f"cannot read agent config {path}: {e.strerror}") from e
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"agent config {path} is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"agent config {path} is not valid JSON: {e}") from e
        try:
            return cls.from_mapping(root, data)
        except ConfigError as e:
            raise ConfigError(f"agent config {path}: {e}") from None

    @classmethod
    def from_mapping(cls, root: Path, data: Any) -> AgentConfig:
        if not isinstance(data, dict):
            raise ConfigError("the top level must be a JSON object")
        unknown = sorted(set(data) - _KNOWN_FIELDS)
        if unknown:
            raise ConfigError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_KNOWN_FIELDS))})")
        root = root.absolute()
        retry_initial = _int_field(data, "retry_initial_seconds", DEFAULT_RETRY_INITIAL, 1, MAX_CHECKIN_INTERVAL)
        retry_max = _int_field(data, "retry_max_seconds", DEFAULT_RETRY_MAX, 1, MAX_CHECKIN_INTERVAL)
        if retry_max < retry_initial:
            raise ConfigError("field 'retry_max_seconds' must not be smaller than 'retry_initial_seconds'")
        version_file = _path_field(root, data, "version_file")
        return cls(
            root=root,
            server_url=_server_url(data),
            serial=_serial(data),
            hardware_id=_text_field(data, "hardware_id"),
            version_file=version_file or root / DEFAULT_VERSION_RELPATH,
            checkin_interval_seconds=_int_field(
                data, "checkin_interval_seconds", DEFAULT_CHECKIN_INTERVAL, 1, MAX_CHECKIN_INTERVAL
            ),
            enrollment_token_file=_path_field(root, data, "enrollment_token_file"),
            ca_file=_path_field(root, data, "ca_file"),
            retry_initial_seconds=retry_initial,
            retry_max_seconds=retry_max,
            heartbeat_seconds=_int_field(data, "heartbeat_seconds", DEFAULT_HEARTBEAT, 1, MAX_HEARTBEAT),
            update=_update_section(root, data.get("update")),
            protection=_protection_section(root, data),
        )


def _update_section(root: Path, value: Any) -> UpdateConfig | None:
    if value is None:
        return None
    # Imported only when configured, so agents without updates load no update code.
    from medsec.agent.update_config import parse_update_section

    return parse_update_section(root, value)


def _protection_section(root: Path, data: dict[str, Any]) -> ProtectionConfig | None:
    if data.get("protection") is None:
        return None
    from medsec.agent.protection import parse_protection_section  # protection code only when configured

    update = data.get("update")
    product = update.get("product") if isinstance(update, dict) else None
    return parse_protection_section(root, data["protection"], product if isinstance(product, str) else None)


def _required(data: dict[str, Any], name: str) -> Any:
    if name not in data or data[name] is None:
        raise ConfigError(f"field {name!r} is required")
    return data[name]


def _text_field(data: dict[str, Any], name: str) -> str:
    value = _required(data, name)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"field {name!r} must be a non-empty string")
    if len(value) > MAX_FIELD or _CONTROL_RE.search(value):
        raise ConfigError(f"field {name!r} must be at most {MAX_FIELD} characters without control characters")
    return value


def _serial(data: dict[str, Any]) -> str:
    value = _text_field(data, "serial")
    if not _SERIAL_RE.fullmatch(value):
        raise ConfigError("field 'serial' may only hold letters, digits, '.', '_' and '-' (at most 128)")
    return value


def _server_url(data: dict[str, Any]) -> str:
    value = _text_field(data, "server_url")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as e:
        raise ConfigError(f"field 'server_url' is not a valid URL: {e}") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("field 'server_url' must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("field 'server_url' must not carry credentials, a query or a fragment")
    return value.rstrip("/")


def _int_field(data: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"field {name!r} must be an integer from {low} to {high}")
    return value


def _path_field(root: Path, data: dict[str, Any], name: str) -> Path | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"field {name!r} must be a non-empty path string")
    path = Path(value)
    return path if path.is_absolute() else root / path
