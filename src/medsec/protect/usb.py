"""USB default-deny through the kernel's sysfs authorisation files (PA-2).

The kernel lets user space decide which USB devices may be used (Documentation/usb/authorization):

* ``/sys/bus/usb/devices/usbN/authorized_default`` — 0 makes every device plugged in behind host
  controller N arrive unauthorised: it is enumerated (its ids are readable) but not configured, so
  no driver talks to it;
* ``usbN/interface_authorized_default`` — 0 keeps the interfaces of an authorised device unbound
  until each is authorised, so a device that claims to be a memory stick but also carries a keyboard
  interface gets only the interface the policy names;
* ``/sys/bus/usb/devices/B-P[.P...]/authorized`` — 1 authorises (configures) a device, 0 unbinds its
  drivers and deconfigures it; ``B-P:C.I/authorized`` does the same per interface.

:func:`apply_usb_policy` writes 0 to the defaults of every controller, then walks the devices: a
device matching an ``usb.allow`` entry (vendor, product and, where given, serial) is authorised and
its interfaces are authorised only if their class matches the entry's ``interface_class``; every other
device is deauthorised. A device plugged in later is a new directory and is handled on the next
scan. In ``monitor`` mode nothing is written and refusals are reported as ``would_deny``.

Events (category ``usb``): ``usb_default_deny`` (applied), ``usb_device_allowed`` (allow),
``usb_device_authorized_not_in_policy`` (drift), ``usb_device_deauthorised`` (deny: we wrote 0),
``usb_device_not_in_policy`` (deny: it stays unauthorised), ``usb_interface_deauthorised`` (deny);
in monitor mode ``would_deny`` instead of a write.

The sysfs root is a parameter so tests run against a tree of plain files with the kernel's shape.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from medsec.protect.errors import PortPolicyError
from medsec.protect.events import Object, ProtectionEvent
from medsec.protect.ports import PortPolicy, UsbAllow

logger = logging.getLogger(__name__)

DEVICES_RELPATH = Path("bus/usb/devices")
_CONTROLLER_RE = re.compile(r"^usb\d+$")
_DEVICE_RE = re.compile(r"^\d+-\d+(\.\d+)*$")
_INTERFACE_RE = re.compile(r"^\d+-\d+(\.\d+)*:\d+\.\d+$")


@dataclass(frozen=True)
class UsbDevice:
    """What sysfs says about one USB device (not a root hub, not an interface)."""

    path: Path
    vendor: str
    product: str
    serial: str | None
    authorized: bool

    @property
    def label(self) -> str:
        serial = f" serial {self.serial[:60]!r}" if self.serial is not None else ""
        return f"{self.vendor}:{self.product}{serial} at {self.path.name}"


def _read(path: Path) -> str | None:
    """A sysfs attribute without its newline; None when the file (or the device) is gone."""
    try:
        return path.read_text("utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PortPolicyError(f"cannot read {path}: {e.strerror}") from e


def _write(path: Path, value: str) -> bool:
    """Write a sysfs attribute; False when the device was unplugged meanwhile."""
    try:
        with path.open("w", encoding="ascii") as f:
            f.write(value)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise PortPolicyError(f"cannot write {value!r} to {path}: {e.strerror}") from e
    return True


def devices_dir(sysfs_root: Path) -> Path:
    path = sysfs_root / DEVICES_RELPATH
    if not path.is_dir():
        raise PortPolicyError(f"{path} does not exist: no USB subsystem under sysfs root {sysfs_root}")
    return path


def controllers(sysfs_root: Path) -> list[Path]:
    return sorted(p for p in devices_dir(sysfs_root).iterdir() if _CONTROLLER_RE.match(p.name))


def scan_devices(sysfs_root: Path) -> list[UsbDevice]:
    """Every USB device present now (hubs included, root hubs and interfaces excluded)."""
    found: list[UsbDevice] = []
    for path in sorted(devices_dir(sysfs_root).iterdir()):
        if not _DEVICE_RE.match(path.name):
            continue
        vendor, product = _read(path / "idVendor"), _read(path / "idProduct")
        if vendor is None or product is None:
            continue  # unplugged while we looked
        found.append(
            UsbDevice(path, vendor.lower(), product.lower(), _read(path / "serial"), _read(path / "authorized") != "0")
        )
    return found


def interfaces_of(device: UsbDevice) -> list[Path]:
    prefix = device.path.name + ":"
    parent = device.path.parent
    return sorted(p for p in parent.iterdir() if p.name.startswith(prefix) and _INTERFACE_RE.match(p.name))


def match(device: UsbDevice, allow: tuple[UsbAllow, ...]) -> UsbAllow | None:
    """The first allow entry this device satisfies (vendor, product and serial where given)."""
    for entry in allow:
        same_model = entry.vendor == device.vendor and entry.product == device.product
        if same_model and (entry.serial is None or entry.serial == device.serial):
            return entry
    return None


def _event(policy: PortPolicy, action: str, rule: str, path: Path, detail: str) -> ProtectionEvent:
    return ProtectionEvent("usb", action, rule, mode=policy.mode, object=Object(path=str(path)), detail=detail)


def _apply_defaults(policy: PortPolicy, sysfs_root: Path) -> list[ProtectionEvent]:
    events: list[ProtectionEvent] = []
    for ctrl in controllers(sysfs_root):
        for name in ("authorized_default", "interface_authorized_default"):
            current = _read(ctrl / name)
            if current is None or current == "0":
                continue
            if policy.enforce and _write(ctrl / name, "0"):
                events.append(
                    _event(policy, "applied", "usb_default_deny", ctrl / name, f"{name} was {current}, now 0")
                )
            elif not policy.enforce:
                events.append(_event(policy, "would_deny", "usb_default_deny", ctrl / name, f"{name} is {current}"))
    return events


def _refuse(policy: PortPolicy, device: UsbDevice) -> list[ProtectionEvent]:
    events: list[ProtectionEvent] = []
    if device.authorized:
        events.append(
            _event(policy, "drift", "usb_device_authorized_not_in_policy", device.path, f"{device.label} is authorised")
        )
    if not policy.enforce:
        events.append(_event(policy, "would_deny", "usb_device_not_in_policy", device.path, device.label))
        return events
    if not device.authorized:
        events.append(_event(policy, "deny", "usb_device_not_in_policy", device.path, f"{device.label} is refused"))
    elif _write(device.path / "authorized", "0"):
        events.append(_event(policy, "deny", "usb_device_deauthorised", device.path, f"{device.label} deauthorised"))
    return events


def _admit(policy: PortPolicy, device: UsbDevice, entry: UsbAllow) -> list[ProtectionEvent]:
    events: list[ProtectionEvent] = []
    if not device.authorized and policy.enforce:
        if not _write(device.path / "authorized", "1"):
            return events
        events.append(_event(policy, "allow", "usb_device_allowed", device.path, f"{device.label} authorised"))
    # The kernel creates the interface directories when the device is configured (authorised).
    for iface in interfaces_of(device):
        iclass = (_read(iface / "bInterfaceClass") or "").lower()
        wanted = entry.interface_class is None or iclass == entry.interface_class
        current = _read(iface / "authorized")
        if current is None:
            continue
        if wanted and current != "1" and policy.enforce:
            _write(iface / "authorized", "1")
        elif not wanted:
            detail = f"interface {iface.name} class {iclass} of {device.label}; allowed {entry.interface_class}"
            if not policy.enforce:
                events.append(_event(policy, "would_deny", "usb_interface_class_not_allowed", iface, detail))
            elif current != "0":
                _write(iface / "authorized", "0")
                events.append(_event(policy, "deny", "usb_interface_deauthorised", iface, detail))
    return events


def apply_usb_policy(policy: PortPolicy, sysfs_root: Path = Path("/sys")) -> list[ProtectionEvent]:
    """Default-deny on every controller, then authorise or deauthorise each device present now.

    Idempotent: a second run with nothing plugged in or out writes nothing and reports only the
    devices it keeps refusing.
    """
    events = _apply_defaults(policy, sysfs_root)
    for device in scan_devices(sysfs_root):
        entry = match(device, policy.usb_allow)
        events.extend(_refuse(policy, device) if entry is None else _admit(policy, device, entry))
    if events:
        logger.info("USB policy v%d: %d event(s)", policy.version, len(events))
    return events
