"""Fixtures for core tests: a services runtime on the development PKI (what `keiyaku init` makes).

The PKI and engine themselves come from ``tests.fixtures.pki_plugin`` (``devpki``,
``devpki_engine``); this adds what the envelope services need on top.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from asn1crypto import x509

from core.blobs import BlobStore
from core.runtime import Runtime
from core.signing import SigningEngine
from core.signing.devpki import DevPki
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.pki_plugin import load_pem_cert


@pytest.fixture(scope="session")
def dev_trust_roots(devpki: DevPki) -> list[x509.Certificate]:
    """The development root, as `keiyaku verify` would trust it."""
    return [load_pem_cert(devpki.root_cert)]


@pytest.fixture
def dev_runtime(devpki_engine: SigningEngine, tmp_path: Path) -> Runtime:
    """Services' runtime: a fresh blob folder per test, the session's engine."""
    return Runtime(
        blobs=BlobStore(tmp_path / "blobs", secrets.token_bytes(32)),
        signing=devpki_engine,
        buyer_name="開発市",
    )


@pytest.fixture(scope="session")
def signed_pdf(devpki_engine: SigningEngine) -> bytes:
    """A PDF that already carries a signature (an input the gateway must not break)."""
    return devpki_engine.sign_approval(
        make_pdf(pages=1), signature_field="Existing", reason="既存の署名", values={}
    )
