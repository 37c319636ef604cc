"""bench.search on a few thousand envelopes: every search returned the floor's rows."""

from __future__ import annotations

import pytest

from tests.bench.conftest import run_bench

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_search_bench_json(postgres_url: str) -> None:
    report = run_bench("search", "--envelopes", "2000", "--runs", "3")
    assert len(report["shapes"]) == 16  # 8 shapes, admin and a department clerk
    for shape in report["shapes"]:
        assert shape["verified"] == 3
        assert shape["search_vs_floor"] > 0
    assert report["verified"] == 48
