"""A production-shaped gateway: key in an HSM (SoftHSM2 over PKCS#11), a real RFC 3161 TSA."""

from __future__ import annotations

from pathlib import Path

import pytest
from asn1crypto import pem

from core.signing import verify_pdf
from core.states import EnvelopeState
from gateway.demo import run_demo
from gateway.runtime import open_gateway
from gateway.settings import load_settings
from tests.fixtures.pki import LivePki, closed_port_url
from tests.fixtures.pki_plugin import SoftHsmToken


def _production_config(
    tmp_path: Path, token: SoftHsmToken, pki: LivePki, tsa_urls: list[str]
) -> Path:
    root = tmp_path / "root.crt"
    root.write_bytes(pem.armor("CERTIFICATE", pki.root.dump()))
    chain = "\n".join(f"      - {p}" for p in token.chain) or "      []"
    urls = "\n".join(f"      - {u}" for u in tsa_urls)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
environment: production
buyer:
  name: "本番市"
database:
  url: "sqlite:///prod.db"
blobs:
  path: blobs
  master_key: ${{TEST_MASTER_KEY}}
signing:
  key:
    kind: pkcs11
    module: {token.module_path}
    token_label: {token.token_label}
    pin: ${{TEST_HSM_PIN}}
    key_label: {token.key_label}
    other_certs:
{chain}
  trust_roots: [{root}]
  tsa:
    urls:
{urls}
    timeout_seconds: 5
    attempts: 2
server:
  public_url: "https://keiyaku.example.lg.jp"
  session_key: ${{TEST_SESSION_KEY}}
intake:
  signing_authorities:
    - department: "*"
      max_amount: null
      name: "本番市長 本番 太郎"
      email: "shicho@city.example.lg.jp"
""",
        encoding="utf-8",
    )
    return config


def test_demo_flow_with_an_hsm_key_and_tsa_failover(
    tmp_path: Path,
    softhsm_token: SoftHsmToken,
    test_pki: LivePki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_token.conf))
    dead = closed_port_url()  # nothing listens there, so the failover to the next URL is exercised
    config = _production_config(tmp_path, softhsm_token, test_pki, [dead, test_pki.tsa_url])
    settings = load_settings(
        config,
        environ={
            "TEST_MASTER_KEY": "11" * 32,
            "TEST_HSM_PIN": softhsm_token.pin,
            "TEST_SESSION_KEY": "22" * 32,
        },
    )
    gateway = open_gateway(settings)
    try:
        result = run_demo(gateway, output=tmp_path / "out")
        with gateway.sessions() as session:
            from core.envelopes.lifecycle import get_envelope

            assert get_envelope(session=session, envelope_id=result.envelope_id).state is (
                EnvelopeState.COMPLETED
            )
    finally:
        gateway.close()
    for path in result.signed:
        report = verify_pdf(path.read_bytes(), trust_roots=[test_pki.root])
        assert report.ok, report.as_dict()
        assert sum(1 for s in report.signatures if s.kind == "approval") == 2
        assert all(s.ltv for s in report.signatures), report.as_dict()
