"""PA-1, PA-2, RL-1: the periodic drift check over a real device namespace and a fake sysfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsec.protect.drift import PortGuard
from medsec.protect.events import ProtectionEvent
from medsec.protect.ports import ConsoleGate, PortPolicy

from .test_ports_lab import CONSOLE_PORT, DEVICE_CLIN, DEVICE_SVC, GATEWAY, GATEWAY_PORT, Lab, ip, lab, nft, policy_doc
from .test_usb_sysfs import FakeSysfs

__all__ = ["lab"]
pytestmark = [pytest.mark.req("PA-2"), pytest.mark.req("RL-1")]


def _rules(events: list[ProtectionEvent]) -> list[tuple[str, str]]:
    return [(e.action, e.rule) for e in events]


def _guard(lab: Lab, tmp_path: Path, **doc: object) -> tuple[PortGuard, FakeSysfs, ConsoleGate]:
    policy = PortPolicy.from_json(policy_doc(**doc))
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.controller(1)
    console = ConsoleGate(policy, tmp_path / "state")
    guard = PortGuard(
        policy, netns=lab.device, sysfs_root=sysfs.root, console=console, state_path=tmp_path / "state/drift.json"
    )
    return guard, sysfs, console


def test_clean_device_has_no_drift(lab: Lab, tmp_path: Path) -> None:
    guard, _, _ = _guard(lab, tmp_path)
    applied = guard.apply()
    assert ("applied", "ruleset_applied") in _rules(applied)
    lab.listen(lab.device, "tcp", "0.0.0.0", GATEWAY_PORT)
    assert guard.check() == []
    assert lab.probe(lab.service, [(GATEWAY, DEVICE_SVC, GATEWAY_PORT)]) == ["open"]


def test_tampered_ruleset_is_reported_once_and_reapplied(lab: Lab, tmp_path: Path) -> None:
    guard, _, _ = _guard(lab, tmp_path)
    guard.apply()
    lab.listen(lab.device, "tcp", "0.0.0.0", 8080)
    nft(lab.device, "insert", "rule", "inet", "medsec", "input", "tcp", "dport", "8080", "accept")
    assert lab.probe(lab.clinical, [(None, DEVICE_CLIN, 8080)]) == ["open"]  # the hole works...
    events = guard.check()
    assert ("drift", "ruleset_changed") in _rules(events) and ("applied", "ruleset_reapplied") in _rules(events)
    assert lab.probe(lab.clinical, [(None, DEVICE_CLIN, 8080)]) == ["timeout"]  # ...until the guard closes it
    remaining = _rules(guard.check())
    assert ("drift", "ruleset_changed") not in remaining
    nft(lab.device, "flush", "chain", "inet", "medsec", "input")  # a second, different attack
    assert ("drift", "ruleset_changed") in _rules(guard.check())


def test_unexpected_listener_is_reported_once_until_it_changes(lab: Lab, tmp_path: Path) -> None:
    guard, _, _ = _guard(lab, tmp_path)
    guard.apply()
    rogue = lab.listen(lab.device, "tcp", "0.0.0.0", 4444)
    assert _rules(guard.check()) == [("drift", "listening_port_not_in_policy")]
    assert guard.check() == []  # same drift: not again
    # A separate check (another process, after a restart) remembers it too.
    again = PortGuard(guard.policy, netns=lab.device, state_path=guard.state_path)
    assert again.check() == []
    lab.stop(rogue)
    assert guard.check() == []
    lab.listen(lab.device, "tcp", "0.0.0.0", 4444)
    assert _rules(guard.check()) == [("drift", "listening_port_not_in_policy")]


def test_extra_interface_is_brought_down_each_time(lab: Lab, tmp_path: Path) -> None:
    guard, _, _ = _guard(lab, tmp_path)
    guard.apply()
    lab.extra_link("eth9")
    for _ in range(2):
        ip("-n", lab.device, "link", "set", "eth9", "up")
        assert _rules(guard.check()) == [
            ("drift", "interface_not_in_policy"),
            ("applied", "interface_brought_down"),
        ]
        assert not lab.link_up(lab.device, "eth9")


def test_usb_device_and_console_drift(lab: Lab, tmp_path: Path) -> None:
    now = [1_000.0]
    guard, sysfs, _ = _guard(lab, tmp_path)
    console = ConsoleGate(guard.policy, tmp_path / "state", lambda: now[0])
    guard.console = console
    guard.apply()
    rogue = sysfs.device("1-2", "dead", "beef", authorized="1")
    assert _rules(guard.check()) == [
        ("drift", "usb_device_authorized_not_in_policy"),
        ("deny", "usb_device_deauthorised"),
    ]
    assert (rogue / "authorized").read_text().strip() == "0"
    assert guard.check() == []
    console.open("s-7", "ticket", 1_300)
    lab.listen(lab.device, "tcp", "0.0.0.0", CONSOLE_PORT)
    assert guard.check() == []  # maintenance is on: the console may listen
    now[0] = 1_301.0
    assert sorted(_rules(guard.check())) == [
        ("drift", "console_port_without_ticket"),
        ("drift", "console_without_ticket"),
    ]


def test_a_part_that_cannot_be_checked_does_not_stop_the_others(lab: Lab, tmp_path: Path) -> None:
    guard, _, _ = _guard(lab, tmp_path)
    guard.apply()
    guard.sysfs_root = tmp_path / "no-sysfs"
    lab.listen(lab.device, "tcp", "0.0.0.0", 4444)
    events = guard.check()
    assert ("error", "usb_check_failed") in _rules(events)
    assert ("drift", "listening_port_not_in_policy") in _rules(events)


def test_monitor_mode_reports_ruleset_drift_without_reapplying(lab: Lab, tmp_path: Path) -> None:
    guard, _, _ = _guard(lab, tmp_path, mode="monitor")
    guard.apply()
    nft(lab.device, "delete", "table", "inet", "medsec")
    assert _rules(guard.check()) == [("drift", "ruleset_missing")]
    assert "medsec" not in nft(lab.device, "list", "tables")
