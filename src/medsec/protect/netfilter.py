"""The port policy's firewall: one nftables table, ``table inet medsec``, applied in one transaction.

The ruleset is default-deny inbound (PA-2): loopback, replies to the device's own connections and
IPv6 neighbour discovery pass (without ND, IPv6 on the LAN stops working), then only what the
policy's ``inbound`` rules allow, each bound to its interface and, where given, its peer address.
Forwarding is dropped (a device is not a router). Outbound is accept unless the policy says
``drop``, then only loopback, replies and the ``outbound.allow`` rules pass.

:func:`apply_ruleset` feeds the whole script to ``nft -f -`` (one netlink transaction: the old table
is replaced or nothing changes), inside the given network namespace. It then reads the table back
with ``nft -j`` and checks every chain's hook, policy and rule count, and returns a fingerprint of the
kernel's own rendering; :func:`ruleset_events` compares the live table with that fingerprint later,
so a rule added, removed or changed behind the agent's back is drift.

Other tables in the namespace are never touched. nftables evaluates every base chain on a hook and
a drop in any of them is final, so another table cannot re-open what this one drops; such tables are
still reported (policy ``foreign_tables: report``) because they can rewrite traffic (NAT) first.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from medsec.protect.errors import PortPolicyError
from medsec.protect.events import Object, ProtectionEvent
from medsec.protect.ports import FlowRule, PortPolicy, in_netns, run_command

logger = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "medsec"
TABLE_OBJECT = f"nft:{FAMILY} {TABLE}"
_ND_TYPES = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert"


@dataclass(frozen=True)
class ChainPlan:
    name: str
    hook: str
    policy: str
    rules: tuple[str, ...]


@dataclass(frozen=True)
class RulesetPlan:
    """The table a policy asks for: its chains and the ``nft -f`` script that creates them."""

    chains: tuple[ChainPlan, ...]

    def script(self) -> str:
        # Creating then deleting the table first makes the file work whether or not it exists,
        # and all three statements are one transaction.
        lines = [f"table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{"]
        for chain in self.chains:
            lines.append(f"\tchain {chain.name} {{")
            lines.append(f"\t\ttype filter hook {chain.hook} priority filter; policy {chain.policy};")
            lines.extend(f"\t\t{rule}" for rule in chain.rules)
            lines.append("\t}")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _peer(rule: FlowRule, direction: str) -> str:
    if rule.peer is None:
        return ""
    family = "ip" if rule.peer.version == 4 else "ip6"
    return f"{family} {direction} {rule.peer} "


def _comment(rule: FlowRule) -> str:
    # The policy parser limits comments to a safe alphabet, so quoting is enough here.
    return f' comment "{rule.comment}"' if rule.comment else ""


def plan_ruleset(policy: PortPolicy) -> RulesetPlan:
    """The chains of ``table inet medsec`` for ``policy`` (pure: no I/O)."""
    inbound = [
        'iifname "lo" accept',
        "ct state established,related accept",
        "ct state invalid drop",
        f"icmpv6 type {{ {_ND_TYPES} }} ip6 hoplimit 255 accept",
    ]
    if policy.icmp_echo:
        inbound += ["icmp type echo-request accept", "icmpv6 type echo-request accept"]
    inbound += [
        f'iifname "{r.interface}" {_peer(r, "saddr")}{r.protocol} dport {r.port} ct state new accept{_comment(r)}'
        for r in policy.inbound
    ]
    chains = [ChainPlan("input", "input", "drop", tuple(inbound)), ChainPlan("forward", "forward", "drop", ())]
    if policy.outbound_default == "drop":
        outbound = [
            'oifname "lo" accept',
            "ct state established,related accept",
            f"icmpv6 type {{ {_ND_TYPES} }} ip6 hoplimit 255 accept",
        ]
        outbound += [
            f'oifname "{r.interface}" {_peer(r, "daddr")}{r.protocol} dport {r.port} accept{_comment(r)}'
            for r in policy.outbound
        ]
        chains.append(ChainPlan("output", "output", "drop", tuple(outbound)))
    else:
        chains.append(ChainPlan("output", "output", "accept", ()))
    return RulesetPlan(tuple(chains))


def _strip_handles(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_handles(v) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_strip_handles(v) for v in value]
    return value


def _nft_json(netns: str | None, args: list[str], what: str) -> list[dict[str, Any]]:
    out = run_command(in_netns(netns, ["nft", "-j", *args]), what=what)
    try:
        items = json.loads(out)["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise PortPolicyError(f"{what}: nft printed no nftables JSON: {e}") from e
    return [item for item in items if isinstance(item, dict) and "metainfo" not in item]


def read_table(netns: str | None) -> list[dict[str, Any]] | None:
    """The live ``table inet medsec`` as nft JSON without handles, or None when the table is missing."""
    tables = _nft_json(netns, ["list", "tables"], "list nftables tables")
    if not any(t.get("table", {}).get("family") == FAMILY and t["table"].get("name") == TABLE for t in tables):
        return None
    items = _nft_json(netns, ["list", "table", FAMILY, TABLE], "read the medsec table")
    return [_strip_handles(item) for item in items]


def fingerprint(items: list[dict[str, Any]]) -> str:
    """SHA-256 of the kernel's rendering of the table: equal exactly when the rules are equal."""
    return hashlib.sha256(json.dumps(items, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_readback(plan: RulesetPlan, items: list[dict[str, Any]]) -> None:
    """The table in the kernel must have the planned chains, hooks, policies and rule counts."""
    chains = {c["chain"]["name"]: c["chain"] for c in items if "chain" in c}
    counts: dict[str, int] = {}
    for item in items:
        if "rule" in item:
            counts[item["rule"]["chain"]] = counts.get(item["rule"]["chain"], 0) + 1
    if set(chains) != {c.name for c in plan.chains}:
        raise PortPolicyError(f"nft read-back: chains {sorted(chains)} differ from the plan")
    for want in plan.chains:
        got = chains[want.name]
        if got.get("hook") != want.hook or got.get("policy") != want.policy:
            raise PortPolicyError(
                f"nft read-back: chain {want.name} has hook/policy {got.get('hook')}/{got.get('policy')}"
            )
        if counts.get(want.name, 0) != len(want.rules):
            raise PortPolicyError(
                f"nft read-back: chain {want.name} has {counts.get(want.name, 0)} rules, {len(want.rules)} planned"
            )


def apply_ruleset(policy: PortPolicy, netns: str | None) -> str:
    """Replace ``table inet medsec`` in ``netns`` in one transaction; return the live table's fingerprint.

    ``netns=None`` means the namespace this process runs in: the device itself. Nothing else in the
    namespace's ruleset is touched.
    """
    plan = plan_ruleset(policy)
    run_command(in_netns(netns, ["nft", "-f", "-"]), stdin=plan.script(), what="apply the nftables ruleset")
    items = read_table(netns)
    if items is None:
        raise PortPolicyError("nft read-back: table inet medsec is missing right after it was applied")
    _check_readback(plan, items)
    logger.info("nftables table inet medsec applied for port policy v%d in %s", policy.version, netns or "this netns")
    return fingerprint(items)


def foreign_tables(netns: str | None) -> list[str]:
    """Every nftables table in the namespace other than ours, as ``family name``."""
    tables = _nft_json(netns, ["list", "tables"], "list nftables tables")
    names = [f"{t['table'].get('family')} {t['table'].get('name')}" for t in tables if "table" in t]
    return [n for n in names if n != f"{FAMILY} {TABLE}"]


def ruleset_events(policy: PortPolicy, netns: str | None, expected: str | None) -> list[ProtectionEvent]:
    """Drift when the live table is missing or differs from the fingerprint taken when it was applied."""
    items = read_table(netns)
    events: list[ProtectionEvent] = []
    where = Object(path=TABLE_OBJECT)
    if items is None:
        events.append(
            ProtectionEvent(
                "port", "drift", "ruleset_missing", mode=policy.mode, object=where, detail="table inet medsec is gone"
            )
        )
    elif expected is None or fingerprint(items) != expected:
        live = fingerprint(items)
        events.append(
            ProtectionEvent(
                "port",
                "drift",
                "ruleset_changed",
                mode=policy.mode,
                object=where,
                detail=f"table inet medsec changed (live {live[:16]}, applied {(expected or 'none')[:16]})",
            )
        )
    if policy.foreign_tables == "report":
        for name in foreign_tables(netns):
            events.append(
                ProtectionEvent(
                    "port",
                    "drift",
                    "ruleset_foreign_table",
                    mode=policy.mode,
                    object=Object(path=f"nft:{name}"),
                    detail=f"nftables table {name} is not part of the port policy",
                )
            )
    return events
