"""PA-2: ``medsec protect ports`` end to end — sign, verify, apply in a namespace, check, usb-apply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medsec.cli.protect_ports import app
from medsec.crypto.keys import SigningKey

from .test_ports_lab import MODEL, Lab, lab, nft, policy_doc
from .test_usb_sysfs import FakeSysfs

__all__ = ["lab"]
pytestmark = [pytest.mark.req("PA-2")]


def _run(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture
def signed(tmp_path: Path) -> dict[str, Path]:
    key = SigningKey.generate()
    key.save(tmp_path / "release.key")
    (tmp_path / "release.pub").write_text(key.verify_key.to_base64())
    paths = {"key": tmp_path / "release.key", "pub": tmp_path / "release.pub", "state": tmp_path / "state"}
    for version in (1, 2):
        doc = tmp_path / f"v{version}.json"
        doc.write_text(json.dumps(policy_doc(version=version)))
        out = tmp_path / f"v{version}.dsse"
        code, result = _run("sign", "--document", str(doc), "--key", str(paths["key"]), "--out", str(out))
        assert code == 0 and result["policy"]["version"] == version
        paths[f"v{version}"] = out
    return paths


def test_sign_refuses_a_malformed_document(tmp_path: Path, signed: dict[str, Path]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(policy_doc(inbound=[{"interface": "eth7", "protocol": "tcp", "port": 22}])))
    code, result = _run("sign", "--document", str(bad), "--key", str(signed["key"]), "--out", str(tmp_path / "x"))
    assert code == 1 and result["error"] == "PolicyError" and "inbound[0].interface" in result["detail"]
    assert not (tmp_path / "x").exists()


def test_verify_refuses_another_model_and_an_untrusted_key(tmp_path: Path, signed: dict[str, Path]) -> None:
    pub = str(signed["pub"])
    assert _run("verify", "--policy", str(signed["v1"]), "--trusted-key", pub, "--model", MODEL)[0] == 0
    code, result = _run("verify", "--policy", str(signed["v1"]), "--trusted-key", pub, "--model", "other-model")
    assert code == 1 and "this device is 'other-model'" in result["detail"]
    stranger = tmp_path / "stranger.pub"
    stranger.write_text(SigningKey.generate().verify_key.to_base64())
    code, result = _run("verify", "--policy", str(signed["v1"]), "--trusted-key", str(stranger), "--model", MODEL)
    assert code == 1 and "valid signature" in result["detail"]


def test_apply_check_and_rollback_in_a_namespace(lab: Lab, signed: dict[str, Path]) -> None:
    common = ["--trusted-key", str(signed["pub"]), "--model", MODEL, "--state-dir", str(signed["state"])]
    code, result = _run("apply", "--policy", str(signed["v2"]), *common, "--netns", lab.device)
    assert code == 0 and result["policy"]["version"] == 2
    assert "table inet medsec" in nft(lab.device, "list", "tables")
    code, result = _run("check", *common, "--netns", lab.device)
    assert (code, result["events"]) == (0, [])
    nft(lab.device, "add", "rule", "inet", "medsec", "input", "tcp", "dport", "23", "accept")
    code, result = _run("check", *common, "--netns", lab.device)
    assert [e["rule"] for e in result["events"]][:2] == ["ruleset_changed", "ruleset_reapplied"]
    code, result = _run("apply", "--policy", str(signed["v1"]), *common, "--netns", lab.device)
    assert code == 1 and "rollback" in result["detail"]
    code, result = _run("verify", "--policy", str(signed["v1"]), *common)
    assert code == 1 and "rollback" in result["detail"]


def test_apply_needs_an_explicit_namespace(signed: dict[str, Path]) -> None:
    common = ["--trusted-key", str(signed["pub"]), "--model", MODEL, "--state-dir", str(signed["state"])]
    code, result = _run("apply", "--policy", str(signed["v1"]), *common)
    assert code == 1 and "--this-namespace" in result["detail"]


def test_usb_apply_on_a_sysfs_tree(tmp_path: Path, signed: dict[str, Path]) -> None:
    sysfs = FakeSysfs(tmp_path / "sys")
    sysfs.controller(1)
    rogue = sysfs.device("1-1", "dead", "beef", authorized="1")
    code, result = _run(
        "usb-apply",
        "--policy",
        str(signed["v1"]),
        "--trusted-key",
        str(signed["pub"]),
        "--model",
        MODEL,
        "--sysfs-root",
        str(sysfs.root),
    )
    assert code == 0 and "usb_device_deauthorised" in [e["rule"] for e in result["events"]]
    assert (rogue / "authorized").read_text().strip() == "0"


def test_release_public_key_from_medsec_keys_is_accepted(tmp_path: Path) -> None:
    from medsec.cli.protect_ports import load_verify_key
    from medsec.updates.keys import generate_key_file, write_public_key

    public = generate_key_file(tmp_path / "release.key", None)
    write_public_key(tmp_path / "release.pub.json", "release", public)
    key = SigningKey.load(tmp_path / "release.key")
    assert load_verify_key(tmp_path / "release.pub.json") == key.verify_key
