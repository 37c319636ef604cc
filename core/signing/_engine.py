# mypy: disable-error-code="no-untyped-call"
# (pyHanko's PDF object constructors and writer methods are unannotated; every call would need
# its own ignore otherwise)
"""The signing engine: bytes in, bytes out; one revision per operation."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from io import SEEK_END, BytesIO
from pathlib import Path
from typing import Any, TypeVar

from asn1crypto import cms, crl, ocsp, pem, x509
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields as sig_fields
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.signers import PdfSignatureMetadata, PdfSigner, PdfTimeStamper
from pyhanko.sign.signers.pdf_signer import TimestampDSSContentSettings
from pyhanko.sign.validation import DocumentSecurityStore, collect_validation_info
from pyhanko.sign.validation.errors import ValidationInfoReadingError
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.errors import PathBuildingError, PathValidationError
from pyhanko_certvalidator.registry import CertificateRegistry, SimpleTrustManager

from core.errors import Disposition, SigningError
from core.timezone import JST

from ._cjkfont import CjkFont
from ._documents import (
    FieldBox,
    InspectedDocument,
    PdfInfo,
    field_fits,
    fill_text_fields,
    inspect_document,
    inspect_upload,
    prepare_document,
    release_reader,
)
from ._keys import SigningKey
from ._loop import BackgroundLoop, shared_loop
from ._timestamps import TimestampService
from ._verify import VerificationReport, verify_pdf

__all__ = [
    "RevocationData",
    "SigningEngine",
    "TimestampFacts",
    "approval_reason",
    "newest_timestamp_expiry",
    "newest_timestamp_facts",
]

log = logging.getLogger(__name__)

MD_ALGORITHM = "sha256"
T = TypeVar("T")

# DER bytes for everything in the CMS besides certificates, signature value and timestamp token
# (signed attributes incl. signing-certificate-v2 and algorithm protection, structure overhead)
_CMS_OVERHEAD = 2048
# An approval's revision besides its signature: the filled fields' appearances with their font
# subset, the signature dictionary, the xref (about 22 KB with one field; room to spare).
_REVISION_ROOM = 64 * 1024
# A seal's revisions besides the timestamp token: the DSS (certificates, CRLs, OCSP responses
# of every signature's chain and of the TSA's), the timestamp's field and the xrefs (a seal
# appended about 21 KB in all with the dev PKI). A bigger DSS (a large fetched CRL) only
# costs one reallocation of the caller's buffer.
_SEAL_ROOM = 128 * 1024


def approval_reason(*, name: str, email: str, at: datetime) -> str:
    """The /Reason of an approval: ``{name} 様 {email} が {JST time} +09:00 JSTに承認しました``."""
    if at.tzinfo is None:
        raise ValueError("approval time must be timezone-aware")
    local = at.astimezone(JST)
    return f"{name} 様 {email} が {local:%Y-%m-%d %H:%M:%S} +09:00 JSTに承認しました"


_BYTE_RANGE = re.compile(rb"/ByteRange\s*\[\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\]")


def _newest_token_by_offsets(data: bytes) -> cms.SignedData | None:
    """The newest document timestamp's token, found from the end of the file by the signatures'
    /ByteRange (the /Contents hole between the two ranges) without parsing the PDF: pyHanko's
    reader tokenises every signature's hex /Contents in Python, which cost more than the seal
    itself. None when the newest signature is not a well-formed RFC 3161 token."""
    for match in reversed(list(_BYTE_RANGE.finditer(data))):
        start1, length1, start2, length2 = (int(g) for g in match.groups())
        hole = data[start1 + length1 : start2]
        if start1 != 0 or start2 + length2 > len(data) or len(hole) < 3:
            continue
        if hole[:1] != b"<" or hole[-1:] != b">":
            continue
        try:
            # The hole is zero-padded after the DER; load() reads exactly the DER's own length
            # and ignores the padding. (Stripping zero bytes instead would cut a token whose
            # last byte happens to be 0x00, about one in 256.)
            info = cms.ContentInfo.load(bytes.fromhex(hole[1:-1].decode("ascii")))
            signed = info["content"]
            if signed["encap_content_info"]["content_type"].native != "tst_info":
                return None  # the newest signature is a signature, not a document timestamp
            return signed
        except (ValueError, TypeError, KeyError):
            return None
    return None


def _chain_expiry(cert: x509.Certificate, pool: Sequence[x509.Certificate]) -> datetime:
    """The earliest ``notAfter`` on the path from ``cert`` up through ``pool``."""
    loop = shared_loop()
    if loop.in_loop_thread():  # pragma: no cover - async callers await the coroutine
        raise RuntimeError("_chain_expiry() called on the signing loop; await it instead")
    return loop.run(_async_chain_expiry(cert, pool))


async def _async_chain_expiry(cert: x509.Certificate, pool: Sequence[x509.Certificate]) -> datetime:
    """The earliest ``notAfter`` on the path from ``cert`` up through ``pool``.

    certvalidator builds the paths, matching each issuer by name and authority key identifier
    (so a renewed CA under the same name is not taken for the old one), up to a self-issued
    certificate of ``pool``; of several paths (cross-signing) the longest-lived one counts,
    since a verifier needs any one of them. Without such a path, the chain is followed as far
    as it goes, issuer by issuer, with the same matching.
    """
    anchors = [c for c in pool if c.self_issued and c.sha256 != cert.sha256]
    others = [c for c in pool if c.sha256 != cert.sha256]
    own: datetime = cert.not_valid_after
    if cert.self_issued:
        return own
    if anchors:
        context = ValidationContext(trust_roots=anchors, other_certs=others)
        try:
            paths = await context.path_builder.async_build_paths(cert)
        except PathBuildingError:
            paths = []
        if paths:
            ends: list[datetime] = [
                min(c.not_valid_after for c in path.iter_certs(include_root=True)) for path in paths
            ]
            return max(ends)
    registry = CertificateRegistry.build(others)
    nobody = SimpleTrustManager.build(trust_roots=[])
    expiry = own
    seen = {cert.sha256}
    current = cert
    while not current.self_issued:
        issuer = next(
            (
                c
                for c in registry.find_potential_issuers(current, nobody)
                if isinstance(c, x509.Certificate) and c.sha256 not in seen
            ),
            None,
        )
        if issuer is None:
            break
        seen.add(issuer.sha256)
        expiry = min(expiry, issuer.not_valid_after)
        current = issuer
    return expiry


def _signer_of(signed: cms.SignedData) -> tuple[x509.Certificate | None, list[x509.Certificate]]:
    certs = [c.chosen for c in signed["certificates"] if c.name == "certificate"]
    sid = signed["signer_infos"][0]["sid"]
    if sid.name == "issuer_and_serial_number":
        wanted = (sid.chosen["issuer"], sid.chosen["serial_number"].native)
        signer = next((c for c in certs if (c.issuer, c.serial_number) == wanted), None)
    else:
        key_id = sid.chosen.native
        signer = next((c for c in certs if c.key_identifier == key_id), None)
    return signer, certs


@dataclass(frozen=True)
class TimestampFacts:
    """What decides whether the newest document timestamp needs an archive timestamp: when its
    TSA chain expires, the digest algorithm it was made with, and its TSA certificate's
    SHA-256 fingerprint (hex, lower case)."""

    expires_at: datetime
    digest_algorithm: str
    tsa_certificate_sha256: str


def _token_digest_algorithm(signed: cms.SignedData) -> str:
    try:
        return str(
            signed["encap_content_info"]["content"]
            .parsed["message_imprint"]["hash_algorithm"]["algorithm"]
            .native
        )
    except (ValueError, TypeError, KeyError):
        return "unknown"


def newest_timestamp_expiry(
    data: bytes, *, trust_roots: Sequence[x509.Certificate] = ()
) -> datetime | None:
    """The earliest ``notAfter`` on the chain of the newest document timestamp's TSA certificate
    (certificates from the token, the DSS and ``trust_roots``); None when there is no timestamp."""
    facts = newest_timestamp_facts(data, trust_roots=trust_roots)
    return facts.expires_at if facts is not None else None


def newest_timestamp_facts(
    data: bytes, *, trust_roots: Sequence[x509.Certificate] = ()
) -> TimestampFacts | None:
    """:class:`TimestampFacts` of the newest document timestamp; None when there is none."""
    try:
        reader = PdfFileReader(BytesIO(data), strict=False)
        token = _newest_token_by_offsets(data)
        if token is not None:
            cert, embedded = _signer_of(token)
            algorithm = _token_digest_algorithm(token)
        else:
            stamps = reader.embedded_timestamp_signatures
            if not stamps:
                return None
            cert, embedded = stamps[-1].signer_cert, list(stamps[-1].other_embedded_certs)
            algorithm = _token_digest_algorithm(stamps[-1].signed_data)
    except (PdfError, ValueError, KeyError) as exc:
        raise SigningError(
            "signing.document_unreadable",
            "The sealed document cannot be read.",
            "締結済み文書を読み込めません。",
        ) from exc
    if cert is None:
        return None
    pool = [*embedded, *trust_roots]
    try:
        pool.extend(DocumentSecurityStore.read_dss(reader).load_certs())
    except ValidationInfoReadingError:
        log.debug("no readable DSS; using the token's own certificates")
    return TimestampFacts(
        expires_at=_chain_expiry(cert, pool),
        digest_algorithm=algorithm,
        tsa_certificate_sha256=cert.sha256.hex(),
    )


def _load_pem_or_der(path: Path) -> bytes:
    data = path.read_bytes()
    if pem.detect(data):
        _type, _headers, data = pem.unarmor(data)
    return data


@dataclass(frozen=True)
class RevocationData:
    """Revocation data the engine embeds besides what it fetches (the dev PKI's offline CRL)."""

    crls: Sequence[crl.CertificateList] = ()
    ocsps: Sequence[ocsp.OCSPResponse] = ()
    certs: Sequence[x509.Certificate] = ()
    allow_fetching: bool = True

    @classmethod
    def from_files(
        cls,
        *,
        crl_paths: Sequence[Path] = (),
        cert_paths: Sequence[Path] = (),
        allow_fetching: bool,
    ) -> RevocationData:
        """Load CRLs and certificates from PEM or DER files."""
        return cls(
            crls=tuple(crl.CertificateList.load(_load_pem_or_der(p)) for p in crl_paths),
            certs=tuple(x509.Certificate.load(_load_pem_or_der(p)) for p in cert_paths),
            allow_fetching=allow_fetching,
        )


class SigningEngine:
    """Prepares PDFs, adds approval signatures and seals finished documents (PAdES B-LTA)."""

    def __init__(
        self,
        *,
        key: SigningKey,
        timestamps: TimestampService,
        trust_roots: Sequence[x509.Certificate],
        font_path: Path | None,
        location: str = "日本",
        revinfo: RevocationData | None = None,
        loop: BackgroundLoop | None = None,
    ) -> None:
        self._key = key
        self._timestamps = timestamps
        self._trust_roots = list(trust_roots)
        self._font = CjkFont(font_path) if font_path is not None else None
        self._location = location
        self._revinfo = revinfo or RevocationData()
        self._loop = loop or shared_loop()
        # how often a reservation was too small (the TSA grew its token): visible in tests/logs
        self.reservation_overflows = 0
        # called with (operation, seconds) after each approval, seal and renewal (metrics)
        self.timing_observer: Callable[[str, float], None] | None = None

    async def _timed(self, operation: str, coro: Coroutine[Any, Any, T]) -> T:
        started = time.perf_counter()
        try:
            return await self._loop.run_async(coro)
        finally:
            if self.timing_observer is not None:
                self.timing_observer(operation, time.perf_counter() - started)

    # -- documents -------------------------------------------------------------------------

    def inspect(self, data: bytes) -> PdfInfo:
        """Accept an input PDF or refuse it with a :class:`DocumentError` (not a PDF, damaged,
        encrypted, already signed, no pages)."""
        return inspect_document(data)

    def text_fits(self, text: str, *, width: float, height: float) -> bool:
        """Whether ``text`` fits a text field of ``width`` by ``height`` points whole and
        legible once filled (True without a CJK font: filling then fails anyway)."""
        if self._font is None:
            return True
        return field_fits(self._font.shape(text).advance, width=width, height=height)

    def inspect_upload(self, data: bytes) -> InspectedDocument:
        """:meth:`inspect`, keeping the parsed upload (``.info``: its :class:`PdfInfo`) for one
        :meth:`prepare` of the same bytes."""
        return inspect_upload(data)

    def prepare(
        self,
        data: bytes,
        *,
        certificate_id: str,
        fields: Sequence[FieldBox],
        inspected: InspectedDocument | None = None,
    ) -> bytes:
        """Before any signature: stamp the certificate ID on page 1 and add empty text fields
        (``inspected``: :meth:`inspect_upload` of ``data``, so it is not parsed again)."""
        return prepare_document(
            data, certificate_id=certificate_id, fields=fields, inspected=inspected
        )

    # -- approvals -------------------------------------------------------------------------

    def bytes_reserved(self) -> int:
        """Hex characters reserved for one approval's CMS container (even, with margin)."""
        token = self._timestamps.token_size_hint
        der = (
            self._key.cms_certificates_size()
            + self._key.signature_size
            + _CMS_OVERHEAD
            + token
            + token // 4
            + 512
        )
        size = 2 * der
        return size + (-size % 512)

    def increment_size_hint(self) -> int:
        """Bytes an approval's revision usually takes (the reserved signature and the rest), for
        a caller that sizes the buffer the revision is appended to."""
        return self.bytes_reserved() + _REVISION_ROOM

    def sign_approval(
        self, data: bytes, *, signature_field: str, reason: str, values: Mapping[str, str]
    ) -> bytes:
        """Fill ``values`` (read-only afterwards) and add an invisible PAdES B-T signature, as one
        incremental revision."""
        return self._run(
            self.async_sign_approval(
                data, signature_field=signature_field, reason=reason, values=values
            )
        )

    async def async_sign_approval(
        self, data: bytes, *, signature_field: str, reason: str, values: Mapping[str, str]
    ) -> bytes:
        """Async :meth:`sign_approval`, for callers inside an event loop."""
        return await self._timed(
            "approval",
            self._sign_approval(
                data, signature_field=signature_field, reason=reason, values=values
            ),
        )

    def sign_approval_increment(
        self, document: BytesIO, *, signature_field: str, reason: str, values: Mapping[str, str]
    ) -> bytes:
        """:meth:`sign_approval` on the bytes in ``document``, signed in place: the new revision
        is appended to ``document`` and returned alone. No copy of the document is made (at
        10 MB the copies cost more than the signature); on failure ``document`` is cut back to
        its input, so the caller's bytes are untouched either way."""
        return self._run(
            self._timed(
                "approval",
                self._sign_increment(
                    document, signature_field=signature_field, reason=reason, values=values
                ),
            )
        )

    async def _sign_increment(
        self, document: BytesIO, *, signature_field: str, reason: str, values: Mapping[str, str]
    ) -> bytes:
        base = document.seek(0, SEEK_END)
        document.seek(0)
        try:
            writer = IncrementalPdfFileWriter(document, strict=True)
        except (PdfError, ValueError, KeyError) as exc:
            raise SigningError(
                "signing.document_unreadable",
                "The prepared document cannot be read.",
                "署名対象の文書を読み込めません。",
            ) from exc
        self._check_new_field(writer, signature_field)
        fill_text_fields(writer, values, font=self._font)
        meta = self._approval_meta(signature_field, reason)
        signer = self._approval_signer(meta, signature_field)
        reserved = self.bytes_reserved()
        try:
            # In place: pyHanko appends the revision to the input stream and fills the
            # signature there, never touching a byte before ``base``.
            await signer.async_sign_pdf(writer, bytes_reserved=reserved, in_place=True)
        except BaseException as exc:
            document.truncate(base)
            if isinstance(exc, SigningError):
                raise
            if isinstance(exc, PyHankoSigningError) and "larger than expected" in str(exc):
                self.reservation_overflows += 1
                log.warning("signature container overflowed %d reserved bytes; retrying", reserved)
                data = document.getvalue()
                full = await self._sign_unreserved(data, signature_field, meta, values)
                if not full.startswith(data):
                    raise self._failed(ValueError("the revision is not an append")) from exc
                document.seek(0, SEEK_END)
                document.write(full[base:])
                return full[base:]
            if isinstance(exc, (PyHankoSigningError, PdfError, ValueError, OSError)):
                raise self._failed(exc) from exc
            raise
        end = document.seek(0, SEEK_END)
        with document.getbuffer() as view:
            return bytes(view[base:end])

    def _check_new_field(self, writer: IncrementalPdfFileWriter, signature_field: str) -> None:
        if any(
            True for _ in sig_fields.enumerate_sig_fields(writer.prev, with_name=signature_field)
        ):
            raise SigningError(
                "signing.field_exists",
                f"A signature field named {signature_field!r} already exists.",
                f"署名フィールド {signature_field!r} はすでに存在します。",
            )

    def _approval_meta(self, signature_field: str, reason: str) -> PdfSignatureMetadata:
        return PdfSignatureMetadata(
            field_name=signature_field,
            md_algorithm=MD_ALGORITHM,
            reason=reason,
            location=self._location,
            subfilter=sig_fields.SigSeedSubFilter.PADES,
        )

    def _approval_signer(self, meta: PdfSignatureMetadata, signature_field: str) -> PdfSigner:
        return PdfSigner(
            meta,
            signer=self._key.signer,
            timestamper=self._timestamps.timestamper,
            new_field_spec=sig_fields.SigFieldSpec(sig_field_name=signature_field),
        )

    async def _sign_approval(
        self, data: bytes, *, signature_field: str, reason: str, values: Mapping[str, str]
    ) -> bytes:
        try:
            writer = IncrementalPdfFileWriter(BytesIO(data), strict=True)
        except (PdfError, ValueError, KeyError) as exc:
            raise SigningError(
                "signing.document_unreadable",
                "The prepared document cannot be read.",
                "署名対象の文書を読み込めません。",
            ) from exc
        if any(
            True for _ in sig_fields.enumerate_sig_fields(writer.prev, with_name=signature_field)
        ):
            raise SigningError(
                "signing.field_exists",
                f"A signature field named {signature_field!r} already exists.",
                f"署名フィールド {signature_field!r} はすでに存在します。",
            )
        fill_text_fields(writer, values, font=self._font)
        meta = PdfSignatureMetadata(
            field_name=signature_field,
            md_algorithm=MD_ALGORITHM,
            reason=reason,
            location=self._location,
            subfilter=sig_fields.SigSeedSubFilter.PADES,
        )
        signer = PdfSigner(
            meta,
            signer=self._key.signer,
            timestamper=self._timestamps.timestamper,
            new_field_spec=sig_fields.SigFieldSpec(sig_field_name=signature_field),
        )
        reserved = self.bytes_reserved()
        out = BytesIO()
        try:
            await signer.async_sign_pdf(writer, bytes_reserved=reserved, output=out)
        except SigningError:
            raise
        except PyHankoSigningError as exc:
            if "larger than expected" not in str(exc):
                raise self._failed(exc) from exc
            # the TSA sent a token bigger than ever before; the writer is spent, so redo the
            # revision from the input bytes and let pyHanko measure the container, once
            self.reservation_overflows += 1
            log.warning("signature container overflowed %d reserved bytes; retrying", reserved)
            return await self._sign_unreserved(data, signature_field, meta, values)
        except (PdfError, ValueError, OSError) as exc:
            raise self._failed(exc) from exc
        finally:
            # the reader is a reference cycle holding ``data``: not left to the collector
            release_reader(writer.prev)
        return _detached(out)

    async def _sign_unreserved(
        self,
        data: bytes,
        signature_field: str,
        meta: PdfSignatureMetadata,
        values: Mapping[str, str],
    ) -> bytes:
        writer = IncrementalPdfFileWriter(BytesIO(data), strict=True)
        fill_text_fields(writer, values, font=self._font)
        signer = PdfSigner(
            meta,
            signer=self._key.signer,
            timestamper=self._timestamps.timestamper,
            new_field_spec=sig_fields.SigFieldSpec(sig_field_name=signature_field),
        )
        out = BytesIO()
        try:
            await signer.async_sign_pdf(writer, output=out)
        except SigningError:
            raise
        except (PyHankoSigningError, PdfError, ValueError, OSError) as exc:
            raise self._failed(exc) from exc
        finally:
            release_reader(writer.prev)
        return _detached(out)

    # -- completion --------------------------------------------------------------------------

    def seal(self, data: bytes) -> bytes:
        """Embed validation data (DSS) for every signature and add a document timestamp: the
        result is PAdES B-LTA. A TSA outage raises the retriable ``signing.tsa_unreachable``."""
        return self._run(self.async_seal(data))

    async def async_seal(self, data: bytes) -> bytes:
        """Async :meth:`seal`."""
        return await self._timed("seal", self._seal(data))

    def seal_size_hint(self) -> int:
        """Bytes a seal's revisions usually take (the reserved timestamp, the DSS and the rest),
        for a caller that sizes the buffer they are appended to."""
        return self._timestamp_reserved() + _SEAL_ROOM

    def seal_increment(self, document: BytesIO) -> bytes:
        """:meth:`seal` on the bytes in ``document``, sealed in place: the new revisions are
        appended to ``document`` and returned alone, as :meth:`sign_approval_increment` does
        (no copy of the document; on failure ``document`` is cut back to its input)."""
        return self._run(self._timed("seal", self._seal_in_place(document)))

    def _timestamp_reserved(self) -> int:
        return 2 * (self._timestamps.token_size_hint * 2 + 1024)

    def _validation_context(self) -> ValidationContext:
        # one per operation: a ValidationContext caches fetched data and is not shareable
        return ValidationContext(
            trust_roots=self._trust_roots,
            other_certs=[*self._key.chain, *self._revinfo.certs],
            crls=list(self._revinfo.crls),
            ocsps=list(self._revinfo.ocsps),
            allow_fetching=self._revinfo.allow_fetching,
            revocation_mode="hard-fail",
        )

    async def _seal(self, data: bytes) -> bytes:
        document = BytesIO(data)
        await self._seal_in_place(document)
        return _detached(document)

    async def _seal_in_place(self, document: BytesIO) -> bytes:
        base = document.seek(0, SEEK_END)
        document.seek(0)
        try:
            await self._stamp(document)
        except BaseException:
            document.truncate(base)  # a TSA outage leaves the caller's bytes as they were
            raise
        end = document.seek(0, SEEK_END)
        with document.getbuffer() as view:
            return bytes(view[base:end])

    async def _stamp(self, document: BytesIO) -> None:
        """The DSS for every signature and a document timestamp as one revision, then (when it
        adds any) the TSA's own validation data as another, both appended to ``document``."""
        try:
            reader = PdfFileReader(document, strict=True)
            signatures = list(reader.embedded_signatures)
        except (PdfError, ValueError, KeyError) as exc:
            raise SigningError(
                "signing.document_unreadable",
                "The signed document cannot be read.",
                "署名済み文書を読み込めません。",
            ) from exc
        vc = self._validation_context()
        try:
            paths = []
            for embedded in signatures:
                paths.extend(await collect_validation_info(embedded, vc))
            writer = IncrementalPdfFileWriter.from_reader(reader)
            DocumentSecurityStore.supply_dss_in_writer(
                writer, sig_contents=None, paths=paths, validation_context=vc
            )
            doc_ts_count = len(reader.embedded_timestamp_signatures)
            stamper = PdfTimeStamper(
                self._timestamps.timestamper, field_name=f"kg_doc_timestamp_{doc_ts_count + 1}"
            )
            # In place: pyHanko appends both revisions to the reader's stream, ``document``,
            # never touching a byte of the input.
            await stamper.async_timestamp_pdf(
                writer,
                MD_ALGORITHM,
                validation_context=vc,
                bytes_reserved=self._timestamp_reserved(),
                in_place=True,
                dss_settings=TimestampDSSContentSettings(include_vri=False),
            )
        except SigningError:
            raise
        except (PathBuildingError, PathValidationError) as exc:
            raise SigningError(
                "signing.validation_data_unavailable",
                "Validation data (certificate chain, CRL/OCSP) for a signature could not be "
                "collected; the document was not sealed.",
                "署名の検証情報（証明書チェーン・失効情報）を取得できなかったため、"
                "タイムスタンプを付与できませんでした。",
                disposition=Disposition.RETRIABLE,
                details={"reason": str(exc)[:300]},
            ) from exc
        except (PyHankoSigningError, PdfError, ValueError, OSError) as exc:
            raise self._failed(exc) from exc
        finally:
            await vc.aclose()
            # The reader (a reference cycle) keeps what it parsed until the collector's rare
            # full pass; its stream is the caller's ``document``, left open for them.
            reader.resolved_objects.clear()

    # -- long-term validity ---------------------------------------------------------------

    def renew_archival_timestamp(self, data: bytes) -> bytes:
        """Embed validation data for the newest document timestamp and add a fresh one (PAdES
        archive timestamp), so the chain outlives the previous TSA certificate."""
        return self._run(self.async_renew_archival_timestamp(data))

    async def async_renew_archival_timestamp(self, data: bytes) -> bytes:
        """Async :meth:`renew_archival_timestamp`."""
        return await self._timed("archive_timestamp", self._renew(data))

    async def _renew(self, data: bytes) -> bytes:
        try:
            reader = PdfFileReader(BytesIO(data), strict=True)
            count = len(reader.embedded_timestamp_signatures)
        except (PdfError, ValueError, KeyError) as exc:
            raise SigningError(
                "signing.document_unreadable",
                "The sealed document cannot be read.",
                "締結済み文書を読み込めません。",
            ) from exc
        if count == 0:
            raise SigningError(
                "signing.not_sealed",
                "The document has no document timestamp to renew; seal it first.",
                "文書にタイムスタンプがないため、更新できません。",
            )
        vc = self._validation_context()
        stamper = PdfTimeStamper(
            self._timestamps.timestamper, field_name=f"kg_doc_timestamp_{count + 1}"
        )
        out = BytesIO()
        try:
            await stamper.async_update_archival_timestamp_chain(
                reader, vc, in_place=False, output=out
            )
        except SigningError:
            raise
        except (PathBuildingError, PathValidationError) as exc:
            raise SigningError(
                "signing.validation_data_unavailable",
                "Validation data for the newest document timestamp could not be collected "
                "(has its TSA certificate already expired?); the document was not renewed.",
                "最新のタイムスタンプの検証情報を取得できなかったため、"
                "タイムスタンプを更新できませんでした。",
                disposition=Disposition.RETRIABLE,
                details={"reason": str(exc)[:300]},
            ) from exc
        except (PyHankoSigningError, PdfError, ValueError, OSError) as exc:
            raise self._failed(exc) from exc
        finally:
            await vc.aclose()
        return out.getvalue()

    def timestamp_facts(self, data: bytes) -> TimestampFacts | None:
        """:class:`TimestampFacts` of the newest document timestamp of ``data``."""
        return newest_timestamp_facts(data, trust_roots=self._trust_roots)

    def new_timestamp_expiry(self) -> datetime:
        """When the chain of a timestamp made now by the configured TSA would expire: a token
        over a fixed probe digest is asked for (one request to a real TSA, cached by the
        timestamp service for an hour) and its TSA chain read, so a renewal that cannot extend
        anything is known before it is paid for. A TSA outage raises
        ``signing.tsa_unreachable``."""
        return self._run(self._timestamps.async_certificate_expiry(self._trust_roots))

    def timestamp_expiry(self, data: bytes) -> datetime | None:
        """When the certificate chain of the newest document timestamp expires (the earliest
        ``notAfter`` on the path from the TSA certificate to its root); None without one."""
        return newest_timestamp_expiry(data, trust_roots=self._trust_roots)

    # -- completion certificate -----------------------------------------------------------

    def sign_certificate(self, data: bytes, *, reason: str) -> bytes:
        """Sign a completion certificate the gateway rendered, as it signs a concluded
        document: an invisible PAdES signature with the gateway key and a signature timestamp,
        then validation data and a document timestamp (B-LTA), so ``pdfsig`` and
        ``keiyaku verify`` accept the certificate on its own."""
        return self._run(self._timed("certificate", self._certify(data, reason)))

    async def _certify(self, data: bytes, reason: str) -> bytes:
        signed = await self._sign_approval(
            data, signature_field="kg_certificate", reason=reason, values={}
        )
        return await self._seal(signed)

    def verify(self, data: bytes) -> VerificationReport:
        """Validate ``data``'s signatures and timestamps from its embedded data only, against
        this engine's trust roots (what ``keiyaku verify`` checks)."""
        return verify_pdf(data, trust_roots=self._trust_roots)

    # -- plumbing ----------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    @staticmethod
    def _failed(exc: BaseException) -> SigningError:
        return SigningError(
            "signing.failed",
            f"Signing failed: {type(exc).__name__}: {exc}"[:500],
            "電子署名の処理に失敗しました。",
        )

    def close(self) -> None:
        """Release the TSA session and the PKCS#11 session."""
        self._loop.run(self._timestamps.aclose())
        self._key.close()


def _detached(buffer: BytesIO) -> bytes:
    """``buffer``'s bytes, with ``buffer`` closed: pyHanko's objects may keep the buffer (in
    reference cycles, until the collector's rare full pass) and, through it, those bytes."""
    data = buffer.getvalue()
    buffer.close()
    return data
