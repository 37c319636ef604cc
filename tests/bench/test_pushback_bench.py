"""bench.pushback with a few envelopes: both stacks ran and every file was compared."""

from __future__ import annotations

import pytest

from tests.bench.conftest import run_bench

pytestmark = pytest.mark.slow


def test_pushback_bench_json() -> None:
    report = run_bench("pushback", "--n", "3", "--rounds", "2", "--pdf-kb", "20")
    assert set(report["stacks"]) == {"floor", "dispatcher"}
    # 4 files per envelope, floor and sink, each round
    assert report["files_verified"] == 3 * 4 * 2 * 2
    assert report["dispatcher_vs_floor"] > 0
    assert report["peak_rss_mb"] > 0
