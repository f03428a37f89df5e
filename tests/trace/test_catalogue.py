"""The requirement catalogue shipped with medsec against the reference page of source requirements."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medsec.trace.catalogue import ids_in_test_name, load_catalogue, parse_features, parse_requirements
from medsec.trace.errors import CatalogueError

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "requirements" / "requirements.md"
ROW = re.compile(r"^\| ((?:SM|PA|RA|RL)-\d+) \| (.+?) \|$")


def reference_rows() -> dict[str, str]:
    rows = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line.strip())
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_catalogue_has_exactly_the_reference_ids_with_their_text() -> None:
    reference = reference_rows()
    assert len(reference) == 18  # the page lists 6 SM, 3 PA, 6 RA, 3 RL
    catalogue = load_catalogue()
    assert list(catalogue.ids) == list(reference)
    for req in catalogue.requirements:
        assert req.text == reference[req.id], req.id


def test_every_requirement_has_its_group_in_both_languages() -> None:
    groups = {r.id.split("-")[0]: r.group for r in load_catalogue().requirements}
    assert {g: (v.en, v.ja) for g, v in groups.items()} == {
        "SM": ("Software maintenance", "ソフトウェア保守"),
        "PA": ("Physical access", "物理的アクセス"),
        "RA": ("Remote access", "リモートアクセス"),
        "RL": ("Reliability and availability", "信頼性及び可用性"),
    }


GOOD_HEAD = "format: medsec-requirements/1\ngroups:\n  - {code: RA, en: Remote access, ja: x}\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("requirements:\n  - {id: RA-1, text: a}\n  - {id: RA-1, text: b}\n", "RA-1 is listed twice"),
        ("requirements:\n  - {id: RA1, text: a}\n", "'RA1' is not a requirement ID"),
        ("requirements:\n  - {id: SM-1, text: a}\n", "SM-1 belongs to no listed group"),
        ("requirements:\n  - {id: RA-2}\n", "field 'text' must be a non-empty string"),
        ("requirements: []\n", "no requirements listed"),
    ],
)
def test_malformed_catalogue_is_refused_naming_the_entry(body: str, message: str) -> None:
    with pytest.raises(CatalogueError, match=re.escape(message)):
        parse_requirements(GOOD_HEAD + body)


def test_features_naming_an_unknown_requirement_are_refused() -> None:
    text = (
        "format: medsec-features/1\nfeatures:\n  - name: x\n    summary: s\n    requirements: [RA-9]\n"
        "    modules: [medsec.errors]\n"
    )
    with pytest.raises(CatalogueError, match="feature x: unknown requirement IDs RA-9"):
        parse_features(text, ("RA-1",))


@pytest.mark.parametrize(
    ("name", "ids"),
    [
        ("test_ra3_end_needs_confirmation", ("RA-3",)),
        ("test_sm_4_and_rl2_together[sqlite]", ("SM-4", "RL-2")),
        ("test_parse_rarely_used_fields", ()),
        ("test_rl_without_number", ()),
        ("helper_ra3", ()),
    ],
)
def test_requirement_ids_in_test_names(name: str, ids: tuple[str, ...]) -> None:
    assert ids_in_test_name(name) == ids
