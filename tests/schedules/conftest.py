"""Fixtures for job tests: the receiving systems, and a services runtime on the dev PKI."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from core.blobs import BlobStore
from core.runtime import Runtime
from core.signing import SigningEngine
from tests.fixtures.http_sink import rest_sink_server
from tests.fixtures.soap_sink import soap_sink_server

__all__ = ["rest_sink_server", "runtime", "soap_sink_server"]


@pytest.fixture
def runtime(devpki_engine: SigningEngine, tmp_path: Path) -> Runtime:
    """A runtime with a fresh blob folder (the engine is unused by push-back but required)."""
    return Runtime(
        blobs=BlobStore(tmp_path / "blobs", secrets.token_bytes(32)),
        signing=devpki_engine,
        buyer_name="開発市",
    )
