"""The matrix and its gate as pure values, the renderings, and ``medsec trace matrix``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsec.cli.main import app
from medsec.trace.catalogue import load_catalogue
from medsec.trace.errors import GateFailed, ResultsError
from medsec.trace.matrix import (
    CaseResult,
    Coverage,
    Outcome,
    build_matrix,
    gate,
    read_results,
    render_csv,
    render_html,
    to_json,
    write_matrix,
)

CATALOGUE = load_catalogue()


def _all_passing(except_: tuple[str, ...] = (), outcome: Outcome = Outcome.FAILED) -> list[CaseResult]:
    out = [
        CaseResult(f"tests/t.py::test_{rid}", (rid,), outcome if rid in except_ else Outcome.PASSED)
        for rid in CATALOGUE.ids
    ]
    return out


def test_gate_passes_when_every_requirement_has_a_passing_test() -> None:
    gate(build_matrix(CATALOGUE, _all_passing(), "now"))


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.SKIPPED, Outcome.NOT_RUN])
def test_gate_names_the_requirement_whose_only_test_did_not_pass(outcome: Outcome) -> None:
    matrix = build_matrix(CATALOGUE, _all_passing(("RA-3", "RL-2"), outcome), "now")
    with pytest.raises(GateFailed) as err:
        gate(matrix)
    assert err.value.missing == ("RA-3", "RL-2")
    assert "requirements without a passing test: RA-3, RL-2" in err.value.diagnostics()


def test_one_passing_test_covers_despite_a_skipped_one() -> None:
    results = [*_all_passing(), CaseResult("tests/t.py::test_other", ("RA-3",), Outcome.SKIPPED)]
    matrix = build_matrix(CATALOGUE, results, "now")
    row = next(r for r in matrix.rows if r.requirement.id == "RA-3")
    assert row.coverage is Coverage.COVERED
    assert (row.count(Outcome.PASSED), row.count(Outcome.SKIPPED)) == (1, 1)


def test_unknown_requirement_id_fails_the_gate() -> None:
    results = [*_all_passing(), CaseResult("tests/t.py::test_typo", ("RA-33",), Outcome.PASSED)]
    with pytest.raises(GateFailed) as err:
        gate(build_matrix(CATALOGUE, results, "now"))
    assert err.value.unknown == ("RA-33",)


def test_collect_only_gate_asks_only_for_a_marked_test() -> None:
    results = [r for r in _all_passing(outcome=Outcome.NOT_RUN) if r.requirements != ("PA-2",)]
    results = [CaseResult(r.nodeid, r.requirements, Outcome.NOT_RUN) for r in results]
    matrix = build_matrix(CATALOGUE, results, "now")
    with pytest.raises(GateFailed) as err:
        gate(matrix, collect_only=True)
    assert err.value.missing == ("PA-2",)


def test_csv_html_and_json_carry_requirements_features_and_tests(tmp_path: Path) -> None:
    matrix = build_matrix(CATALOGUE, _all_passing(("SM-4",)), "2027-01-01T00:00:00+00:00")
    rows = list(csv.DictReader(io.StringIO(render_csv(matrix))))
    sm4 = next(r for r in rows if r["requirement"] == "SM-4")
    assert sm4["coverage"] == "failing"
    assert "lifecycle-milestone-packages" in sm4["features"]
    assert sm4["tests"] == "tests/t.py::test_SM-4=failed"
    page = render_html(matrix)
    assert "<script" not in page
    assert "Without a passing test: SM-4." in page
    csv_path, html_path, json_path = write_matrix(matrix, tmp_path / "out")
    assert csv_path.read_text(encoding="utf-8") == render_csv(matrix)
    assert html_path.read_text(encoding="utf-8") == page
    saved = json.loads(json_path.read_text(encoding="utf-8"))
    assert saved == to_json(matrix)
    tests, generated = read_results(json_path)
    assert generated == "2027-01-01T00:00:00+00:00"
    assert build_matrix(CATALOGUE, tests, generated) == matrix


def test_html_escapes_test_names() -> None:
    results = [CaseResult('tests/t.py::test_x[<img src=x onerror="1">]', ("RA-1",), Outcome.PASSED)]
    page = render_html(build_matrix(CATALOGUE, results, "now"))
    assert "<img" not in page
    assert "&lt;img src=x onerror=&quot;1&quot;&gt;" in page


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ('{"format": "other"}', "format must be 'medsec-traceability/1'"),
        (
            '{"format": "medsec-traceability/1", "tests": [{"nodeid": "a", "requirements": [], "outcome": "won"}]}',
            "tests[0]: unknown outcome 'won'",
        ),
    ],
)
def test_bad_results_file_is_refused_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "matrix.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ResultsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_results(path)


def test_cli_regenerates_the_matrix_and_gates(tmp_path: Path) -> None:
    _csv, _html, json_path = write_matrix(build_matrix(CATALOGUE, _all_passing(("RL-3",)), "t"), tmp_path)
    runner = CliRunner()
    out = tmp_path / "again.csv"
    result = runner.invoke(app, ["trace", "matrix", "--results", str(json_path), "--format", "csv", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == _csv.read_text(encoding="utf-8")
    result = runner.invoke(app, ["trace", "matrix", "--results", str(json_path), "--format", "html"])
    assert result.exit_code == 0
    assert result.stdout.startswith("<!doctype html>")
    result = runner.invoke(app, ["trace", "matrix", "--results", str(json_path), "--format", "csv", "--gate"])
    assert result.exit_code == 1
    assert "RL-3" in result.stderr
    result = runner.invoke(app, ["trace", "matrix", "--results", str(tmp_path / "missing.json")])
    assert result.exit_code == 1
    assert "cannot read" in result.stderr


def test_cli_lists_the_catalogue_as_json() -> None:
    result = CliRunner().invoke(app, ["trace", "requirements", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == list(CATALOGUE.ids)
