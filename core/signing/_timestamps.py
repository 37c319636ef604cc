# mypy: disable-error-code="no-untyped-call"
# (pyHanko's PDF object constructors and writer methods are unannotated; every call would need
# its own ignore otherwise)
"""RFC 3161 timestamps: a list of TSA URLs with failover and bounded retries, or a dev TSA."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import aiohttp
from asn1crypto import cms, core, keys, pem, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pyhanko.sign import general
from pyhanko.sign.timestamps import DummyTimeStamper, HTTPTimeStamper, TimeStamper
from pyhanko.sign.timestamps.common_utils import TimestampRequestError
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.util import get_pyca_cryptography_hash
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from core.errors import Disposition, SigningError

__all__ = ["TimestampService"]

log = logging.getLogger(__name__)

# until a real token has been seen, assume a generous size (token + TSA chain, DER bytes)
DEFAULT_TOKEN_SIZE = 8192
# how long the TSA certificate's expiry, read from a probe token, is trusted (seconds)
_EXPIRY_TTL = 3600.0


class _RoundFailed(Exception):
    """Every TSA URL failed once; carries the per-URL reasons."""

    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__("; ".join(f"{url}: {why}" for url, why in reasons.items()))
        self.reasons = reasons


class _FailoverTimeStamper(TimeStamper):
    """Asks each URL in order; a round that fails everywhere is retried with backoff."""

    def __init__(
        self, urls: Sequence[str], *, timeout: float, attempts: int, backoff: float
    ) -> None:
        super().__init__()
        self.urls = tuple(urls)
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.max_token_size = 0
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def _client_session(self) -> aiohttp.ClientSession:
        # one pooled session per loop: the engine's loop is persistent, so the TCP connection to
        # the TSA is reused between approvals
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._session_loop = loop
        return self._session

    async def _one_round(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        reasons: dict[str, str] = {}
        last: BaseException | None = None
        for url in self.urls:
            stamper = HTTPTimeStamper(url, timeout=self.timeout, session=self._client_session())
            try:
                token = await stamper.async_timestamp(message_digest, md_algorithm)
            except (
                TimeoutError,
                TimestampRequestError,
                OSError,
                aiohttp.ClientError,
                ValueError,
            ) as exc:
                cause = exc.__cause__ or exc
                reasons[url] = f"{type(cause).__name__}: {cause}"[:300]
                last = exc
                log.warning("TSA %s failed: %s", url, reasons[url])
                continue
            self.max_token_size = max(self.max_token_size, len(token.dump()))
            return token
        raise _RoundFailed(reasons) from last

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        """A timestamp token from the first TSA that answers; raises ``signing.tsa_unreachable``."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=max(self.backoff * 8, 0.001)),
            retry=retry_if_exception_type(_RoundFailed),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._one_round(message_digest, md_algorithm)
        except RetryError as exc:
            failed = exc.last_attempt.exception()
            reasons = failed.reasons if isinstance(failed, _RoundFailed) else {}
            raise SigningError(
                "signing.tsa_unreachable",
                f"No timestamp authority answered after {self.attempts} attempts "
                f"({len(self.urls)} URL(s)); try again later.",
                "タイムスタンプ局に接続できませんでした。しばらくしてから再度お試しください。",
                disposition=Disposition.RETRIABLE,
                details={"urls": list(self.urls), "attempts": self.attempts, "reasons": reasons},
            ) from failed
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close the pooled HTTP session (must run on the loop that opened it)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class _DevTimeStamper(DummyTimeStamper):
    """pyHanko's in-process TSA, with the key parsed once instead of per token."""

    def __init__(
        self,
        *,
        tsa_cert: x509.Certificate,
        tsa_key: rsa.RSAPrivateKey,
        certs_to_embed: Sequence[x509.Certificate],
    ) -> None:
        key_info = keys.PrivateKeyInfo.load(
            tsa_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        super().__init__(
            tsa_cert=tsa_cert,
            tsa_key=key_info,
            certs_to_embed=SimpleCertificateStore.from_certs(certs_to_embed),
        )
        self._private_key = tsa_key
        self.max_token_size = 0
        # constant per TSA certificate; encoded once (asn1crypto re-encodes it on every token)
        self._signing_certificate = general.simple_cms_attribute(
            "signing_certificate", general.as_signing_certificate(tsa_cert)
        ).dump()

    def _sign_tst_info(
        self, tst_info_data: bytes, md_algorithm: str, dt: datetime
    ) -> tuple[bytes, cms.CMSAttributes]:
        digest = hashes.Hash(get_pyca_cryptography_hash(md_algorithm))
        digest.update(tst_info_data)
        signed_attrs = cms.CMSAttributes(
            [
                general.simple_cms_attribute("content_type", "tst_info"),
                general.simple_cms_attribute(
                    "signing_time", cms.Time({"utc_time": core.UTCTime(dt)})
                ),
                cms.CMSAttribute.load(self._signing_certificate),
                general.simple_cms_attribute("message_digest", digest.finalize()),
            ]
        )
        signature = self._private_key.sign(
            signed_attrs.dump(), padding.PKCS1v15(), get_pyca_cryptography_hash(md_algorithm)
        )
        return signature, signed_attrs

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        """A token from the in-process TSA."""
        token = await super().async_timestamp(message_digest, md_algorithm)
        self.max_token_size = max(self.max_token_size, len(token.dump()))
        return token


def _read_cert(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if pem.detect(data):
        _type, _headers, data = pem.unarmor(data)
    return x509.Certificate.load(data)


class TimestampService:
    """Where signature and document timestamps come from: TSA URLs with failover, or a dev TSA."""

    def __init__(
        self, *, timestamper: _FailoverTimeStamper | _DevTimeStamper, development: bool
    ) -> None:
        self._timestamper = timestamper
        self.development_only = development
        self._expiry: tuple[datetime, float] | None = None

    @classmethod
    def from_urls(
        cls,
        urls: Sequence[str],
        *,
        timeout: float = 10,
        attempts: int = 3,
        backoff: float = 0.5,
    ) -> TimestampService:
        """RFC 3161 TSAs tried in order; ``attempts`` rounds over all of them, with backoff."""
        if not urls:
            raise ValueError("at least one TSA URL is required")
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        stamper = _FailoverTimeStamper(urls, timeout=timeout, attempts=attempts, backoff=backoff)
        return cls(timestamper=stamper, development=False)

    @classmethod
    def development(
        cls,
        *,
        tsa_cert_path: Path,
        tsa_key_path: Path,
        chain_paths: Sequence[Path],
        key_passphrase: bytes | None = None,
    ) -> TimestampService:
        """An in-process TSA (pyHanko's ``DummyTimeStamper``) for development; never production."""
        try:
            key = serialization.load_pem_private_key(
                tsa_key_path.read_bytes(), password=key_passphrase
            )
            cert = _read_cert(tsa_cert_path)
            chain = [_read_cert(p) for p in chain_paths]
        except (OSError, ValueError, TypeError) as exc:
            raise SigningError(
                "signing.key_unavailable",
                f"Cannot load the development TSA key or certificates: {exc}",
                "開発用タイムスタンプ局の鍵または証明書を読み込めません。",
            ) from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SigningError(
                "signing.key_unavailable",
                "The development TSA key must be RSA (pyHanko's dummy TSA is RSA-only).",
                "開発用タイムスタンプ局の鍵はRSAである必要があります。",
            )
        stamper = _DevTimeStamper(tsa_cert=cert, tsa_key=key, certs_to_embed=chain)
        return cls(timestamper=stamper, development=True)

    @property
    def timestamper(self) -> TimeStamper:
        """The pyHanko timestamper the engine signs with (one instance: it caches a sample token)."""
        return self._timestamper

    async def async_certificate_expiry(self, trust_roots: Sequence[x509.Certificate]) -> datetime:
        """The earliest ``notAfter`` on the chain of the certificate this TSA signs with now,
        read from a token over a fixed probe digest; cached for ``_EXPIRY_TTL`` seconds."""
        from ._engine import _async_chain_expiry, _signer_of

        cached = self._expiry
        if cached is not None and time.monotonic() - cached[1] < _EXPIRY_TTL:
            return cached[0]
        digest = hashlib.sha256(b"keiyaku-gateway certificate probe").digest()
        try:
            token = await self._timestamper.async_timestamp(digest, "sha256")
        except SigningError:
            raise
        except Exception as exc:  # whatever the TSA did, it gave no token
            raise SigningError(
                "signing.tsa_unreachable",
                f"No timestamp token to read the TSA certificate from: {exc}"[:300],
                "タイムスタンプ局から応答がないため、証明書の有効期限を確認できません。",
                disposition=Disposition.RETRIABLE,
            ) from exc
        cert, embedded = _signer_of(token["content"])
        if cert is None:
            raise SigningError(
                "signing.tsa_certificate_missing",
                "The TSA's token does not carry its signing certificate.",
                "タイムスタンプトークンにタイムスタンプ局の証明書が含まれていません。",
            )
        expiry = await _async_chain_expiry(cert, [*embedded, *trust_roots])
        self._expiry = (expiry, time.monotonic())
        return expiry

    @property
    def token_size_hint(self) -> int:
        """DER size to reserve for one timestamp token: the largest seen so far, or a default."""
        return self._timestamper.max_token_size or DEFAULT_TOKEN_SIZE

    async def aclose(self) -> None:
        """Release the pooled HTTP session."""
        if isinstance(self._timestamper, _FailoverTimeStamper):
            await self._timestamper.aclose()


async def _probe_one(url: str, timeout: float) -> str | None:
    async with aiohttp.ClientSession() as session:
        stamper = HTTPTimeStamper(url, timeout=int(max(1, timeout)), session=session)
        try:
            # a real RFC 3161 request: pyHanko checks the answer's status, nonce and digest
            await stamper.async_timestamp(
                hashlib.sha256(b"keiyaku-gateway probe").digest(), "sha256"
            )
        except Exception as exc:  # any failure is the verdict on this TSA
            cause = exc.__cause__ or exc
            return f"{type(cause).__name__}: {cause}"[:200]
    return None


def probe_tsa(urls: Sequence[str], *, timeout: float) -> dict[str, str | None]:
    """Ask each TSA for a real timestamp token: per URL, None when it answered with a valid
    token, else why not (a TCP connect alone says nothing about a TSA answering 503)."""

    async def run() -> list[str | None]:
        return list(await asyncio.gather(*(_probe_one(url, timeout) for url in urls)))

    return dict(zip(urls, asyncio.run(run()), strict=True))
