"""The development PKI made by ``keiyaku init``: files, certificate profiles, offline LTV."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import SigningError
from core.signing import FieldBox, SigningEngine, approval_reason, load_pkcs12_signer, verify_pdf
from core.signing.devpki import DevPki, create_dev_pki
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.pki_plugin import DEV_PASSPHRASE, load_pem_cert


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _years(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc) / timedelta(days=365)


def test_files_and_permissions(devpki: DevPki) -> None:
    assert devpki.exists()
    assert DevPki.at(devpki.directory) == devpki
    for secret in (devpki.signer_p12, devpki.tsa_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_every_subject_says_development_only(devpki: DevPki) -> None:
    key, signer, chain = pkcs12.load_key_and_certificates(
        devpki.signer_p12.read_bytes(), DEV_PASSPHRASE
    )
    assert key is not None and signer is not None
    for cert in (_cert(devpki.root_cert), _cert(devpki.tsa_cert), signer, *chain):
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert org == "keiyaku-gateway DEVELOPMENT ONLY"
        assert str(cn).endswith("(開発用・本番使用不可)")


def test_certificate_profiles(devpki: DevPki) -> None:
    root = _cert(devpki.root_cert)
    tsa = _cert(devpki.tsa_cert)
    _key, signer, chain = pkcs12.load_key_and_certificates(
        devpki.signer_p12.read_bytes(), DEV_PASSPHRASE
    )
    assert signer is not None
    assert [c.fingerprint(root.signature_hash_algorithm) for c in chain] == [  # type: ignore[arg-type]
        root.fingerprint(root.signature_hash_algorithm)  # type: ignore[arg-type]
    ]
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 9.9 < _years(root) < 10.1
    assert 4.9 < _years(signer) < 5.1
    usage = signer.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.content_commitment
    eku = tsa.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    for cert in (signer, tsa):
        cert.verify_directly_issued_by(root)


def test_crl_is_signed_by_root_and_fresh(devpki: DevPki) -> None:
    root = _cert(devpki.root_cert)
    crl = x509.load_der_x509_crl(devpki.root_crl.read_bytes())
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0
    assert crl.next_update_utc is not None and crl.next_update_utc > datetime.now(UTC) + timedelta(
        days=3000
    )


def test_keys_are_encrypted_with_the_passphrase(devpki: DevPki) -> None:
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(devpki.tsa_key.read_bytes(), password=None)
    key = serialization.load_pem_private_key(devpki.tsa_key.read_bytes(), password=DEV_PASSPHRASE)
    signature = key.sign(b"x", padding.PKCS1v15(), _cert(devpki.tsa_cert).signature_hash_algorithm)  # type: ignore[union-attr,call-arg,arg-type]
    assert signature
    with pytest.raises(SigningError):
        load_pkcs12_signer(devpki.signer_p12, b"not the passphrase")


def test_passphrase_is_required(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        create_dev_pki(tmp_path, passphrase=b"")


def test_long_buyer_name_still_fits(tmp_path: Path) -> None:
    pki = create_dev_pki(
        tmp_path, passphrase=b"p", buyer_name="東京都総務局財務部契約第一課電子契約推進担当係"
    )
    cn = _cert(pki.root_cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert str(cn).endswith("(開発用・本番使用不可)")


def test_sealed_dev_document_is_ltv_ok_offline(
    devpki_engine: SigningEngine, devpki: DevPki
) -> None:
    roots = [load_pem_cert(devpki.root_cert)]
    doc = devpki_engine.prepare(
        make_pdf(),
        certificate_id="fedcba9876543210fedcba9876543210",
        fields=[FieldBox(name="kg_f_1", page=1, rect=(300, 700, 500, 720))],
    )
    reason = approval_reason(name="開発 太郎", email="dev@example.jp", at=datetime.now(UTC))
    doc = devpki_engine.sign_approval(
        doc, signature_field="kg_sig_1", reason=reason, values={"kg_f_1": "令和7年10月1日"}
    )
    before = verify_pdf(doc, trust_roots=roots)
    assert not before.ok and not before.signatures[0].ltv
    assert before.signatures[0].intact and before.signatures[0].trusted
    sealed = devpki_engine.seal(doc)
    report = verify_pdf(sealed, trust_roots=roots, offline=True)
    assert report.ok, report.as_dict()
    assert [s.kind for s in report.signatures] == ["approval", "document_timestamp"]
    assert all(s.ltv for s in report.signatures)
