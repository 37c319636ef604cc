"""bench.api, tiny: every stack ran each round and every created envelope was verified."""

from __future__ import annotations

import pytest

from tests.bench.conftest import run_bench

pytestmark = pytest.mark.slow


def test_api_bench_json() -> None:
    report = run_bench(
        "api", "--rounds", "2", "--n", "3", "--clients", "2", "--pdf-kb", "30", "--stores", "sqlite"
    )
    entry = report["stores"]["sqlite"]
    assert set(entry["stacks"]) == {"http-multipart", "http-json", "in-process"}
    for stack in entry["stacks"].values():
        assert stack["n"] == 6 and stack["rounds"] == 2
        assert stack["verified"] == 6 + 3  # the measured creates and the warm-up's
        assert stack["p50_ms"] > 0 and stack["creates_per_s"] > 0
    assert entry["multipart_vs_in_process_p50"] > 0
    assert entry["server_peak_rss_mb"] > 0
