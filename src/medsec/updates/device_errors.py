"""Errors of the device side of signed updates.

Grouped by fault, like the rest of :mod:`medsec.errors`::

    DeviceUpdateError
    ├── UpdateRejected                remote data that must not be installed (an attack or a bad release)
    │   ├── MetadataRejected          TUF metadata failed to verify: tampered, expired, rolled back, ...
    │   ├── AssignmentRejected        the director's assignment is not for this device
    │   │   └── WrongHardware         ... its hardware id is not this device's
    │   ├── DowngradeRefused          release counter not greater than the installed one (SM-6)
    │   ├── DirectorImageMismatch     director and image repository disagree on the target
    │   │   └── TargetNotInImageRepository
    │   ├── TargetRejected            the downloaded file does not match the verified target
    │   │   ├── TargetTooLong         the server sent more bytes than the target's length
    │   │   └── TargetHashMismatch
    │   └── BundleRejected            the bundle's content is unusable
    │       ├── ManifestMismatch      the manifest disagrees with the verified target
    │       └── UnsafeBundlePath      a member would land outside the slot
    ├── UpdateTransportError          the network failed; retrying may help
    ├── UpdateStateError              local update or slot state is missing or damaged
    ├── InstallerError                the installer backend failed or is unavailable
    ├── HealthCheckFailed             the new slot did not pass its health checks
    └── UpdateSettingsError           maintenance windows or health checks are misconfigured

Every error has a stable ``code`` for reports and the access log.
"""

from __future__ import annotations

from medsec.errors import Error


class DeviceUpdateError(Error):
    """Base of every device-side update failure."""

    code = "update_error"

    def diagnostics(self) -> str:
        return f"{self.code}: {self}"


class UpdateRejected(DeviceUpdateError):
    """Remote data failed verification; the device keeps its current version."""

    code = "rejected"


class MetadataRejected(UpdateRejected):
    code = "metadata_rejected"


class AssignmentRejected(UpdateRejected):
    code = "assignment_rejected"


class WrongHardware(AssignmentRejected):
    code = "wrong_hardware"


class DowngradeRefused(UpdateRejected):
    code = "downgrade_refused"


class DirectorImageMismatch(UpdateRejected):
    code = "director_image_mismatch"


class TargetNotInImageRepository(DirectorImageMismatch):
    code = "target_not_in_image_repository"


class TargetRejected(UpdateRejected):
    code = "target_rejected"


class TargetTooLong(TargetRejected):
    code = "target_too_long"


class TargetHashMismatch(TargetRejected):
    code = "target_hash_mismatch"


class BundleRejected(UpdateRejected):
    code = "bundle_rejected"


class ManifestMismatch(BundleRejected):
    code = "manifest_mismatch"


class UnsafeBundlePath(BundleRejected):
    code = "unsafe_bundle_path"


class UpdateTransportError(DeviceUpdateError):
    code = "transport"


class UpdateStateError(DeviceUpdateError):
    code = "local_state"


class InstallerError(DeviceUpdateError):
    code = "installer"


class HealthCheckFailed(DeviceUpdateError):
    code = "health_check_failed"


class UpdateSettingsError(DeviceUpdateError):
    code = "settings"
