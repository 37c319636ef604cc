"""Smoke runs of the benches: each one, tiny, with ``--json``; the shape and the verification
counts are checked, never the timings (speed targets live in the benches themselves)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """``python -m bench.<module> --json ARGS`` from the project root; its one JSON object."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout[-3000:]
    report: dict[str, Any] = json.loads(lines[0])
    assert report["bench"] == module
    for key in ("machine_start", "machine_end"):
        assert set(report[key]) == {"cores", "load"}
    return report
