"""One periodic comparison of the device's running state with its signed port policy (PA-1, PA-2, RL-1).

:class:`PortGuard` applies the policy once (:meth:`PortGuard.apply`) and then, on every
:meth:`PortGuard.check`, looks at the five things an attacker with a cable or a shell would change:

==========================  =====================================  ===================================
what                        drift rule                             correction (``mode: enforce``)
==========================  =====================================  ===================================
interfaces up               ``interface_not_in_policy``            brought down
sockets listening           ``listening_port_not_in_policy``       none (the firewall drops them)
the nftables table          ``ruleset_changed``/``ruleset_missing`` table applied again
USB devices                 ``usb_device_authorized_not_in_policy`` deauthorised
the service console         ``console_without_ticket``             none (reported)
==========================  =====================================  ===================================

A finding is reported once and again only after it went away and came back, so a device that
keeps an unknown stick plugged in does not flood the access log. Corrections (``applied``,
``allow``, ``usb_device_deauthorised``...) are actions the guard took and are always reported. The
table's fingerprint and the findings already reported live in a small state file, so the check
behaves the same across agent restarts and separate ``medsec protect ports check`` runs.

A part that cannot be checked (``nft`` missing, sysfs unreadable) becomes an ``error`` event of its
category instead of stopping the other parts: the device keeps running (RL-1) and the gap is visible.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medsec.atomic_file import atomic_write
from medsec.protect import netfilter, usb
from medsec.protect.errors import PortPolicyError
from medsec.protect.events import Object, ProtectionEvent
from medsec.protect.ports import ConsoleGate, PortPolicy, interface_events, socket_events

logger = logging.getLogger(__name__)

DRIFT_STATE_FILE = "port-drift.json"
# Events that record something the guard changed; each is reported every time it happens.
CORRECTION_ACTIONS = frozenset({"applied", "allow"})
CORRECTION_RULES = frozenset({"usb_device_deauthorised", "usb_interface_deauthorised", "interface_brought_down"})
# After a correction the next check observes its result; that is not news.
CORRECTION_OUTCOME = {"usb_device_deauthorised": ("deny", "usb_device_not_in_policy")}


def finding_key(event: ProtectionEvent) -> str:
    """What makes two findings the same: category, action, rule and the object concerned."""
    where = event.object.path if event.object is not None else ""
    return f"{event.category}|{event.action}|{event.rule}|{where}"


def _object_of(event: ProtectionEvent) -> tuple[str, str]:
    path = event.object.path if event.object is not None else None
    return (event.category, path or "")


def _outcome_key(event: ProtectionEvent) -> str:
    action, rule = CORRECTION_OUTCOME[event.rule]
    return finding_key(dataclasses.replace(event, action=action, rule=rule))


def is_correction(event: ProtectionEvent) -> bool:
    return event.action in CORRECTION_ACTIONS or event.rule in CORRECTION_RULES


@dataclass
class DriftState:
    """What the guard remembers between checks: the applied table's fingerprint and open findings."""

    ruleset_fingerprint: str | None = None
    policy_version: int | None = None
    reported: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, path: Path | None) -> DriftState:
        if path is None:
            return cls()
        try:
            raw = json.loads(path.read_text("utf-8"))
            return cls(raw.get("ruleset_fingerprint"), raw.get("policy_version"), set(raw.get("reported", [])))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError, AttributeError) as e:
            # A damaged record only means findings may be reported once more; start afresh.
            logger.warning("drift state %s is unreadable (%s); starting afresh", path, e)
            return cls()

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        value = {
            "ruleset_fingerprint": self.ruleset_fingerprint,
            "policy_version": self.policy_version,
            "reported": sorted(self.reported),
        }
        atomic_write(path, json.dumps(value, sort_keys=True, indent=1).encode("utf-8"), mode=0o600)


def _error_event(policy: PortPolicy, category: str, part: str, err: PortPolicyError) -> ProtectionEvent:
    return ProtectionEvent(category, "error", f"{part}_check_failed", mode=policy.mode, detail=err.diagnostics()[:500])


