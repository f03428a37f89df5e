from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from medsec.agent import state as state_module
from medsec.agent.state import AgentState, StateStore
from medsec.errors import AgentError


def test_missing_state_is_a_fresh_state(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "state.json").load() == AgentState()


def test_round_trip_and_private_mode(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    state = AgentState(
        enrolled=True,
        counter=7,
        nonce="n1",
        witness_key="w+00000000+AA==",
        cosigned_checkpoint="note\n",
        cosigned_size=3,
        last_checkin_at=1700000000,
    )
    store.save(state)
    assert store.load() == state
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600


def test_type_table_covers_every_field() -> None:
    assert set(state_module._TYPES) == {f.name for f in fields(AgentState)}


def test_reserve_counter_persists_before_returning(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    reserved = store.reserve_counter(AgentState(counter=41))
    assert reserved.counter == 42
    assert StateStore(tmp_path / "state.json").load().counter == 42


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"[]",
        b'{"format": 99}',
        b'{"format": 1, "counter": "5"}',
        b'{"format": 1, "counter": true}',
        b'{"format": 1, "counter": -1}',
        b'{"format": 1, "surprise": 1}',
    ],
)
def test_damaged_state_is_refused_not_reset(tmp_path: Path, content: bytes) -> None:
    # Silently starting from counter 0 would reuse counters; a damaged file must stop the agent.
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(AgentError, match="state"):
        StateStore(path).load()


WRITER = """
import sys
from pathlib import Path
from medsec.agent.state import AgentState, StateStore
store = StateStore(Path(sys.argv[1]))
state = store.load()
print("ready", flush=True)
while True:
    state = store.reserve_counter(state)
"""


def test_state_survives_sigkill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    store.save(AgentState(enrolled=True, nonce="x" * 5000))  # large enough that writes take a while
    last = 0
    for delay in (0.05, 0.11, 0.17, 0.23):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        loaded = store.load()  # never torn: either the old or the new file
        assert loaded.nonce == "x" * 5000
        assert loaded.counter > last
        last = loaded.counter
    store.remove_stale_temp_files()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert json.loads(path.read_text())["counter"] == last


def test_agent_package_does_not_pull_in_server_libraries() -> None:
    code = (
        "import sys, medsec.agent.daemon, medsec.agent.status\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'sqlalchemy', 'medsec'))\n"
        "device = ('medsec.agent', 'medsec.auditlog', 'medsec.crypto', 'medsec.protect')\n"
        "print([m for m in bad if not m.startswith(device)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['medsec', 'medsec.atomic_file', 'medsec.errors', 'medsec.protocol', 'medsec.signals']"
