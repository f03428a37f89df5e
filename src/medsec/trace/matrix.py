"""The traceability matrix: requirement → features → tests with their outcomes, and the release gate.

Pure: values in, values or text out. The pytest plugin (``tests/plugins/traceability.py``) feeds it the
outcome of every test; ``medsec trace matrix`` rebuilds it from a saved ``matrix.json``.

A requirement counts as covered only by a test that *passed*: a skipped test (no root, no PostgreSQL, no
browser) proves nothing, and neither does an expected failure.
"""

from __future__ import annotations

import csv
import enum
import html
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write
from medsec.trace.catalogue import Catalogue, Feature, Requirement
from medsec.trace.errors import GateFailed, ResultsError

RESULTS_FORMAT = "medsec-traceability/1"


class Outcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    NOT_RUN = "not_run"  # collected only (``--collect-only``) or deselected


class Coverage(enum.StrEnum):
    COVERED = "covered"  # at least one marked test passed
    FAILING = "failing"  # marked tests ran, none passed, at least one failed
    SKIPPED = "skipped"  # marked tests exist, all skipped
    NOT_RUN = "not_run"  # marked tests exist but were not run
    UNTESTED = "untested"  # no test is marked with the requirement at all


@dataclass(frozen=True)
class CaseResult:
    nodeid: str
    requirements: tuple[str, ...]
    outcome: Outcome


@dataclass(frozen=True)
class MatrixRow:
    requirement: Requirement
    features: tuple[Feature, ...]
    tests: tuple[CaseResult, ...]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for t in self.tests if t.outcome is outcome)

    @property
    def coverage(self) -> Coverage:
        if not self.tests:
            return Coverage.UNTESTED
        if self.count(Outcome.PASSED):
            return Coverage.COVERED
        if self.count(Outcome.FAILED):
            return Coverage.FAILING
        if self.count(Outcome.SKIPPED):
            return Coverage.SKIPPED
        return Coverage.NOT_RUN


@dataclass(frozen=True)
class Matrix:
    rows: tuple[MatrixRow, ...]
    unknown: tuple[CaseResult, ...]  # tests citing an ID the catalogue does not know
    generated_at: str

    def without_passing_test(self) -> tuple[str, ...]:
        return tuple(r.requirement.id for r in self.rows if r.coverage is not Coverage.COVERED)

    def without_marked_test(self) -> tuple[str, ...]:
        return tuple(r.requirement.id for r in self.rows if r.coverage is Coverage.UNTESTED)

    def unknown_ids(self, known: Iterable[str]) -> tuple[str, ...]:
        known_set = set(known)
        return tuple(sorted({i for t in self.unknown for i in t.requirements if i not in known_set}))


def build_matrix(catalogue: Catalogue, results: Iterable[CaseResult], generated_at: str) -> Matrix:
    results = tuple(results)
    known = set(catalogue.ids)
    rows = tuple(
        MatrixRow(
            requirement=req,
            features=catalogue.features_for(req.id),
            tests=tuple(t for t in results if req.id in t.requirements),
        )
        for req in catalogue.requirements
    )
    unknown = tuple(t for t in results if any(i not in known for i in t.requirements))
    return Matrix(rows, unknown, generated_at)


def gate(matrix: Matrix, *, collect_only: bool = False) -> None:
    """Raise :class:`GateFailed` naming every requirement without a passing test.

    With ``collect_only`` nothing ran, so the question is weaker: is there any marked test at all.
    """
    missing = matrix.without_marked_test() if collect_only else matrix.without_passing_test()
    unknown = matrix.unknown_ids(r.requirement.id for r in matrix.rows)
    if missing or unknown:
        raise GateFailed(missing, unknown)


# -- JSON ------------------------------------------------------------------------------------------------------


def to_json(matrix: Matrix) -> dict[str, Any]:
    tests = {t.nodeid: t for row in matrix.rows for t in row.tests} | {t.nodeid: t for t in matrix.unknown}
    return {
        "format": RESULTS_FORMAT,
        "generated_at": matrix.generated_at,
        "requirements": [
            {
                "id": row.requirement.id,
                "group": row.requirement.group.en,
                "text": row.requirement.text,
                "coverage": row.coverage.value,
                "passed": row.count(Outcome.PASSED),
                "failed": row.count(Outcome.FAILED),
                "skipped": row.count(Outcome.SKIPPED),
                "not_run": row.count(Outcome.NOT_RUN),
                "features": [f.name for f in row.features],
                "tests": [{"nodeid": t.nodeid, "outcome": t.outcome.value} for t in row.tests],
            }
            for row in matrix.rows
        ],
        "tests": [
            {"nodeid": t.nodeid, "requirements": list(t.requirements), "outcome": t.outcome.value}
            for t in sorted(tests.values(), key=lambda t: t.nodeid)
        ],
        "unknown_ids": list(matrix.unknown_ids(r.requirement.id for r in matrix.rows)),
        "without_passing_test": list(matrix.without_passing_test()),
    }


