# mypy: disable-error-code="no-untyped-call"
# (pyHanko's PDF object constructors and writer methods are unannotated; every call would need
# its own ignore otherwise)
"""The gateway's signing key: PKCS#12 file or PKCS#11 token, wrapped once per process.

pyHanko's ``SimpleSigner`` re-parses the private key on every signature (~45 ms for RSA with
OpenSSL 3's key check). :class:`_CachedKeySigner` parses it once and keeps the
``cryptography`` key object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from asn1crypto import algos, cms, pem, tsp, x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from pyhanko.config.pkcs11 import TokenCriteria
from pyhanko.sign import attributes
from pyhanko.sign.general import as_signing_certificate_v2
from pyhanko.sign.pkcs11 import PKCS11Signer, open_pkcs11_session
from pyhanko.sign.signers import Signer
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import get_pyca_cryptography_hash

from core.errors import SigningError

__all__ = ["SigningKey", "load_pkcs11_signer", "load_pkcs12_signer"]

_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class _SigningCertificateV2(attributes.CMSAttributeProvider):
    """signing-certificate-v2 from pre-encoded DER: asn1crypto then copies bytes, not trees."""

    attribute_type = "signing_certificate_v2"

    def __init__(self, der: bytes) -> None:
        self._der = der

    async def build_attr_value(self, dry_run: bool = False) -> tsp.SigningCertificateV2:
        return tsp.SigningCertificateV2.load(self._der)


class _CmsAssemblyCache(Signer):
    """Per-signer constant parts of the CMS, encoded once.

    Profiling showed asn1crypto re-encoding the signing-certificate-v2 attribute (issuer name,
    serial) three times per signature, ~9 ms, although it never changes for a given key.
    """

    _cached_sc_v2: bytes | None = None
    _cached_sid: bytes | None = None

    def _signed_attr_providers(
        self, *args: Any, **kwargs: Any
    ) -> Iterable[attributes.CMSAttributeProvider]:
        if self._cached_sc_v2 is None:
            self._cached_sc_v2 = as_signing_certificate_v2(self.signing_cert).dump()
        for provider in super()._signed_attr_providers(*args, **kwargs):
            if isinstance(provider, attributes.SigningCertificateV2Provider):
                yield _SigningCertificateV2(self._cached_sc_v2)
            else:
                yield provider

    def signer_info(
        self, digest_algorithm: str, signed_attrs: Any, signature: Any
    ) -> cms.SignerInfo:
        """``SignerInfo`` like pyHanko's, with the constant identifiers pre-encoded."""
        if digest_algorithm == "shake256":  # pyHanko's RFC 8419 special case
            return super().signer_info(digest_algorithm, signed_attrs, signature)
        cert = self.signing_cert
        assert cert is not None  # both signers here always have one
        if self._cached_sid is None:
            self._cached_sid = cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                        {"issuer": cert.issuer, "serial_number": cert.serial_number}
                    )
                }
            ).dump()
        return cms.SignerInfo(
            {
                "version": "v1",
                "sid": cms.SignerIdentifier.load(self._cached_sid),
                "digest_algorithm": algos.DigestAlgorithm({"algorithm": digest_algorithm}),
                "signature_algorithm": self.get_signature_mechanism_for_digest(digest_algorithm),
                "signed_attrs": signed_attrs,
                "signature": signature,
            }
        )


