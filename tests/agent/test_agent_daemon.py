from __future__ import annotations

import os
import random
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from medsec.agent.config import AgentConfig
from medsec.agent.daemon import Agent, run_agent
from medsec.agent.status import agent_status
from medsec.auditlog.note import SIG_TYPE_ED25519, NoteVerifier, assemble_note, parse_note
from medsec.auditlog.witness import MemoryWitnessState, Witness, verify_cosignature
from medsec.crypto.keys import SigningKey
from medsec.errors import AgentError

from .conftest import HARDWARE_ID, SERIAL, events, make_device_root, read_access_log
from .fake_server import Device, FakeServer


def start(config: AgentConfig) -> Agent:
    return Agent.start(config, rng=random.Random(7))


def test_device_key_is_created_private_and_reused(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    with start(config) as agent:
        first = agent._key.verify_key
    key_file = config.layout.key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with start(config) as agent:
        assert agent._key.verify_key == first
    assert events(read_access_log(config)).count("agent.key_created") == 1


def test_key_readable_by_others_is_refused(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    SigningKey.generate().save(config.layout.key_file)
    os.chmod(config.layout.key_file, 0o644)
    with pytest.raises(AgentError, match="chmod 600"):
        start(config)


def test_second_agent_on_the_same_root_is_refused(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    with start(config), pytest.raises(AgentError, match="already running"):
        start(config)


@pytest.mark.req("RA-2")
def test_enrollment_stores_the_answer_deletes_the_token_and_is_logged(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    assert config.enrollment_token_file is not None
    with start(config) as agent:
        assert agent.step() == 0.0  # report right after enrolling
        state = agent.state
        public_key = agent._key.verify_key
    assert state.enrolled
    assert state.witness_key == server.witness.vkey
    assert state.nonce == server.devices[SERIAL].nonce
    assert server.devices[SERIAL].public_key == public_key
    assert server.devices[SERIAL].hardware_id == HARDWARE_ID
    assert not config.enrollment_token_file.exists()
    entries = read_access_log(config)
    assert events(entries) == ["agent.key_created", "agent.started", "agent.enrolled", "agent.stopped"]
    assert entries[2]["public_key"] == public_key.to_base64()


@pytest.mark.req("RA-2")
def test_reused_token_backs_off_exponentially_and_logs_once(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url, token="already-used")
    with start(config) as agent:
        delays = [agent.step() for _ in range(6)]
        assert not agent.state.enrolled
    assert server.refusals == ["invalid_token"] * 6
    assert delays[0] >= 0.8 and delays[1] >= 1.6 and delays[2] >= 3.2
    assert all(d <= config.retry_max_seconds for d in delays)
    assert delays[-1] >= 0.8 * config.retry_max_seconds
    refused = [e for e in read_access_log(config) if e["event"] == "agent.enrollment_refused"]
    assert [e["code"] for e in refused] == ["invalid_token"]  # one entry, not one per retry
    assert config.enrollment_token_file is not None and config.enrollment_token_file.exists()


def test_missing_token_does_not_crash_the_agent(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url, token=None)
    with start(config) as agent:
        assert agent.step() >= 0.8
        assert not agent.state.enrolled


@pytest.mark.req("RA-2")
def test_checkin_sends_a_signed_report_and_keeps_the_cosigned_checkpoint(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url, version="2.1.0")
    with start(config) as agent:
        agent.step()
        delay = agent.step()
        assert 48 <= delay <= 72  # the server's interval, jittered
        first = agent.state
        agent.step()
        config.version_file.write_text("2.2.0\n")
        agent.step()
        last = agent.state
    assert [r.counter for r in server.reports] == [1, 2, 3]
    assert [r.installed_version for r in server.reports] == ["2.1.0", "2.1.0", "2.2.0"]
    assert all(r.agent_state == "running" for r in server.reports)
    assert first.cosigned_checkpoint is not None
    verify_cosignature(first.cosigned_checkpoint, server.witness.verifier)
    assert last.counter == 3 and last.nonce == server.devices[SERIAL].nonce
    assert last.cosigned_size == last.acked_size > first.cosigned_size
    # Unchanged check-ins are not logged; a version change is.
    checkins = [e for e in read_access_log(config) if e["event"] == "agent.checkin"]
    assert [e["installed_version"] for e in checkins] == ["2.1.0", "2.2.0"]


def test_nonce_is_resynchronised_after_a_lost_answer(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    with start(config) as agent:
        agent.step()
        server.lose_answers = 1
        agent.step()  # the server accepts counter 1, the answer never arrives
        assert agent.state.acked_size == 0
    # A restart in between grows the log, so the proof must start where the server's witness is.
    with start(config) as agent:
        agent.step()  # stale nonce -> fetch the current one -> report again
        assert agent.state.nonce == server.devices[SERIAL].nonce
        agent.step()
    assert server.refusals == ["stale_nonce"]
    assert server.received_counters == [1, 2, 3, 4]
    assert [r.counter for r in server.reports] == [1, 3, 4]
    assert "agent.checkin_refused" not in events(read_access_log(config))


def test_witness_size_in_the_nonce_answer_is_checked_and_used(tmp_path: Path, server: FakeServer) -> None:
    server.nonce_with_checkpoint = True
    config = make_device_root(tmp_path, server.url)
    for lost in (True, True, False):
        with start(config) as agent:
            if not agent.state.enrolled:
                agent.step()
            server.lose_answers = 1 if lost else 0
            agent.step()
            state = agent.state
    assert server.refusals == ["stale_nonce", "stale_nonce"]
    assert len(server.reports) == 3
    assert state.cosigned_checkpoint == server.devices[SERIAL].cosigned
    assert state.cosigned_size == state.acked_size == state.last_sent_size
    assert "agent.cosignature_invalid" not in events(read_access_log(config))


@pytest.mark.req("RA-2")
def test_impostor_witness_cosignature_is_refused_and_logged(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    with start(config) as agent:
        agent.step()
        agent.step()
        good = agent.state
        server.wrong_witness = Witness("medsec-witness", SigningKey.generate(), MemoryWitnessState())
        agent.step()
        after_attack = agent.state
        server.wrong_witness = None
        agent.step()
        healed = agent.state
    assert after_attack.cosigned_checkpoint == good.cosigned_checkpoint
    assert after_attack.cosigned_size == good.cosigned_size
    assert after_attack.counter == good.counter + 1  # the report itself went through
    assert healed.cosigned_size > good.cosigned_size  # and the next good cosignature is kept again
    assert server.refusals == []
    bad = [e for e in read_access_log(config) if e["event"] == "agent.cosignature_invalid"]
    assert len(bad) == 1 and "no cosignature from witness" in bad[0]["detail"]


@pytest.mark.req("RA-2")
def test_cosignature_over_another_checkpoint_is_refused(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    with start(config) as agent:
        agent.step()
        agent.step()
        good = agent.state
        assert good.cosigned_checkpoint is not None
        # The server answers with an old (validly cosigned) checkpoint instead of the new one.
        replayed = good.cosigned_checkpoint
        original = server._checkin

        def replay_old(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            status, answer = original(body)
            answer["cosigned_checkpoint"] = replayed
            return status, answer

        server._checkin = replay_old  # type: ignore[method-assign]
        agent.step()
        assert agent.state.cosigned_size == good.cosigned_size
    bad = [e for e in read_access_log(config) if e["event"] == "agent.cosignature_invalid"]
    assert len(bad) == 1 and "not the checkpoint this device sent" in bad[0]["detail"]


def test_network_errors_back_off_and_the_agent_keeps_going(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    with start(config) as agent:
        agent.step()
        agent.step()
        server.down = True
        delays = [agent.step() for _ in range(3)]
        server.down = False
        agent.step()
        assert agent.state.counter == 5  # the failed attempts used counters 2..4, never again
    assert delays == sorted(delays) and delays[0] <= 1.2
    assert [r.counter for r in server.reports] == [1, 5]
    assert "agent.checkin_refused" not in events(read_access_log(config))


@pytest.mark.req("RA-2")
def test_run_agent_stops_promptly_and_logs_start_and_stop(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    stop = threading.Event()
    thread = threading.Thread(target=run_agent, args=(config, stop))
    thread.start()
    deadline = time.monotonic() + 10
    while not server.reports and time.monotonic() < deadline:
        time.sleep(0.02)
    status = agent_status(tmp_path)
    assert status["running"] and status["enrolled"] and status["counter"] == 1
    stopped_at = time.monotonic()
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - stopped_at < 2
    assert events(read_access_log(config))[-1] == "agent.stopped"


def test_status_of_a_fresh_and_of_a_used_device(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    assert agent_status(tmp_path) == {
        "serial": SERIAL,
        "server_url": server.url,
        "running": False,
        "enrolled": False,
        "counter": 0,
        "log_size": 0,
        "cosigned_size": 0,
        "last_checkin_at": None,
    }
    with start(config) as agent:
        agent.step()
        agent.step()
    status = agent_status(tmp_path)
    assert status["running"] is False and status["enrolled"] is True and status["counter"] == 1
    assert status["log_size"] == len(read_access_log(config))
    assert status["last_checkin_at"] is not None


@pytest.mark.req("RA-2")
def test_forged_checkpoint_in_the_nonce_answer_is_refused(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    with start(config) as agent:
        agent.step()
        agent.step()
        good = agent.state
        assert good.cosigned_checkpoint is not None
        impostor = Witness("medsec-witness", SigningKey.generate(), MemoryWitnessState())
        device = server.devices[SERIAL]
        text, signatures = parse_note(good.cosigned_checkpoint)
        device_signed_only = assemble_note(text, [sig for sig in signatures if sig.name != "medsec-witness"])
        device.cosigned = impostor.cosign(device_signed_only, _device_log_verifier(device), [], 0)
        device.nonce = "rotated-behind-our-back"
        server.nonce_with_checkpoint = True
        agent.step()
        assert agent.state.cosigned_size > good.cosigned_size  # the retry itself got a good cosignature
    assert server.refusals == ["stale_nonce"]
    bad = [e for e in read_access_log(config) if e["event"] == "agent.cosignature_invalid"]
    assert [e["code"] for e in bad] == ["resync"]


def _device_log_verifier(device: Device) -> NoteVerifier:
    return NoteVerifier(f"medsec-device/{device.serial}", SIG_TYPE_ED25519, device.public_key)
