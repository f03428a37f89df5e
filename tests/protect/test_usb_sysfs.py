"""PA-2: USB default-deny through sysfs, against a fake sysfs tree with the kernel's shape.

The tree mirrors a real one: ``devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/...`` holds the
attribute files, and ``bus/usb/devices/<name>`` are symlinks to them, as the kernel lays it out.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medsec.protect.errors import PortPolicyError
from medsec.protect.ports import PortPolicy
from medsec.protect.usb import apply_usb_policy, scan_devices

from .test_ports_lab import policy_doc

pytestmark = [pytest.mark.req("PA-2")]

STICK = {"vendor": "0781", "product": "5581", "serial": "SVC-STICK-01"}


class FakeSysfs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bus = root / "bus/usb/devices"
        self.bus.mkdir(parents=True)
        self.pci = root / "devices/pci0000:00/0000:00:14.0"

    def _node(self, parent: Path, name: str, attrs: dict[str, str]) -> Path:
        path = parent / name
        path.mkdir(parents=True)
        for key, value in attrs.items():
            (path / key).write_text(value + "\n")
        os.symlink(os.path.relpath(path, self.bus), self.bus / name)
        return path

    def controller(self, n: int = 1, default: str = "1") -> Path:
        attrs = {
            "authorized_default": default,
            "interface_authorized_default": "1",
            "authorized": "1",
            "idVendor": "1d6b",
            "idProduct": "0002",
        }
        ctrl = self._node(self.pci, f"usb{n}", attrs)
        self._node(ctrl, f"{n}-0:1.0", {"bInterfaceClass": "09", "authorized": "1"})
        return ctrl

    def device(
        self,
        name: str,
        vendor: str,
        product: str,
        *,
        serial: str | None = None,
        authorized: str = "1",
        classes: tuple[str, ...] = ("08",),
    ) -> Path:
        bus_no = name.split("-", maxsplit=1)[0]
        attrs = {"idVendor": vendor, "idProduct": product, "authorized": authorized, "bDeviceClass": "00"}
        if serial is not None:
            attrs["serial"] = serial
        dev = self._node(self.pci / f"usb{bus_no}", name, attrs)
        for i, cls in enumerate(classes):
            self._node(dev, f"{name}:1.{i}", {"bInterfaceClass": cls, "authorized": "1"})
        return dev


def _value(path: Path) -> str:
    return path.read_text().strip()


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSysfs:
    fake = FakeSysfs(tmp_path / "sys")
    fake.controller(1)
    fake.controller(2, default="-1")
    return fake


def test_default_deny_is_written_to_every_controller(sysfs: FakeSysfs) -> None:
    events = apply_usb_policy(PortPolicy.from_json(policy_doc()), sysfs.root)
    for n in (1, 2):
        assert _value(sysfs.bus / f"usb{n}/authorized_default") == "0"
        assert _value(sysfs.bus / f"usb{n}/interface_authorized_default") == "0"
    assert [(e.action, e.rule) for e in events] == [("applied", "usb_default_deny")] * 4
    # Root hubs themselves stay authorised: they are the controllers, not devices.
    assert _value(sysfs.bus / "usb1/authorized") == "1"


def test_allow_listed_device_is_authorised_and_unknown_device_deauthorised(sysfs: FakeSysfs) -> None:
    stick = sysfs.device("1-1", "0781", "5581", serial="SVC-STICK-01", authorized="0")
    rogue = sysfs.device("1-2", "05ac", "12a8", serial="X", authorized="1")
    events = apply_usb_policy(PortPolicy.from_json(policy_doc()), sysfs.root)
    assert _value(stick / "authorized") == "1"
    assert _value(rogue / "authorized") == "0"
    usb_events = {(e.action, e.rule, Path(e.object.path).name) for e in events if e.object and "default" not in e.rule}
    assert usb_events == {
        ("allow", "usb_device_allowed", "1-1"),
        ("drift", "usb_device_authorized_not_in_policy", "1-2"),
        ("deny", "usb_device_deauthorised", "1-2"),
    }


def test_same_model_with_another_serial_is_refused(sysfs: FakeSysfs) -> None:
    clone = sysfs.device("2-1", "0781", "5581", serial="SOMEONE-ELSES", authorized="0")
    events = apply_usb_policy(PortPolicy.from_json(policy_doc()), sysfs.root)
    assert _value(clone / "authorized") == "0"
    assert [e.rule for e in events if e.object and e.object.path.endswith("2-1")] == ["usb_device_not_in_policy"]


def test_hid_interface_on_an_allowed_stick_is_deauthorised(sysfs: FakeSysfs) -> None:
    # A "memory stick" that also offers a keyboard (HID, class 03): only the storage interface is kept.
    stick = sysfs.device("1-3", **STICK, authorized="0", classes=("08", "03"))
    events = apply_usb_policy(PortPolicy.from_json(policy_doc()), sysfs.root)
    assert _value(stick / "authorized") == "1"
    assert _value(stick / "1-3:1.0/authorized") == "1"
    assert _value(stick / "1-3:1.1/authorized") == "0"
    [hid] = [e for e in events if e.rule == "usb_interface_deauthorised"]
    assert hid.action == "deny" and "class 03" in hid.detail


def test_device_plugged_in_later_is_found_on_the_next_scan(sysfs: FakeSysfs) -> None:
    policy = PortPolicy.from_json(policy_doc())
    apply_usb_policy(policy, sysfs.root)
    assert scan_devices(sysfs.root) == []
    late = sysfs.device("2-4", "1234", "5678", authorized="1")
    events = apply_usb_policy(policy, sysfs.root)
    assert _value(late / "authorized") == "0"
    assert [e.rule for e in events] == ["usb_device_authorized_not_in_policy", "usb_device_deauthorised"]


def test_second_run_changes_nothing(sysfs: FakeSysfs) -> None:
    policy = PortPolicy.from_json(policy_doc())
    sysfs.device("1-1", **STICK, authorized="0")
    sysfs.device("1-2", "dead", "beef", authorized="1")
    apply_usb_policy(policy, sysfs.root)
    before = {p: p.stat().st_mtime_ns for p in sysfs.root.rglob("authorized*")}
    events = apply_usb_policy(policy, sysfs.root)
    assert {p: p.stat().st_mtime_ns for p in sysfs.root.rglob("authorized*")} == before
    assert [(e.action, e.rule) for e in events] == [("deny", "usb_device_not_in_policy")]


def test_monitor_mode_writes_nothing(sysfs: FakeSysfs) -> None:
    rogue = sysfs.device("1-2", "dead", "beef", authorized="1")
    events = apply_usb_policy(PortPolicy.from_json(policy_doc(mode="monitor")), sysfs.root)
    assert _value(rogue / "authorized") == "1"
    assert _value(sysfs.bus / "usb1/authorized_default") == "1"
    assert {e.action for e in events} == {"would_deny", "drift"}


def test_missing_usb_subsystem_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PortPolicyError, match="no USB subsystem"):
        apply_usb_policy(PortPolicy.from_json(policy_doc()), tmp_path)


def test_unwritable_authorized_file_is_an_error(sysfs: FakeSysfs) -> None:
    rogue = sysfs.device("1-2", "dead", "beef", authorized="1")
    (rogue / "authorized").unlink()
    # A read-only kernel file: readable ("Linux", so not "0"), and a write fails even for root.
    (rogue / "authorized").symlink_to("/proc/sys/kernel/ostype")
    with pytest.raises(PortPolicyError, match="cannot write '0'"):
        apply_usb_policy(PortPolicy.from_json(policy_doc()), sysfs.root)
