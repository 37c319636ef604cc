"""Long-running processes freeze what start-up left alive (``gateway.server.settle_heap``), so
the cycle collector's full passes no longer stop every request in flight to walk it: `keiyaku
serve` (one process, or each worker process) shows it in ``/metrics``, `keiyaku jobs start`
says so on stderr."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from core.signing.devpki import DevPki
from gateway.server import listening_socket
from tests.fixtures.gateway import SECRETS, write_config

ROOT = Path(__file__).resolve().parents[2]
# A start-up's heap (modules, the app, the signing engine) is some 300,000 objects; a process
# that froze nothing reports 0, one that froze only a test's handful far fewer than this.
STARTUP_HEAP = 50_000
FROZEN = re.compile(r"^keiyaku_gc_frozen_objects (\S+)$", re.MULTILINE)


def _keiyaku(config: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", "gateway.cli", "--config", str(config), *args],
        cwd=ROOT,
        env={**os.environ, **SECRETS},
        text=True,
        **popen,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_served_processes_freeze_their_startup_heap(
    tmp_path: Path, devpki: DevPki, workers: int
) -> None:
    config = write_config(tmp_path, devpki, database_url=f"sqlite:///{tmp_path / 'k.db'}")
    sock = listening_socket()
    port = sock.getsockname()[1]
    server = _keiyaku(
        config,
        "serve",
        "--fd",
        str(sock.fileno()),
        "--workers",
        str(workers),
        pass_fds=(sock.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        frozen: list[int] = []
        # Each scrape is a new connection: with two workers, either one may answer it.
        while len(frozen) < 8 * workers:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except httpx.TransportError:
                assert server.poll() is None, "keiyaku serve exited"
                assert time.monotonic() < deadline, "keiyaku serve did not answer"
                time.sleep(0.2)
                continue
            assert answer.status_code == 200
            found = FROZEN.search(answer.text)
            assert found, "no keiyaku_gc_frozen_objects in /metrics"
            frozen.append(int(float(found.group(1))))
            # the collector's own counts are there too (prometheus_client's GCCollector)
            assert 'python_gc_collections_total{generation="2"}' in answer.text
        assert min(frozen) >= STARTUP_HEAP, frozen
    finally:
        server.terminate()
        assert server.wait(timeout=60) is not None
        sock.close()


def test_the_scheduler_freezes_its_startup_heap(tmp_path: Path, devpki: DevPki) -> None:
    config = write_config(tmp_path, devpki, database_url=f"sqlite:///{tmp_path / 'k.db'}")
    scheduler = _keiyaku(config, "jobs", "start", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    assert scheduler.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in scheduler.stderr], daemon=True)
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
        scheduler.stderr.close()
