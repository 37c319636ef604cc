"""Development PKI for ``keiyaku init``: a root CA, the gateway's signing key and a dev TSA.

Everything here is marked development-only in every subject; production uses a real PKCS#12 or
PKCS#11 key and an accredited TSA. Made with ``cryptography`` alone (certomancer is test-only).

Files written into ``directory``::

    root.crt     root CA certificate (PEM), the trust anchor for verification
    root.crl     empty CRL signed by the root (DER), so LTV validation works offline
    signer.p12   signing key + certificate + chain, encrypted with the passphrase (0600)
    tsa.crt      development TSA certificate (PEM, critical EKU timeStamping)
    tsa.key      development TSA key (PEM, encrypted with the same passphrase, 0600)

Keys are RSA-2048: pyHanko's in-process TSA is RSA-only, and with the key object cached an
RSA-2048 approval measured no slower than ECDSA P-256 (the signature is ~1 ms either way),
while RSA is what every Japanese public-sector validator accepts.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevPki", "create_dev_pki"]

_ORG = "keiyaku-gateway DEVELOPMENT ONLY"
_DEV_MARK = "(開発用・本番使用不可)"
_ROOT_YEARS = 10
_LEAF_YEARS = 5


@dataclass(frozen=True)
class DevPki:
    """Where the development PKI's files are."""

    directory: Path
    root_cert: Path
    root_crl: Path
    signer_p12: Path
    tsa_cert: Path
    tsa_key: Path

    @classmethod
    def at(cls, directory: Path) -> DevPki:
        """The file layout of a development PKI in ``directory`` (whether or not it exists)."""
        return cls(
            directory=directory,
            root_cert=directory / "root.crt",
            root_crl=directory / "root.crl",
            signer_p12=directory / "signer.p12",
            tsa_cert=directory / "tsa.crt",
            tsa_key=directory / "tsa.key",
        )

    def exists(self) -> bool:
        """True when every file is present."""
        return all(
            p.exists()
            for p in (self.root_cert, self.root_crl, self.signer_p12, self.tsa_cert, self.tsa_key)
        )


def _fit(text: str, limit: int = 64) -> str:
    """Cut ``text`` to X.520's 64-byte upper bound for these attributes (counted in UTF-8)."""
    while len(text.encode("utf-8")) > limit:
        text = text[:-1]
    return text


def _name(common_name: str, buyer_name: str) -> x509.Name:
    # the development mark goes last and is never cut: it is the point of the name
    mark = f" {_DEV_MARK}"
    cn = _fit(common_name, 64 - len(mark.encode("utf-8"))) + mark
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _fit(buyer_name or "開発用")),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_private(path: Path, data: bytes) -> None:
    # create with 0600 from the start: never world-readable, not even briefly
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)


def _key_usage(
    *, digital_signature: bool = False, non_repudiation: bool = False, ca: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=non_repudiation,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def create_dev_pki(directory: Path, *, passphrase: bytes, buyer_name: str = "開発用") -> DevPki:
    """Create the development PKI in ``directory`` (see the module docstring for the files)."""
    if not passphrase:
        raise ValueError("a passphrase is required to protect the development keys")
    directory.mkdir(parents=True, exist_ok=True)
    pki = DevPki.at(directory)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_before = now - dt.timedelta(minutes=5)  # tolerate small clock skew between processes

    root_key = _key()
    root_name = _name("keiyaku-gateway Root CA", buyer_name)
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + dt.timedelta(days=365 * _ROOT_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, ca=True), critical=True)
        .add_extension(root_ski, critical=False)
        .sign(root_key, hashes.SHA256())
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski)

    def leaf(key: rsa.RSAPrivateKey, common_name: str, years: int) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, buyer_name))
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(now + dt.timedelta(days=365 * years))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(aki, critical=False)
        )

    signer_key = _key()
    signer = (
        leaf(signer_key, f"{buyer_name} 電子契約署名", _LEAF_YEARS)
        .add_extension(_key_usage(digital_signature=True, non_repudiation=True), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    tsa_key = _key()
    tsa = (
        # the TSA signs document timestamps that must outlive the signer: as long as the root
        leaf(tsa_key, "keiyaku-gateway TSA", _ROOT_YEARS)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root_name)
        .last_update(not_before)
        # nothing is ever revoked in a development PKI; the CRL only has to stay fresh offline
        .next_update(now + dt.timedelta(days=365 * _ROOT_YEARS))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(aki, critical=False)
        .sign(root_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    pki.root_cert.write_bytes(root.public_bytes(pem))
    pki.tsa_cert.write_bytes(tsa.public_bytes(pem))
    pki.root_crl.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    _write_private(
        pki.signer_p12,
        pkcs12.serialize_key_and_certificates(
            name=b"keiyaku-gateway development signer",
            key=signer_key,
            cert=signer,
            cas=[root],
            encryption_algorithm=serialization.BestAvailableEncryption(passphrase),
        ),
    )
    _write_private(
        pki.tsa_key,
        tsa_key.private_bytes(
            pem,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        ),
    )
    return pki
