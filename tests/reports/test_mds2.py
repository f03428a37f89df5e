"""The MDS2-style disclosure (SM-2, SM-4): answers come from the server's data, unknowns are marked manual."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from openpyxl import load_workbook

from medsec.crypto.canonical import canonical_json
from medsec.errors import NotFound
from medsec.reports.mds2 import MANUAL, SECTIONS, XLSX_COLUMNS, Mds2Facts, answer_form, build_mds2, mds2_to_xlsx
from medsec.server.seed_vulns import PRODUCT, VERSION, seed_vulns

pytestmark = [pytest.mark.req("SM-2"), pytest.mark.req("SM-4")]

NOW = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def demo(ctx, seeded):
    return seed_vulns(ctx, today=NOW.date())


def _by_id(doc):
    return {item["id"]: item for item in doc["items"]}


def test_demo_model_answers_come_from_its_data(ctx, demo):
    with ctx.tx() as s:
        doc = build_mds2(s, PRODUCT, VERSION, now=NOW)
    canonical_json(doc)  # signable as it is
    items = _by_id(doc)
    assert (doc["manufacturer"], doc["version"], doc["models"]) == (
        "Demo Medical Devices K.K.",
        VERSION,
        ["InfuCare 300 infusion pump"],
    )
    # The demo release has an SBOM, findings triaged as VEX, a published advisory, EOL/EOS and a legacy plan...
    assert items["SBOM-1"]["answer"] == "Yes" and "components" in items["SBOM-1"]["evidence"][0]
    assert items["SBOM-3"]["answer"] == "Yes"
    assert items["CSUP-7"]["answer"] == "Yes" and "triaged: 1" in items["CSUP-7"]["evidence"][0]
    assert items["SGUD-1"]["answer"] == "Yes"
    assert all(t in items["SGUD-1"]["evidence"][0] for t in demo.advisories)
    assert items["RDMP-1"]["answer"] == "Yes" and "EOS 2027-09-15" in items["RDMP-1"]["evidence"][0]
    assert items["RDMP-2"]["answer"] == "Yes"
    assert items["AUDT-3"]["answer"] == "Yes"
    # ...but it is a draft (an SBOM arrived, no signed update was published): the update answers say so.
    assert items["CSUP-1"]["answer"] == "No" and "draft" in items["CSUP-1"]["note"]
    assert items["CSUP-3"]["answer"] == "No"
    # No device runs 1.0.0 on the server yet, so device-reported evidence is missing: manual, never "No".
    for qid in ("AUDT-1", "NAUT-1", "CONN-1", "MLDP-2", "SAHD-1"):
        assert items[qid]["answer"] is None and items[qid]["manual"], qid
        assert items[qid]["note"].startswith(MANUAL), qid
    # Questions about the clinical application are always manual.
    assert items["MPII-1"]["manual"] and items["STCF-1"]["manual"]
    assert doc["summary"]["manual"] == sum(1 for i in doc["items"] if i["manual"])
    assert doc["summary"]["answered"] + doc["summary"]["manual"] == doc["summary"]["questions"] == len(items)


def test_devices_on_the_release_turn_manual_items_into_answers(ctx, demo):
    from medsec.server.models import Device

    with ctx.tx() as s:
        device = s.query(Device).filter(Device.serial == "IC300-0001").one()
        device.installed_version = VERSION
        device.public_key = "A" * 44
    with ctx.tx() as s:
        items = _by_id(build_mds2(s, PRODUCT, None, now=NOW))
    assert items["NAUT-1"]["answer"] == "Yes" and "enrolled with a key: 1" in items["NAUT-1"]["evidence"][0]
    assert items["CSUP-5"]["answer"] == "Yes" and "of 1 hospitals" in items["CSUP-5"]["evidence"][0]
    assert items["RMOT-2"]["answer"] == "Yes"


def test_xlsx_holds_the_form_and_marks_manual_items(ctx, demo):
    with ctx.tx() as s:
        doc = build_mds2(s, PRODUCT, VERSION, now=NOW)
    book = load_workbook(io.BytesIO(mds2_to_xlsx(doc)))
    assert book.sheetnames == ["Cover", "MDS2"]
    cover = {row[0]: row[1] for row in book["Cover"].iter_rows(min_row=2, values_only=True)}
    assert cover["Manufacturer"] == "Demo Medical Devices K.K."
    assert cover["Model"] == "InfuCare 300 infusion pump"
    assert cover["Version"] == VERSION and cover["Date"] == "2026-01-15T09:00:00Z"
    rows = list(book["MDS2"].iter_rows(values_only=True))
    assert rows[0] == XLSX_COLUMNS
    by_id = {r[1]: r for r in rows[1:]}
    assert len(by_id) == len(doc["items"])
    assert by_id["SBOM-1"][0] == "Software Bill of Materials" and by_id["SBOM-1"][3] == "Yes"
    assert "Evidence: sbom_documents: 1" in by_id["SBOM-1"][4]
    assert by_id["CSUP-1"][0] == "Cyber Security Product Upgrades" and by_id["CSUP-1"][3] == "No"
    assert by_id["MPII-1"][3] == MANUAL
    manual_rows = [r for r in rows[1:] if r[3] == MANUAL]
    assert len(manual_rows) == doc["summary"]["manual"]
    # Sections appear in the form's order.
    order = [name for _code, name in SECTIONS]
    seen = [r[0] for r in rows[1:]]
    assert seen == sorted(seen, key=order.index)


def test_unknown_product_or_release_is_not_found(ctx, demo):
    with ctx.tx() as s, pytest.raises(NotFound, match="unknown-pump"):
        build_mds2(s, "unknown-pump", None)
    with ctx.tx() as s, pytest.raises(NotFound) as e:
        build_mds2(s, PRODUCT, "9.9.9")
    assert e.value.code == "unknown_release"


def test_every_section_of_the_form_has_a_question():
    facts = Mds2Facts(manufacturer="m", product="p", models=(), hardware_ids=(), version=None)
    items = answer_form(facts)
    assert {i.section for i in items} == {code for code, _ in SECTIONS}
    assert len({i.id for i in items}) == len(items)
    # Without a release, release questions are manual rather than a guessed "No".
    by_id = {i.id: i for i in items}
    assert by_id["SBOM-1"].manual and by_id["CSUP-1"].manual
