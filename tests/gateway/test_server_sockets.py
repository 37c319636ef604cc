"""`keiyaku serve --fd` serves its inherited socket as TCP: answers are not held back by Nagle."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import httpx
import pytest

from core.signing.devpki import DevPki
from gateway.server import inherited_socket, listening_socket
from tests.fixtures.gateway import served, write_config


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
    on the socket it was handed and stops on SIGTERM (``served`` checks that it exits)."""
    config = write_config(tmp_path, devpki, database_url=f"sqlite:///{tmp_path / 'k.db'}")
    with served(config, workers=workers) as url:
        answer = httpx.get(f"{url}/healthz", timeout=5)
        assert answer.status_code == 200
        assert answer.json()["status"] == "ok"