def results_from_json(data: Mapping[str, Any], source: str = "results") -> tuple[tuple[CaseResult, ...], str]:
    """The test results (and generation time) of a saved ``matrix.json``."""
    if data.get("format") != RESULTS_FORMAT:
        raise ResultsError(f"{source}: format must be {RESULTS_FORMAT!r}")
    tests = data.get("tests")
    if not isinstance(tests, list):
        raise ResultsError(f"{source}: field 'tests' must be a list")
    out = []
    for i, t in enumerate(tests):
        where = f"{source}: tests[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("nodeid"), str):
            raise ResultsError(f"{where}: needs a string 'nodeid'")
        reqs = t.get("requirements")
        if not isinstance(reqs, list) or not all(isinstance(r, str) for r in reqs):
            raise ResultsError(f"{where}: 'requirements' must be a list of strings")
        try:
            outcome = Outcome(str(t.get("outcome")))
        except ValueError as e:
            raise ResultsError(f"{where}: unknown outcome {t.get('outcome')!r}") from e
        out.append(CaseResult(t["nodeid"], tuple(reqs), outcome))
    generated = data.get("generated_at")
    return tuple(out), generated if isinstance(generated, str) else ""


def read_results(path: Path) -> tuple[tuple[CaseResult, ...], str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e}") from e
    except ValueError as e:
        raise ResultsError(f"{path}: not JSON: {e}") from e
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: the top level must be an object")
    return results_from_json(data, str(path))


# -- CSV and HTML ----------------------------------------------------------------------------------------------

CSV_HEADER = ("requirement", "group", "text", "coverage", "features", "passed", "failed", "skipped", "not_run", "tests")


def render_csv(matrix: Matrix) -> str:
    """One line per requirement; the tests column lists ``nodeid=outcome`` separated by ``;``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in matrix.rows:
        writer.writerow(
            (
                row.requirement.id,
                row.requirement.group.en,
                row.requirement.text,
                row.coverage.value,
                "; ".join(f.name for f in row.features),
                row.count(Outcome.PASSED),
                row.count(Outcome.FAILED),
                row.count(Outcome.SKIPPED),
                row.count(Outcome.NOT_RUN),
                "; ".join(f"{t.nodeid}={t.outcome.value}" for t in row.tests),
            )
        )
    return buf.getvalue()


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2rem;color:#1b1b1b}"
    "table{border-collapse:collapse;width:100%}th,td{border:1px solid #bbb;padding:.4rem;vertical-align:top;"
    "text-align:left}th{background:#eee}.covered{background:#e3f4e3}.failing{background:#fbe0e0}"
    ".skipped,.not_run,.untested{background:#fff4d6}ul{margin:0;padding-left:1.1rem}code{font-size:.85em}"
    ".passed{color:#185c18}.failed{color:#a00}"
)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _feature_cell(features: tuple[Feature, ...]) -> str:
    if not features:
        return "—"
    items = []
    for f in features:
        where = ", ".join(f.modules + f.commands)
        items.append(f'<li><strong>{_e(f.name)}</strong><br><code title="{_e(f.summary)}">{_e(where)}</code></li>')
    return "<ul>" + "".join(items) + "</ul>"


def _tests_cell(tests: tuple[CaseResult, ...]) -> str:
    if not tests:
        return "—"
    items = [f'<li class="{t.outcome.value}"><code>{_e(t.nodeid)}</code>: {t.outcome.value}</li>' for t in tests]
    return "<ul>" + "".join(items) + "</ul>"


def render_html(matrix: Matrix) -> str:
    """A self-contained page (no scripts, no external files) an auditor can open offline."""
    missing = matrix.without_passing_test()
    body = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>medsec requirement traceability</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>medsec requirement traceability</h1>",
        f"<p>Generated {_e(matrix.generated_at)}. Requirements: MHLW cybersecurity handbook (2nd ed.), table 1.</p>",
        f"<p>Without a passing test: {_e(', '.join(missing)) if missing else 'none'}.</p>",
        '<table><caption>Requirement → features → tests</caption><thead><tr><th scope="col">Requirement</th>'
        '<th scope="col">Coverage</th><th scope="col">Features</th><th scope="col">Tests</th></tr></thead><tbody>',
    ]
    for row in matrix.rows:
        r = row.requirement
        body.append(
            f'<tr class="{row.coverage.value}"><th scope="row">{_e(r.id)}<br><small>{_e(r.group.en)} / '
            f"{_e(r.group.ja)}</small><br>{_e(r.text)}</th><td>{row.coverage.value}<br>"
            f"{row.count(Outcome.PASSED)} passed, {row.count(Outcome.FAILED)} failed, "
            f"{row.count(Outcome.SKIPPED)} skipped</td><td>{_feature_cell(row.features)}</td>"
            f"<td>{_tests_cell(row.tests)}</td></tr>"
        )
    body.append("</tbody></table>")
    if matrix.unknown:
        body.append("<h2>Tests citing unknown requirement IDs</h2><ul>")
        body.extend(f"<li><code>{_e(t.nodeid)}</code>: {_e(', '.join(t.requirements))}</li>" for t in matrix.unknown)
        body.append("</ul>")
    body.append("</body></html>\n")
    return "\n".join(body)


def write_matrix(matrix: Matrix, folder: Path) -> tuple[Path, Path, Path]:
    """Write matrix.csv, matrix.html and matrix.json into ``folder`` (each atomically)."""
    paths = (folder / "matrix.csv", folder / "matrix.html", folder / "matrix.json")
    atomic_write(paths[0], render_csv(matrix).encode("utf-8"))
    atomic_write(paths[1], render_html(matrix).encode("utf-8"))
    text = json.dumps(to_json(matrix), ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    atomic_write(paths[2], text.encode("utf-8"))
    return paths
