"""PA-2: the policy's nftables table, applied in a device namespace, proven from peer namespaces."""

from __future__ import annotations

import subprocess

import pytest

from medsec.protect import netfilter
from medsec.protect.errors import PortPolicyError
from medsec.protect.ports import PortPolicy

from .test_ports_lab import (
    CLIN_PEER,
    DEVICE_CLIN,
    DEVICE_SVC,
    GATEWAY,
    GATEWAY_PORT,
    SVC_OTHER,
    Lab,
    lab,
    nft,
    policy_doc,
    why_no_lab,
)

__all__ = ["lab"]
pytestmark = [pytest.mark.req("PA-2")]


def _host_has_medsec_table() -> bool:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False, timeout=20).stdout
    return "table inet medsec" in out


def test_plan_is_default_deny_with_only_the_listed_flows() -> None:
    policy = PortPolicy.from_json(policy_doc())
    plan = netfilter.plan_ruleset(policy)
    chains = {c.name: c for c in plan.chains}
    assert chains["input"].policy == "drop" and chains["forward"].policy == "drop"
    assert chains["output"].policy == "accept" and chains["output"].rules == ()
    allowed = [r for r in chains["input"].rules if "dport" in r]
    want = f'iifname "svc0" ip saddr {GATEWAY}/32 tcp dport {GATEWAY_PORT} ct state new accept'
    assert allowed == [want + ' comment "maintenance gateway"']


def test_clinical_and_service_lan_reach_only_the_gateway_port_from_the_gateway(lab: Lab) -> None:
    host_table_before = _host_has_medsec_table()
    lab.listen(lab.device, "tcp", "0.0.0.0", GATEWAY_PORT)
    lab.listen(lab.device, "tcp", "0.0.0.0", 8080)
    # Control: without the policy the device's ports are open to both LANs.
    assert lab.probe(lab.clinical, [(None, DEVICE_CLIN, 8080), (None, DEVICE_CLIN, GATEWAY_PORT)]) == ["open", "open"]
    assert lab.probe(lab.service, [(SVC_OTHER, DEVICE_SVC, 8080)]) == ["open"]

    netfilter.apply_ruleset(PortPolicy.from_json(policy_doc()), lab.device)

    from_clinical = lab.probe(
        lab.clinical, [(CLIN_PEER, DEVICE_CLIN, 8080), (CLIN_PEER, DEVICE_CLIN, GATEWAY_PORT), (None, DEVICE_CLIN, 9)]
    )
    assert from_clinical == ["timeout", "timeout", "timeout"]  # dropped, not even refused
    from_service = lab.probe(
        lab.service,
        [
            (GATEWAY, DEVICE_SVC, GATEWAY_PORT),  # the allow-listed gateway and port
            (SVC_OTHER, DEVICE_SVC, GATEWAY_PORT),  # same LAN, another host
            (GATEWAY, DEVICE_SVC, 8080),  # the gateway, another port
        ],
    )
    assert from_service == ["open", "timeout", "timeout"]
    # Loopback on the device itself still works.
    assert lab.probe(lab.device, [(None, "127.0.0.1", 8080)]) == ["open"]
    if not host_table_before:
        assert not _host_has_medsec_table(), "the host's own ruleset must never be touched"


def test_outbound_drop_allows_only_listed_destinations(lab: Lab) -> None:
    lab.listen(lab.service, "tcp", GATEWAY, 443)
    lab.listen(lab.service, "tcp", GATEWAY, 8443)
    lab.listen(lab.clinical, "tcp", CLIN_PEER, 443)
    doc = policy_doc(
        outbound={"default": "drop", "allow": [{"interface": "svc0", "protocol": "tcp", "port": 443, "to": GATEWAY}]}
    )
    netfilter.apply_ruleset(PortPolicy.from_json(doc), lab.device)
    got = lab.probe(lab.device, [(None, GATEWAY, 443), (None, GATEWAY, 8443), (None, CLIN_PEER, 443)])
    assert got[0] == "open"
    assert all(r in ("timeout", "error:1") for r in got[1:]), got  # dropped by the output chain


def test_reapply_is_one_transaction_and_stable(lab: Lab) -> None:
    policy = PortPolicy.from_json(policy_doc())
    first = netfilter.apply_ruleset(policy, lab.device)
    assert netfilter.apply_ruleset(policy, lab.device) == first
    assert netfilter.ruleset_events(policy, lab.device, first) == []
    # A new version replaces the table whole: the old allow rule is gone.
    v2 = PortPolicy.from_json(policy_doc(version=2, inbound=[]))
    netfilter.apply_ruleset(v2, lab.device)
    listing = nft(lab.device, "list", "table", "inet", "medsec")
    assert f"dport {GATEWAY_PORT}" not in listing
    assert listing.count("table inet medsec") == 1


def test_ruleset_changed_behind_our_back_is_drift(lab: Lab) -> None:
    policy = PortPolicy.from_json(policy_doc())
    expected = netfilter.apply_ruleset(policy, lab.device)
    nft(lab.device, "insert", "rule", "inet", "medsec", "input", "tcp", "dport", "8080", "accept")
    nft(lab.device, "add", "table", "ip", "sneaky")
    rules = [e.rule for e in netfilter.ruleset_events(policy, lab.device, expected)]
    assert rules == ["ruleset_changed", "ruleset_foreign_table"]
    nft(lab.device, "delete", "table", "inet", "medsec")
    assert netfilter.ruleset_events(policy, lab.device, expected)[0].rule == "ruleset_missing"
    ignoring = PortPolicy.from_json(policy_doc(foreign_tables="ignore"))
    assert [e.rule for e in netfilter.ruleset_events(ignoring, lab.device, expected)] == ["ruleset_missing"]


def test_apply_in_a_missing_namespace_fails_clearly() -> None:
    reason = why_no_lab()
    if reason:
        pytest.skip(reason)
    with pytest.raises(PortPolicyError, match="apply the nftables ruleset"):
        netfilter.apply_ruleset(PortPolicy.from_json(policy_doc()), "msp-no-such-namespace")


def test_a_namespace_name_cannot_smuggle_arguments() -> None:
    with pytest.raises(PortPolicyError, match="not valid"):
        netfilter.apply_ruleset(PortPolicy.from_json(policy_doc()), "x; nft flush ruleset")
