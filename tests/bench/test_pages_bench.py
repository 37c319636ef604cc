"""bench.pages, one round on a 3-page document: every stack loaded and verified."""

from __future__ import annotations

import shutil

import pytest

from tests.bench.conftest import run_bench
from tests.e2e.conftest import CHROMIUM

pytestmark = pytest.mark.slow


def test_pages_bench_json() -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Debian chromium is not installed")
    report = run_bench("pages", "--rounds", "1", "--pages", "3")
    assert set(report["stacks"]) == {"first-visit", "revisit", "floor"}
    for stack in report["stacks"].values():
        assert stack["n"] == 1 and stack["verified"] == 1
        assert stack["visible_images"] >= 1
    assert report["stacks"]["revisit"]["image_bytes_p50"] == 0  # from the browser's cache
    assert 0 < report["largest_page_image_bytes"] <= report["page_limit_bytes"]
    assert report["first_visit_vs_floor"] > 0
