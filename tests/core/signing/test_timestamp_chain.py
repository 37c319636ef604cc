"""The TSA chain's expiry follows the issuer a certificate names by key, not just by name."""

from __future__ import annotations

import datetime as dt

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.signing._engine import _chain_expiry

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Keiyaku Test CA")])


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    years: int,
    *,
    ca: bool,
) -> asn1_x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(START.replace(year=START.year + years))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    der = builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return asn1_x509.Certificate.load(der)


def test_a_renewed_ca_with_the_same_name_is_told_apart_by_its_key() -> None:
    old_key, new_key, tsa_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    old_root = _cert(CA_NAME, old_key, CA_NAME, old_key, 6, ca=True)  # lapses 2030
    new_root = _cert(CA_NAME, new_key, CA_NAME, new_key, 20, ca=True)  # lapses 2044
    tsa_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Keiyaku Test TSA")])
    tsa = _cert(tsa_name, tsa_key, CA_NAME, new_key, 11, ca=False)  # lapses 2035
    # The old root comes first: a walk by subject name alone would stop the chain at 2030.
    for pool in ([old_root, new_root], [new_root, old_root], [old_root, new_root, tsa]):
        assert _chain_expiry(tsa, pool).year == 2035
    assert _chain_expiry(tsa, []).year == 2035


def test_without_a_root_the_chain_is_followed_as_far_as_it_goes() -> None:
    root_key, ca_key, tsa_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Keiyaku Test Root")])
    ca = _cert(CA_NAME, ca_key, root_name, root_key, 5, ca=True)  # lapses 2029; root absent
    tsa_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Keiyaku Test TSA")])
    tsa = _cert(tsa_name, tsa_key, CA_NAME, ca_key, 11, ca=False)
    assert _chain_expiry(tsa, [ca]).year == 2029
