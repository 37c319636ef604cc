"""bench.nodes, tiny: each node count ran every round and every delivered PDF was verified."""

from __future__ import annotations

import pytest

from tests.bench.conftest import run_bench

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_nodes_bench_json() -> None:
    report = run_bench("nodes", "--envelopes", "3", "--nodes", "1,2", "--rounds", "2")
    assert set(report["nodes"]) == {"1", "2"}
    for fig in report["nodes"].values():
        assert len(fig["runs"]) == 2
        assert fig["verified"] == 2 * 3  # every delivered file: stored bytes, valid, sealed
        assert fig["per_minute"] > 0 and fig["node_peak_rss_mb"] > 0
    assert report["nodes"]["1"]["vs_first"] == 1.0
