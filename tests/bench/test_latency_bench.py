"""bench.latency at one round: every click answered, every sink PDF byte-compared and valid."""

from __future__ import annotations

import pytest

from tests.bench.conftest import run_bench

pytestmark = pytest.mark.slow


def test_latency_bench_json() -> None:
    report = run_bench(
        "latency", "--rounds", "1", "--tsa-latency-ms", "50", "--pushback-poll-seconds", "0.3"
    )
    for name in ("click", "done", "floor", "last_approval_to_sink"):
        assert report[name]["p50_ms"] > 0
    assert report["click"]["n"] == report["done"]["n"] == report["floor"]["n"] == 3
    assert report["last_approval_to_sink"]["n"] == 1
    assert sum(report["done_headings"].values()) == 3
    # the warm-up envelope and the measured one: two documents each, in the sink and valid
    assert report["verified_pdfs"] == 4
    assert report["tsa_requests"] >= 2 * (3 * 2 + 2)  # 3 approvals x 2 documents + 2 seals
    assert report["click_vs_floor"] > 0
