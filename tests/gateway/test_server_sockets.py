"""`keiyaku serve --fd` serves its inherited socket as TCP: answers are not held back by Nagle."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.signing.devpki import DevPki
from gateway.server import inherited_socket, listening_socket
from tests.fixtures.gateway import SECRETS, write_config

ROOT = Path(__file__).resolve().parents[2]


def _accepted_nodelay(listener: socket.socket) -> int:
    """TCP_NODELAY of a connection asyncio accepts on ``listener`` (as uvicorn serves it)."""
    port = listener.getsockname()[1]

    async def accept_one() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listener)
        try:
            with socket.create_connection(("127.0.0.1", port)):
                return await asyncio.wait_for(seen, 10)
        finally:
            server.close()

    return asyncio.run(accept_one())


def test_connections_on_an_inherited_listening_socket_are_sent_without_delay() -> None:
    """uvicorn's own ``fd`` option opens the descriptor as a Unix socket, and asyncio then
    leaves Nagle on: an answer's second write waited for the client's delayed ACK (~40 ms)."""
    listener = listening_socket()
    inherited = inherited_socket(os.dup(listener.fileno()))
    try:
        assert (inherited.family, inherited.proto) == (socket.AF_INET, socket.IPPROTO_TCP)
        assert _accepted_nodelay(inherited) == 1
        # the harness's own socket is as plainly TCP (serve_in_thread serves it directly)
        assert _accepted_nodelay(listener) == 1
    finally:
        inherited.close()
        listener.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_an_inherited_socket(tmp_path: Path, devpki: DevPki, workers: int) -> None:
    """``keiyaku serve --fd N`` (one process, or worker processes sharing the socket) answers
    on the socket it was handed and stops on SIGTERM."""
    config = write_config(tmp_path, devpki, database_url=f"sqlite:///{tmp_path / 'k.db'}")
    sock = listening_socket()
    port = sock.getsockname()[1]
    command = [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve"]
    server = subprocess.Popen(
        [*command, "--fd", str(sock.fileno()), "--workers", str(workers)],
        cwd=ROOT,
        env={**os.environ, **SECRETS},
        pass_fds=(sock.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None, "keiyaku serve exited"
                assert time.monotonic() < deadline, "keiyaku serve did not answer"
                time.sleep(0.2)
        assert answer.status_code == 200
        assert answer.json()["status"] == "ok"
    finally:
        server.terminate()
        assert server.wait(timeout=60) is not None
        sock.close()
