from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from medsec.lifecycle.endoflife import ProductLifecycle, load_products
from medsec.lifecycle.overrides import Evidence, LifecycleOverride, OverrideSet

DATA = Path(__file__).parent.parent / "data" / "lifecycle"


@pytest.fixture(scope="session")
def products() -> dict[str, ProductLifecycle]:
    return load_products(DATA)


@pytest.fixture
def debian_official_dates() -> OverrideSet:
    """Debian's own announcement: security support ended 2020-07-06, LTS ended 2022-06-30."""
    evidence = Evidence(
        author="psirt@example.com",
        recorded_at=dt.datetime(2025, 1, 10, 9, 0, tzinfo=dt.UTC),
        source="https://www.debian.org/releases/stretch/",
        note="Dates from debian.org; the feed lists 2020-07-18 / 2022-07-01.",
    )
    return OverrideSet(
        (LifecycleOverride("debian", "9", evidence, eol=dt.date(2020, 7, 6), eoes=dt.date(2022, 6, 30)),)
    )
