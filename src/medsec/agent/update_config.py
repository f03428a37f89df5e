"""The ``update`` section of the agent's settings (signed updates, SM-1).

::

    "update": {
      "product": "infusion-pump",
      "health_checks": [{"type": "command", "argv": ["bin/selftest"], "timeout_seconds": 30}],
      "maintenance": {"timezone": "Asia/Tokyo", "weekly": [...]},
      "clinical_use": {"flag_file": "run/in-clinical-use"},
      "max_attempts": 3,
      "poll_seconds": 3600,
      "retry_seconds": 60
    }

Only ``product`` is required. Without ``maintenance`` the device may install at any time it is
not in clinical use; a window the hospital sets in the portal reaches the device signed by the
director and overrides this default. The trust roots are not configured here: they are part of
the device image (``ROOT/usr/share/medsec/trust/{image,director}-root.json``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.errors import ConfigError
from medsec.updates.device_errors import UpdateSettingsError
from medsec.updates.health import HealthChecker
from medsec.updates.window import ClinicalUseProbe, CommandProbe, FlagFileProbe, MaintenancePolicy, NeverInUse

_PRODUCT_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_FIELDS = frozenset(
    {"product", "health_checks", "maintenance", "clinical_use", "max_attempts", "poll_seconds", "retry_seconds"}
)
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS = 20
DEFAULT_POLL_SECONDS = 3600
DEFAULT_RETRY_SECONDS = 60
MAX_WAIT_SECONDS = 24 * 3600


@dataclass(frozen=True)
class UpdateConfig:
    product: str
    health: HealthChecker
    maintenance: MaintenancePolicy
    clinical_use: ClinicalUseProbe
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    poll_seconds: int = DEFAULT_POLL_SECONDS
    retry_seconds: int = DEFAULT_RETRY_SECONDS


def parse_update_section(root: Path, value: Any) -> UpdateConfig | None:
    """Validate the ``update`` section; raise ConfigError naming the bad field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError("field 'update' must be a JSON object")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown field 'update.{unknown[0]}' (known: {', '.join(sorted(_FIELDS))})")
    product = value.get("product")
    if not isinstance(product, str) or not _PRODUCT_RE.fullmatch(product):
        raise ConfigError("field 'update.product' must be a product name (lower-case letters, digits, '.', '_', '-')")
    try:
        health = HealthChecker.from_config(value.get("health_checks", []))
    except UpdateSettingsError as e:
        raise ConfigError(f"field 'update.health_checks': {e}") from None
    try:
        maintenance = MaintenancePolicy.from_mapping(value.get("maintenance", {"always": True}))
    except UpdateSettingsError as e:
        raise ConfigError(f"field 'update.maintenance': {e}") from None
    return UpdateConfig(
        product=product,
        health=health,
        maintenance=maintenance,
        clinical_use=_clinical_use(root, value.get("clinical_use")),
        max_attempts=_int(value, "max_attempts", DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS),
        poll_seconds=_int(value, "poll_seconds", DEFAULT_POLL_SECONDS, MAX_WAIT_SECONDS),
        retry_seconds=_int(value, "retry_seconds", DEFAULT_RETRY_SECONDS, MAX_WAIT_SECONDS),
    )


def _int(data: dict[str, Any], name: str, default: int, high: int) -> int:
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise ConfigError(f"field 'update.{name}' must be an integer from 1 to {high}")
    return value


def _clinical_use(root: Path, value: Any) -> ClinicalUseProbe:
    if value is None:
        return NeverInUse()
    if not isinstance(value, dict) or len(value.keys() - {"timeout_seconds"}) != 1:
        raise ConfigError('field \'update.clinical_use\' must be {"flag_file": PATH} or {"command": [ARGV...]}')
    if "flag_file" in value:
        path = value["flag_file"]
        if not isinstance(path, str) or not path or "\x00" in path or "timeout_seconds" in value:
            raise ConfigError("field 'update.clinical_use.flag_file' must be a non-empty path string")
        flag = Path(path)
        return FlagFileProbe(flag if flag.is_absolute() else root / flag)
    if "command" in value:
        argv = value["command"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise ConfigError("field 'update.clinical_use.command' must be a non-empty list of strings")
        timeout = value.get("timeout_seconds", 10)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 600:
            raise ConfigError("field 'update.clinical_use.timeout_seconds' must be above 0 and at most 600")
        program = Path(argv[0])
        if not program.is_absolute() and "/" in argv[0]:
            argv = [str(root / program), *argv[1:]]
        return CommandProbe(tuple(argv), float(timeout))
    raise ConfigError("field 'update.clinical_use' must name 'flag_file' or 'command'")
