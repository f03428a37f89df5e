from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from medsec.lifecycle.endoflife import (
    cycle_for,
    load_product,
    load_products,
    parse_product,
    product_for_component,
    support_ended,
)
from medsec.lifecycle.errors import AmbiguousCycleError, EndOfLifeDataError, UnknownCycleError
from medsec.sbom.model import Component, ComponentKind, ComponentRef

pytestmark = pytest.mark.req("SM-4")

DATA = Path(__file__).parent.parent / "data" / "lifecycle"


@pytest.fixture(scope="module")
def products():
    return load_products(DATA)


def test_real_product_files_parse(products) -> None:
    assert {p: len(products[p].cycles) for p in ("debian", "ubuntu", "windows", "python", "openssl")} == {
        "debian": 18,
        "ubuntu": 44,
        "windows": 47,
        "python": 17,
        "openssl": 14,
    }
    assert products["debian"].cpes[0] == "cpe:2.3:o:debian:debian_linux"


def test_debian_9_dates_as_published_in_the_feed(products) -> None:
    stretch = products["debian"].cycle("9")
    assert stretch.codename == "Stretch"
    assert stretch.label == "9 (Stretch)"
    assert stretch.release_date == dt.date(2017, 6, 17)
    # endoflife.date at the pinned commit; Debian's own pages say 2020-07-06 and 2022-06-30 (see test_overrides).
    assert stretch.eol == dt.date(2020, 7, 18)
    assert stretch.eoes == dt.date(2022, 7, 1)


def test_ubuntu_lts_and_windows_iot_ltsc_cycles(products) -> None:
    xenial = products["ubuntu"].cycle("16.04")
    assert xenial.lts is True
    assert (xenial.eoas, xenial.eol, xenial.eoes) == (dt.date(2021, 4, 2), dt.date(2021, 4, 2), dt.date(2026, 4, 2))
    iot = products["windows"].cycle("10-21h2-iot-lts")
    assert iot.lts is True
    assert isinstance(iot.eol, dt.date)


@pytest.mark.parametrize(
    ("product", "version", "cycle"),
    [
        ("debian", "9", "9"),
        ("debian", "9.13", "9"),
        ("python", "3.11.7", "3.11"),
        ("python", "3.11", "3.11"),
        ("openssl", "1.1.1w", "1.1.1"),
        ("openssl", "1.1.0l-1~deb9u5", "1.1.0"),
        ("openssl", "3.0.13", "3.0"),
        ("ubuntu", "16.04.7", "16.04"),
        ("windows", "8.1", "8.1"),
    ],
)
def test_cycle_for_maps_component_versions(products, product: str, version: str, cycle: str) -> None:
    assert cycle_for(products[product], version).cycle == cycle


def test_cycle_for_does_not_match_a_shorter_number(products) -> None:
    # 3.1 must not swallow 3.10.x or 3.11.x.
    assert cycle_for(products["python"], "3.10.2").cycle == "3.10"


def test_windows_build_shared_by_editions_is_ambiguous(products) -> None:
    with pytest.raises(AmbiguousCycleError) as e:
        cycle_for(products["windows"], "10.0.19044.3086")
    assert "10-21h2-iot-lts" in e.value.candidates
    assert "name the cycle" in e.value.diagnostics()


def test_unknown_version_is_refused(products) -> None:
    with pytest.raises(UnknownCycleError):
        cycle_for(products["debian"], "99")


def test_boolean_support_values() -> None:
    text = """---
title: Example
category: os
permalink: /example
releases:
  - releaseCycle: "2"
    eol: false
    support: true
  - releaseCycle: "1"
    eol: true
    extendedSupport: 2030-01-31
---
body
"""
    product = parse_product(text, "example.md")
    two, one = product.cycles
    assert (two.eol, two.eoas) == (False, True)
    assert (one.eol, one.eoes) == (True, dt.date(2030, 1, 31))
    assert support_ended(one.eol, dt.date(2000, 1, 1)) is True
    assert support_ended(two.eol, dt.date(2100, 1, 1)) is False
    assert support_ended(dt.date(2020, 1, 1), dt.date(2020, 1, 1)) is True


def _with_release(release: str, header: str = "title: X\ncategory: os\npermalink: /x\n") -> str:
    return f"---\n{header}releases:\n{release}---\n"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (_with_release('  - releaseCycle: "1"\n    eol: soon\n'), "releases[0] (1).eol"),
        (_with_release("  - releaseCycle: 3.10\n    eol: false\n"), "releases[0].releaseCycle"),
        (_with_release('  - releaseCycle: "1"\n    eolColumn: Security\n'), "releases[0] (1).eol"),
        (_with_release('  - releaseCycle: "1"\n  - releaseCycle: "1"\n'), "releases[1].releaseCycle"),
        (_with_release('  - releaseCycle: "1"\n    releaseDate: 2020-13-01\n'), "(front matter)"),
        (
            _with_release('  - releaseCycle: "1"\n    releaseDate: 2020-01-01T10:00:00Z\n'),
            "releases[0] (1).releaseDate",
        ),
        (
            _with_release('  - releaseCycle: "1"\n    support: 2020-01-01\n    eoas: 2020-01-01\n'),
            "releases[0].support",
        ),
        (_with_release('  - releaseCycle: "A"\n'), "releases[0].releaseCycle"),
        (_with_release("", header="category: os\npermalink: /x\n"), "title"),
        (_with_release("", header="title: X\ncategory: toaster\npermalink: /x\n"), "category"),
        (_with_release("", header="title: X\ncategory: os\npermalink: x\n"), "permalink"),
        ("no front matter", "(front matter)"),
    ],
)
def test_schema_violations_name_file_and_field(text: str, field: str) -> None:
    with pytest.raises(EndOfLifeDataError) as e:
        parse_product(text, "broken.md")
    assert e.value.source == "broken.md"
    assert e.value.field == field
    assert str(e.value).startswith(f"broken.md: {field}: ")


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


@pytest.mark.parametrize("name", ["debian.md", "ubuntu.md", "windows.md", "python.md", "openssl.md"])
def test_copied_files_also_pass_upstream_product_schema(name: str) -> None:
    schema = json.loads((DATA / "product-schema.json").read_text())
    front = (DATA / name).read_text().split("---\n")[1]
    data = _jsonable(yaml.safe_load(front))
    # The pinned schema predates the files' automation methods ("debian", "release_table") and requires
    # customFields keys ("property", "position") the files no longer use; neither part carries support dates.
    data.pop("auto", None)
    data.pop("customFields", None)
    jsonschema.Draft7Validator(schema).validate(data)
    load_product(DATA / name)


def test_product_for_component_by_cpe_and_purl(products) -> None:
    debian = Component(
        ComponentRef("os"),
        "debian",
        "9",
        kind=ComponentKind.OPERATING_SYSTEM,
        cpe="cpe:2.3:o:debian:debian_linux:9:*:*:*:*:*:*:*",
    )
    python = Component(ComponentRef("py"), "python", "3.11.7", purl="pkg:generic/python@3.11.7")
    other = Component(ComponentRef("x"), "left-pad", "1.0", purl="pkg:npm/left-pad@1.0")
    assert product_for_component(debian, products.values()).product == "debian"
    assert product_for_component(python, products.values()).product == "python"
    assert product_for_component(other, products.values()) is None