class _CachedKeySigner(_CmsAssemblyCache):
    """A pyHanko signer over an already parsed ``cryptography`` private key."""

    def __init__(
        self,
        *,
        private_key: _PrivateKey,
        signing_cert: x509.Certificate,
        other_certs: Sequence[x509.Certificate],
    ) -> None:
        registry = SimpleCertificateStore()
        registry.register_multiple(list(other_certs))
        super().__init__(signing_cert=signing_cert, cert_registry=registry)
        self._private_key = private_key

    async def async_sign_raw(
        self, data: bytes, digest_algorithm: str, dry_run: bool = False
    ) -> bytes:
        """Sign ``data`` with the cached key (PKCS#1 v1.5, ECDSA or EdDSA per the certificate)."""
        key = self._private_key
        if isinstance(key, rsa.RSAPrivateKey):
            if dry_run:
                return bytes(key.key_size // 8)
            return key.sign(data, padding.PKCS1v15(), get_pyca_cryptography_hash(digest_algorithm))
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if dry_run:
                # DER ECDSA signature: two integers of up to key size + 1 byte each, plus headers
                return bytes(2 * (key.key_size // 8 + 1) + 8)
            return key.sign(data, ec.ECDSA(get_pyca_cryptography_hash(digest_algorithm)))
        return key.sign(data)


class _FastPKCS11Signer(_CmsAssemblyCache, PKCS11Signer):
    """pyHanko's PKCS#11 signer with the CMS constants encoded once."""


def _signing_error(code: str, message_en: str, message_ja: str, exc: BaseException) -> SigningError:
    err = SigningError(code, message_en, message_ja, details={"reason": str(exc)[:200]})
    err.__cause__ = exc
    return err


class SigningKey:
    """The gateway's signing key: a pyHanko signer, its certificate and chain."""

    def __init__(
        self,
        *,
        signer: Signer,
        signing_cert: x509.Certificate,
        chain: Sequence[x509.Certificate],
        kind: str,
        session: Any = None,
    ) -> None:
        self.signer = signer
        self.signing_cert = signing_cert
        self.chain = tuple(chain)
        self.kind = kind
        self._session = session

    @property
    def subject_cn(self) -> str:
        """The certificate subject's common name (or the whole subject if it has none)."""
        native = self.signing_cert.subject.native
        return str(native.get("common_name") or self.signing_cert.subject.human_friendly)

    @property
    def signature_size(self) -> int:
        """Upper bound of one raw signature value in bytes."""
        pub = self.signing_cert.public_key
        if pub.algorithm == "rsa":
            return int(pub.bit_size) // 8
        if pub.algorithm == "ec":
            return 2 * (int(pub.bit_size) // 8 + 1) + 8
        return 128

    def cms_certificates_size(self) -> int:
        """DER size of every certificate pyHanko will embed in the CMS signature."""
        certs = {c.dump() for c in self.signer.cert_registry}
        certs.add(self.signing_cert.dump())
        return sum(len(c) for c in certs)

    def close(self) -> None:
        """Close the PKCS#11 session, if any (idempotent)."""
        if self._session is not None:
            session, self._session = self._session, None
            session.close()


def _load_cert_file(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if pem.detect(data):
        _type, _headers, data = pem.unarmor(data)
    return x509.Certificate.load(data)


def load_pkcs12_signer(path: Path, passphrase: bytes | None) -> SigningKey:
    """Load key, certificate and chain from a PKCS#12 file; parse the key once."""
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(path.read_bytes(), passphrase)
    except (OSError, ValueError) as exc:
        raise _signing_error(
            "signing.key_unavailable",
            f"Cannot load the signing key from {path.name} (missing file or wrong passphrase).",
            f"署名鍵 {path.name} を読み込めません（ファイルがないかパスフレーズが違います）。",
            exc,
        ) from exc
    if key is None or cert is None:
        raise SigningError(
            "signing.key_unavailable",
            f"{path.name} holds no private key with its certificate.",
            f"{path.name} に秘密鍵と証明書が含まれていません。",
        )
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise SigningError(
            "signing.key_unavailable",
            f"Unsupported key type {type(key).__name__}.",
            "対応していない種類の署名鍵です。",
        )
    signing_cert = x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    chain = [x509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in extra]
    signer = _CachedKeySigner(private_key=key, signing_cert=signing_cert, other_certs=chain)
    return SigningKey(signer=signer, signing_cert=signing_cert, chain=chain, kind="pkcs12")


def load_pkcs11_signer(
    *,
    module_path: str,
    token_label: str,
    pin: str,
    key_label: str,
    cert_label: str | None = None,
    other_certs: Sequence[Path] = (),
) -> SigningKey:
    """Open one session on a PKCS#11 token and bind the key and certificate labelled there."""
    try:
        chain = [_load_cert_file(p) for p in other_certs]
    except (OSError, ValueError) as exc:
        raise _signing_error(
            "signing.key_unavailable",
            "Cannot read the extra chain certificates for the PKCS#11 key.",
            "PKCS#11 鍵の中間証明書を読み込めません。",
            exc,
        ) from exc
    session = None
    try:
        session = open_pkcs11_session(
            module_path, token_criteria=TokenCriteria(label=token_label), user_pin=pin
        )
        signer = _FastPKCS11Signer(
            session,
            cert_label=cert_label or key_label,
            key_label=key_label,
            ca_chain=chain,
        )
        # loads certificate and key handle now rather than inside the first signature
        signing_cert = signer.signing_cert
        if signing_cert.public_key.algorithm == "ec":
            # SoftHSM2 and several HSMs lack CKM_ECDSA_SHA256: hash here, sign raw there
            signer.use_raw_mechanism = True
    # python-pkcs11 and pyHanko raise a dozen unrelated types here (PKCS11Error subclasses,
    # pyHanko's own errors, OSError for a missing module): all mean "this key cannot be used"
    except Exception as exc:
        if session is not None:
            session.close()
        raise _signing_error(
            "signing.key_unavailable",
            f"Cannot use the PKCS#11 key {key_label!r} on token {token_label!r}.",
            f"PKCS#11 トークン {token_label!r} の署名鍵 {key_label!r} を利用できません。",
            exc,
        ) from exc
    return SigningKey(
        signer=signer, signing_cert=signing_cert, chain=chain, kind="pkcs11", session=session
    )
