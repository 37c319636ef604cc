"""bench.intake, tiny: every stack imported each round and every import was verified."""

from __future__ import annotations

import pytest

from tests.bench.conftest import run_bench

pytestmark = pytest.mark.slow


def test_intake_bench_json() -> None:
    report = run_bench("intake", "--rows", "60", "--rounds", "2", "--stores", "sqlite")
    assert set(report["stacks"]) == {"pipeline-sqlite", "floor-sqlite", "pipeline-sqlite-x2"}
    for stack in report["stacks"].values():
        assert stack["n"] == 2
        assert stack["verified"] == 2  # awards, PDFs by SHA-256 and their mirror copies
        assert stack["peak_rss_mb"] >= stack["idle_rss_mb"] > 0
    assert report["pdfs"] == 6
    assert report["pipeline_sqlite_vs_floor"] > 0
    assert report["x2_peak_vs_pipeline"] > 0
