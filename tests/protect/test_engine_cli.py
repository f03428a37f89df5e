"""``medsec protect engine``: policy sign/verify/lint through Typer, and ``run`` as a real process."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsec.cli.protect_engine import app
from medsec.crypto.keys import SigningKey

from .conftest import install_binary, policy_document

pytestmark = [pytest.mark.timeout(90)]
runner = CliRunner()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key = SigningKey.generate()
    private = tmp_path / "policy.key"
    key.save(private)
    public = tmp_path / "policy.pub"
    public.write_text(key.verify_key.to_base64())
    return private, public


def sign(tmp_path: Path, private: Path, **overrides: object) -> Path:
    doc = tmp_path / "policy.json"
    doc.write_text(json.dumps(policy_document(**overrides)))
    out = tmp_path / "policy.dsse"
    result = runner.invoke(app, ["policy", "sign", str(doc), "--key", str(private), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out


def test_policy_sign_then_verify(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    signed = sign(tmp_path, private)
    result = runner.invoke(
        app, ["policy", "verify", str(signed), "--key", str(public), "--product", "infusion-pump", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["failure_mode"] == "fail_closed"


@pytest.mark.req("RL-3")
def test_policy_verify_refuses_rollback_and_other_product(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    signed = sign(tmp_path, private)
    for extra in (["--product", "ventilator"], ["--product", "infusion-pump", "--min-version", "9"]):
        result = runner.invoke(app, ["policy", "verify", str(signed), "--key", str(public), *extra, "--json"])
        assert result.exit_code == 1
        assert json.loads(result.output)["error"] == "PolicyError"


def test_policy_sign_names_the_bad_field(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    doc = tmp_path / "bad.json"
    doc.write_text(json.dumps(policy_document(decision_deadline_ms="fast")))
    result = runner.invoke(app, ["policy", "sign", str(doc), "--key", str(keys[0]), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "decision_deadline_ms" in result.output
    assert not (tmp_path / "x").exists()


def test_policy_lint_exits_1_on_errors(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    signed = sign(tmp_path, keys[0])
    empty = tmp_path / "trust.txt"
    empty.write_text("# nothing trusted yet\n")
    result = runner.invoke(app, ["policy", "lint", str(signed), "--trust", str(empty), "--json"])
    assert result.exit_code == 1
    found = {f["code"] for f in json.loads(result.output)["findings"]}
    assert {"empty_trust_set", "agent_interpreter_untrusted"} <= found


def test_digest_list_with_a_bad_line_is_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    signed = sign(tmp_path, keys[0])
    trust = tmp_path / "trust.txt"
    trust.write_text("ab" * 32 + "\nnot-a-digest\n")
    result = runner.invoke(app, ["policy", "lint", str(signed), "--trust", str(trust)])
    assert result.exit_code == 1
    assert "line 2" in result.output


@pytest.mark.req("RL-3")
def test_run_enforces_on_the_mount_and_stops_cleanly(
    device_mount: Path, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    good = install_binary(device_mount, "/bin/true")
    bad = install_binary(device_mount, "/bin/false", "unknown")
    trust = tmp_path / "trust.txt"
    trust.write_text(hashlib.sha256(good.read_bytes()).hexdigest() + "  # true\n")
    signed = sign(tmp_path, private)
    code = "import sys; from medsec.cli.protect_engine import app; app(sys.argv[1:], prog_name='engine')"
    argv = [sys.executable, "-c", code, "run", "--mount", str(device_mount), "--trust", str(trust)]
    argv += ["--policy", str(signed), "--key", str(public), "--product", "infusion-pump", "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:  # the engine is up once an unknown binary is refused
            try:
                subprocess.run([str(bad)], check=False, timeout=10)
            except PermissionError as e:
                assert e.errno == errno.EPERM
                break
            assert proc.poll() is None and time.monotonic() < deadline, "engine did not start"
            time.sleep(0.1)
        assert subprocess.run([str(good)], check=False, timeout=10).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    deny = json.loads(next(line for line in lines if '"deny"' in line))
    assert (deny["rule"], deny["object"]["path"]) == ("not_in_trustdb", str(bad))
    summary = json.loads("\n".join(lines[lines.index("{") :]))
    assert summary["metrics"]["decisions"]["not_in_trustdb"] >= 1
    assert subprocess.run([str(bad)], check=False, timeout=10).returncode == 1  # unmarked after stop
    assert os.path.ismount(device_mount)
