"""Long-running processes freeze what start-up left alive (``gateway.runtime.settle_heap``), so
the cycle collector's full passes no longer stop every request in flight to walk it: `keiyaku
serve` (one process, or each worker process) shows it in ``/metrics``, `keiyaku jobs start`
says so on stderr."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from core.signing.devpki import DevPki
from tests.fixtures.gateway import keiyaku, served, write_config

# A start-up's heap (modules, the app, the signing engine) is some 300,000 objects; a process
# that froze nothing reports 0, one that froze only a test's handful far fewer than this.
STARTUP_HEAP = 50_000
FROZEN = re.compile(r"^keiyaku_gc_frozen_objects (\S+)$", re.MULTILINE)


@pytest.mark.parametrize("workers", [1, 2])
def test_served_processes_freeze_their_startup_heap(
    tmp_path: Path, devpki: DevPki, workers: int
) -> None:
    config = write_config(tmp_path, devpki, database_url=f"sqlite:///{tmp_path / 'k.db'}")
    with served(config, workers=workers) as url:
        frozen: list[int] = []
        # Each scrape is a new connection: with two workers, either one may answer it.
        for _ in range(8 * workers):
            answer = httpx.get(f"{url}/metrics", timeout=5)
            assert answer.status_code == 200
            found = FROZEN.search(answer.text)
            assert found, "no keiyaku_gc_frozen_objects in /metrics"
            frozen.append(int(float(found.group(1))))
            # the collector's own counts are there too (prometheus_client's GCCollector)
            assert 'python_gc_collections_total{generation="2"}' in answer.text
    assert min(frozen) >= STARTUP_HEAP, frozen


def test_the_scheduler_freezes_its_startup_heap(tmp_path: Path, devpki: DevPki) -> None:
    config = write_config(tmp_path, devpki, database_url=f"sqlite:///{tmp_path / 'k.db'}")
    scheduler = keiyaku(config, "jobs", "start", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    stderr = scheduler.stderr
    assert stderr is not None

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        found = None
        while found is None:
            assert time.monotonic() < deadline, "keiyaku jobs start never said it froze its heap"
            try:
                found = re.search(r"start-up heap frozen: (\d+) objects", lines.get(timeout=1))
            except queue.Empty:
                assert scheduler.poll() is None, "keiyaku jobs start exited"
        assert int(found.group(1)) >= STARTUP_HEAP, found.group(0)
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=60)
        reader.join(10)
        stderr.close()
