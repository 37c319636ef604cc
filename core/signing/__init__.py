"""The signing engine: prepared PDFs in, PAdES-signed PDFs out.

Public API (see ``notes/signing.md`` for the pyHanko facts behind it)::

    SigningEngine(key=..., timestamps=..., trust_roots=..., font_path=...)
        .inspect(data) -> PdfInfo                 refuse bad input (DocumentError)
        .prepare(data, certificate_id=, fields=)  ID stamp on page 1 + empty text fields
        .text_fits(text, width=, height=)         a value fits a field whole and legible
        .sign_approval(data, signature_field=, reason=, values=)
                                                  fill fields + invisible PAdES B-T signature
        .seal(data)                               DSS + document timestamp: PAdES B-LTA
        .renew_archival_timestamp(data)           DSS for the newest timestamp + a fresh one
        .timestamp_expiry(data)                   when the newest timestamp's chain expires
        .timestamp_facts(data)                    that, its digest algorithm and TSA certificate
        .new_timestamp_expiry()                   when a timestamp made now would expire
    verify_pdf(data, trust_roots=, moment=) -> VerificationReport
    BoundedVerifier(trust_roots=, budget=).verify(data, moment=)
                                                  the same in a child process, within a time and
                                                  memory budget ("could not finish" when over)

The engine is pure bytes-in/bytes-out: a failure leaves the caller's input untouched.
"""

from ._bounded import BoundedVerifier, VerifyBudget
from ._documents import MIN_FIELD_FONT_SIZE, FieldBox, InspectedDocument, PageArea, PdfInfo
from ._engine import (
    RevocationData,
    SigningEngine,
    TimestampFacts,
    approval_reason,
    newest_timestamp_expiry,
    newest_timestamp_facts,
)
from ._keys import SigningKey, load_pkcs11_signer, load_pkcs12_signer
from ._timestamps import TimestampService, probe_tsa
from ._verify import SignatureReport, VerificationReport, verify_pdf

__all__ = [
    "MIN_FIELD_FONT_SIZE",
    "BoundedVerifier",
    "FieldBox",
    "InspectedDocument",
    "PageArea",
    "PdfInfo",
    "RevocationData",
    "SignatureReport",
    "SigningEngine",
    "SigningKey",
    "TimestampFacts",
    "TimestampService",
    "VerificationReport",
    "VerifyBudget",
    "approval_reason",
    "load_pkcs11_signer",
    "load_pkcs12_signer",
    "newest_timestamp_expiry",
    "newest_timestamp_facts",
    "probe_tsa",
    "verify_pdf",
]
