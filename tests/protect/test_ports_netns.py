"""PA-2: listening sockets and interfaces inside a device namespace, compared with the port policy."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medsec.protect.errors import PortPolicyError
from medsec.protect.ports import (
    ConsoleGate,
    PortPolicy,
    interface_events,
    listening_sockets,
    parse_proc_net,
    socket_events,
)

from .test_ports_lab import CONSOLE_PORT, GATEWAY_PORT, Lab, ip, lab, policy_doc

__all__ = ["lab"]
pytestmark = [pytest.mark.req("PA-2")]

# Real lines from /proc/net/tcp and tcp6 on x86-64 (little-endian words).
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 31338 1 0 100 0 0 10 0
   2: 0100000A:0016 0200000A:D431 01 00000000:00000000 02:000A7B8C 00000000     0        0 31339 2 0 20 4 30 10 -1
"""
_V6_TAIL = " 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0 100 0 0 10 0"
TCP6 = "\n".join(
    [
        "  sl  local_address                         remote_address                        st tx_queue ...",
        "   0: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000"
        + _V6_TAIL.format(inode=4242),
        "   1: 0000000000000000FFFF00000100007F:1F91 00000000000000000000000000000000:0000"
        + _V6_TAIL.format(inode=4243),
    ]
)


@pytest.mark.skipif(struct.pack("=I", 1) != b"\x01\x00\x00\x00", reason="sample lines are from a little-endian host")
def test_proc_net_tables_are_read_like_the_kernel_prints_them() -> None:
    listeners = parse_proc_net(TCP, "tcp")
    assert [(s.address, s.port, s.uid, s.inode) for s in listeners] == [
        ("127.0.0.1", 3306, 0, 31337),
        ("0.0.0.0", 8080, 1000, 31338),
    ]
    six = parse_proc_net(TCP6, "tcp")
    assert [(s.address, s.port) for s in six] == [("::1", 631), ("::ffff:127.0.0.1", 8081)]
    assert all(s.loopback_only for s in six) and listeners[0].loopback_only and not listeners[1].loopback_only


def test_damaged_proc_net_line_is_named() -> None:
    with pytest.raises(PortPolicyError, match="line 2"):
        parse_proc_net("header\n 0: ZZZZ:0016 00000000:0000 0A 0:0 0:0 0 0 0 1 1\n", "tcp")


@given(st.ip_addresses(), st.integers(0, 65535))
def test_any_address_survives_the_proc_net_encoding(address: ipaddress._BaseAddress, port: int) -> None:
    packed = address.packed
    words = "".join(f"{struct.unpack('=I', packed[i : i + 4])[0]:08X}" for i in range(0, len(packed), 4))
    line = f"   0: {words}:{port:04X} {'0' * len(words)}:0000 0A 0:0 0:0 0 7 0 99 1\n"
    [sock] = parse_proc_net("header\n" + line, "tcp")
    assert ipaddress.ip_address(sock.address) == address and sock.port == port and sock.uid == 7


def test_unexpected_listener_is_drift_with_its_process(lab: Lab) -> None:
    policy = PortPolicy.from_json(policy_doc())
    lab.listen(lab.device, "tcp", "0.0.0.0", GATEWAY_PORT)  # expected by the policy
    lab.listen(lab.device, "tcp", "127.0.0.1", 5000)  # loopback only: not reachable, not drift
    assert socket_events(policy, lab.device) == []
    rogue = lab.listen(lab.device, "tcp", "0.0.0.0", 4444)
    udp = lab.listen(lab.device, "udp", "::", 6969)
    events = socket_events(policy, lab.device)
    by_path = {e.object.path: e for e in events if e.object is not None}
    assert set(by_path) == {"tcp:0.0.0.0:4444", "udp:[::]:6969"}
    tcp_event = by_path["tcp:0.0.0.0:4444"]
    assert (tcp_event.category, tcp_event.action, tcp_event.rule) == ("port", "drift", "listening_port_not_in_policy")
    assert tcp_event.subject is not None and tcp_event.subject.pid == rogue.pid
    assert by_path["udp:[::]:6969"].subject is not None and by_path["udp:[::]:6969"].subject.pid == udp.pid
    # Each namespace has its own sockets: the clinical peer does not see the device's listener.
    assert 4444 not in {s.port for s in listening_sockets(lab.clinical)}


def test_console_port_listens_only_during_maintenance(lab: Lab, tmp_path: Path) -> None:
    policy = PortPolicy.from_json(policy_doc())
    lab.listen(lab.device, "tcp", "0.0.0.0", CONSOLE_PORT)
    [event] = socket_events(policy, lab.device, console_active=False)
    assert (event.category, event.rule) == ("console", "console_port_without_ticket")
    gate = ConsoleGate(policy, tmp_path)
    gate.open("s-42", "ticket", 2**40)
    assert socket_events(policy, lab.device, console_active=gate.active()) == []


def test_extra_interface_is_drift_and_brought_down(lab: Lab) -> None:
    policy = PortPolicy.from_json(policy_doc())
    assert interface_events(policy, lab.device) == []
    lab.extra_link("usbnet0")
    ip("-n", lab.device, "link", "set", "usbnet0", "up")
    events = interface_events(policy, lab.device)
    assert [(e.action, e.rule) for e in events] == [
        ("drift", "interface_not_in_policy"),
        ("applied", "interface_brought_down"),
    ]
    assert not lab.link_up(lab.device, "usbnet0")
    assert lab.link_up(lab.device, "svc0") and lab.link_up(lab.device, "clin0")
    assert interface_events(policy, lab.device) == []


def test_monitor_mode_reports_an_extra_interface_but_leaves_it_up(lab: Lab) -> None:
    policy = PortPolicy.from_json(policy_doc(mode="monitor"))
    lab.extra_link("wlan9")
    ip("-n", lab.device, "link", "set", "wlan9", "up")
    events = interface_events(policy, lab.device)
    assert [(e.action, e.rule, e.mode) for e in events] == [("drift", "interface_not_in_policy", "monitor")]
    assert lab.link_up(lab.device, "wlan9")


def test_reading_a_missing_namespace_fails_clearly() -> None:
    if os.geteuid() != 0:
        pytest.skip("ip netns exec needs root")
    with pytest.raises(PortPolicyError, match="read listening sockets"):
        listening_sockets("msp-no-such-ns")
    with pytest.raises(PortPolicyError, match="list interfaces"):
        interface_events(PortPolicy.from_json(policy_doc()), "msp-no-such-ns")


def test_host_socket_reader_sees_a_local_listener() -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert any(x.port == port and x.protocol == "tcp" for x in listening_sockets(None))
