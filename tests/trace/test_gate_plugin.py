"""The pytest plugin in its own pytest process over small test files: the matrix it writes and the gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from medsec.trace.catalogue import load_catalogue

TESTS_DIR = Path(__file__).resolve().parents[1]
ALL_IDS = load_catalogue().ids


def _covering_all_but(missing: tuple[str, ...]) -> str:
    lines = ["import pytest", ""]
    for rid in ALL_IDS:
        if rid in missing:
            continue
        lines += [f'@pytest.mark.req("{rid}")', f"def test_{rid.replace('-', '_').lower()}_covered():", "    pass", ""]
    return "\n".join(lines)


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "plugins.traceability", "-p", "no:cacheprovider", "-q", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")


def test_gate_fails_naming_an_uncovered_requirement(tmp_path: Path) -> None:
    _write(tmp_path, "test_most.py", _covering_all_but(("RA-3",)))
    result = run_pytest(tmp_path, "--traceability-gate")
    assert result.returncode == 1, result.stdout
    assert "traceability gate FAILED" in result.stdout
    assert "RA-3: without a passing test (untested)" in result.stdout
    matrix = json.loads((tmp_path / "build" / "traceability" / "matrix.json").read_text(encoding="utf-8"))
    assert matrix["without_passing_test"] == ["RA-3"]
    assert (tmp_path / "build" / "traceability" / "matrix.html").exists()
    assert (tmp_path / "build" / "traceability" / "matrix.csv").exists()


def test_gate_passes_when_every_requirement_has_a_passing_test(tmp_path: Path) -> None:
    _write(tmp_path, "test_most.py", _covering_all_but(("RA-3",)))
    _write(
        tmp_path,
        "test_ra3.py",
        """
        def test_ra3_confirmation_in_the_name():
            assert 1 + 1 == 2
        """,
    )
    result = run_pytest(tmp_path, "--traceability-gate")
    assert result.returncode == 0, result.stdout
    assert "without a passing test: none" in result.stdout


def test_skipped_test_does_not_count(tmp_path: Path) -> None:
    _write(tmp_path, "test_most.py", _covering_all_but(("RL-3",)))
    _write(
        tmp_path,
        "test_rl3.py",
        """
        import pytest

        @pytest.mark.req("RL-3")
        def test_needs_root():
            pytest.skip("needs root")

        @pytest.mark.req("RL-3")
        @pytest.mark.xfail(reason="not there yet")
        def test_expected_failure():
            assert False
        """,
    )
    result = run_pytest(tmp_path, "--traceability-gate")
    assert result.returncode == 1, result.stdout
    assert "RL-3: without a passing test (skipped)" in result.stdout
    row = next(
        r
        for r in json.loads((tmp_path / "build" / "traceability" / "matrix.json").read_text())["requirements"]
        if r["id"] == "RL-3"
    )
    assert (row["passed"], row["skipped"]) == (0, 2)


def test_failing_test_does_not_count_and_module_markers_apply(tmp_path: Path) -> None:
    _write(tmp_path, "test_most.py", _covering_all_but(("PA-2",)))
    _write(
        tmp_path,
        "test_pa2.py",
        """
        import pytest

        pytestmark = pytest.mark.req("PA-2")

        def test_firewall_default_deny():
            assert "accept" == "drop"
        """,
    )
    result = run_pytest(tmp_path, "--traceability-gate", "--traceability-dir", "out")
    assert result.returncode == 1
    assert "PA-2: without a passing test (failing)" in result.stdout
    assert (tmp_path / "out" / "matrix.json").exists()


def test_without_the_gate_a_subset_run_only_reports(tmp_path: Path) -> None:
    _write(tmp_path, "test_one.py", _covering_all_but(tuple(i for i in ALL_IDS if i != "SM-1")))
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout
    assert "without a passing test: SM-2" in result.stdout


def test_unknown_id_and_malformed_marker_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "test_most.py", _covering_all_but(()))
    _write(
        tmp_path,
        "test_typo.py",
        """
        import pytest

        @pytest.mark.req("RA-33")
        def test_typo():
            pass
        """,
    )
    result = run_pytest(tmp_path, "--traceability-gate")
    assert result.returncode == 1
    assert "RA-33: cited by a test but not in the requirement catalogue" in result.stdout
    _write(
        tmp_path,
        "test_typo.py",
        """
        import pytest

        @pytest.mark.req("RA-1", "RA-2")
        def test_two_in_one():
            pass
        """,
    )
    result = run_pytest(tmp_path)
    assert result.returncode != 0
    assert "one ID per marker" in result.stdout + result.stderr


def test_collect_only_lists_requirements_without_a_marked_test(tmp_path: Path) -> None:
    _write(tmp_path, "test_most.py", _covering_all_but(("PA-2", "RL-2")))
    result = run_pytest(tmp_path, "--collect-only", "--traceability-gate")
    assert result.returncode == 1
    assert "without a marked test: PA-2, RL-2" in result.stdout


def test_gate_works_across_xdist_workers(tmp_path: Path) -> None:
    """With ``-n 2`` the workers collect; the requirement IDs reach the matrix through the reports."""
    _write(tmp_path, "test_most.py", _covering_all_but(("RA-3", "SM-1")))
    _write(
        tmp_path,
        "test_rest.py",
        """
        import pytest

        def test_ra3_in_the_name():
            pass

        @pytest.mark.req("SM-1")
        def test_marked_but_failing():
            assert False
        """,
    )
    result = run_pytest(tmp_path, "-n", "2", "--traceability-gate")
    assert result.returncode == 1, result.stdout
    assert "bringing up nodes" in result.stdout  # the run did use xdist workers
    matrix = json.loads((tmp_path / "build" / "traceability" / "matrix.json").read_text(encoding="utf-8"))
    assert matrix["without_passing_test"] == ["SM-1"]
