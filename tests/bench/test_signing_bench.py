"""bench.signing at n=2 on a small PDF: every stack ran and every output was verified."""

from __future__ import annotations

import pytest

from bench.harness import MEMORY_OPS
from tests.bench.conftest import run_bench

pytestmark = pytest.mark.slow


def test_signing_bench_json() -> None:
    report = run_bench("signing", "--n", "2", "--sizes", "10k", "--stores", "sqlite")
    entry = report["sizes"]["10k"]
    assert set(entry["stacks"]) == {
        "approval-sqlite",
        "approval-last-sqlite",
        "engine",
        "pyhanko-doc",
        "pyhanko-tuned",
        "floor",
    }
    for stack in entry["stacks"].values():
        assert stack["n"] == 2
        assert stack["verified"] == 2 + MEMORY_OPS  # the timed operations and the memory pass's
        assert stack["p50_ms"] > 0
        assert stack["peak_rss_mb"] >= stack["idle_rss_mb"] > 0
    assert entry["approval_vs_tuned"] > 0
    # measured on a trimmed heap, an approval's own allocation shows (not hidden by kept heap)
    assert entry["stacks"]["approval-sqlite"]["above_idle_mb"] > 0
    assert entry["approval_sqlite_vs_tuned"] == entry["approval_vs_tuned"]
    # the last approval seals: measured, and each output verified as B-LTA
    assert entry["last_approval_p50_ms"] > entry["stacks"]["approval-sqlite"]["p50_ms"]
    assert entry["last_approval_peak_above_idle_x_pdf"] > 0
    assert report["workers"]["verified"] > 0
    assert report["workers"]["two_vs_one"] > 0
    assert report["tsa_requests"] > 0  # timestamps came over HTTP