class PortGuard:
    """Applies a port policy and reports (and in enforce mode corrects) every departure from it.

    ``netns`` is the network namespace of the device (None: the one this process runs in);
    ``sysfs_root`` the sysfs to use for USB (None: skip USB, e.g. a device without USB);
    ``console`` the service-console gate (None: no console check).
    """

    def __init__(
        self,
        policy: PortPolicy,
        *,
        netns: str | None,
        sysfs_root: Path | None = None,
        console: ConsoleGate | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.policy = policy
        self.netns = netns
        self.sysfs_root = sysfs_root
        self.console = console
        self.state_path = state_path
        self.state = DriftState.load(state_path)
        if self.state.policy_version != policy.version:
            self.state = DriftState(None, policy.version)

    def apply(self) -> list[ProtectionEvent]:
        """Apply the whole policy now: the table, interfaces and USB. Raises PortPolicyError if the table fails."""
        self.state.ruleset_fingerprint = netfilter.apply_ruleset(self.policy, self.netns)
        events = [
            ProtectionEvent(
                "port",
                "applied",
                "ruleset_applied",
                mode=self.policy.mode,
                detail=f"port policy {self.policy.model} v{self.policy.version} in {self.netns or 'this netns'}",
            )
        ]
        events += interface_events(self.policy, self.netns)
        if self.sysfs_root is not None:
            events += usb.apply_usb_policy(self.policy, self.sysfs_root)
        self.state.reported = {finding_key(e) for e in events if not is_correction(e)}
        self.state.save(self.state_path)
        return events

    def _ruleset(self) -> list[ProtectionEvent]:
        events = netfilter.ruleset_events(self.policy, self.netns, self.state.ruleset_fingerprint)
        if self.policy.enforce and any(e.rule in ("ruleset_changed", "ruleset_missing") for e in events):
            self.state.ruleset_fingerprint = netfilter.apply_ruleset(self.policy, self.netns)
            events.append(
                ProtectionEvent(
                    "port",
                    "applied",
                    "ruleset_reapplied",
                    mode=self.policy.mode,
                    object=Object(path=netfilter.TABLE_OBJECT),
                    detail=f"table inet medsec restored to port policy v{self.policy.version}",
                )
            )
        return events

    def _parts(self) -> list[tuple[str, str, Callable[[], list[ProtectionEvent]]]]:
        console = self.console
        parts: list[tuple[str, str, Callable[[], list[ProtectionEvent]]]] = [
            ("port", "ruleset", self._ruleset),
            ("interface", "interface", lambda: interface_events(self.policy, self.netns)),
            (
                "port",
                "socket",
                lambda: socket_events(self.policy, self.netns, console_active=console is not None and console.active()),
            ),
        ]
        if self.sysfs_root is not None:
            root = self.sysfs_root
            parts.append(("usb", "usb", lambda: usb.apply_usb_policy(self.policy, root)))
        if console is not None:
            parts.append(("console", "console", console.events))
        return parts

    def check(self) -> list[ProtectionEvent]:
        """Compare everything with the policy once; return new findings and the corrections made."""
        found: list[ProtectionEvent] = []
        for category, part, run in self._parts():
            try:
                found += run()
            except PortPolicyError as e:
                found.append(_error_event(self.policy, category, part, e))
        # A finding the guard corrected is closed: if it comes back, it is news again.
        corrected = {_object_of(e) for e in found if is_correction(e)}
        keys = {finding_key(e) for e in found if not is_correction(e) and _object_of(e) not in corrected}
        keys |= {_outcome_key(e) for e in found if e.rule in CORRECTION_OUTCOME}
        report = [e for e in found if is_correction(e) or finding_key(e) not in self.state.reported]
        self.state.reported = keys
        self.state.save(self.state_path)
        for event in report:
            logger.info("port guard: %s %s %s", event.category, event.action, event.rule)
        return report
