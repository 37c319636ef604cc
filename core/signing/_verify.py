# mypy: disable-error-code="no-untyped-call"
# (pyHanko's PDF object constructors and writer methods are unannotated; every call would need
# its own ignore otherwise)
"""Validation of a signed PDF from its own embedded data (what ``keiyaku verify`` reports).

Two passes per signature:

* integrity and trust (pyHanko's PDF signature validation, revocation *soft-fail*, no network):
  is the byte range intact, the CMS signature valid, the chain anchored in ``trust_roots``, the
  signature timestamp valid, and every later revision an allowed modification (DocMDP);
* long-term validation: the AdES LTA procedure with revocation data *required* for every
  certificate and fetched from nowhere (``LOCAL_ONLY``), so it passes only when the document's
  DSS carries what an archive needs years later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from io import BytesIO
from typing import Any, Literal

from asn1crypto import x509
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.ades.report import AdESPassed
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.validation import (
    EmbeddedPdfSignature,
    async_validate_pdf_signature,
    async_validate_pdf_timestamp,
)
from pyhanko.sign.validation.ades import ades_lta_validation
from pyhanko.sign.validation.dss import DocumentSecurityStore
from pyhanko.sign.validation.errors import ValidationInfoReadingError
from pyhanko.sign.validation.policy_decl import (
    PdfSignatureValidationSpec,
    RevinfoOnlineFetchingRule,
    RevocationInfoGatheringSpec,
    SignatureValidationSpec,
)
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.context import CertValidationPolicySpec
from pyhanko_certvalidator.ltv.types import ValidationTimingInfo
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy
from pyhanko_certvalidator.registry import SimpleTrustManager

from core.timezone import JST

from ._loop import shared_loop

__all__ = ["SignatureReport", "VerificationReport", "verify_pdf"]

log = logging.getLogger(__name__)
_ALLOWED_LEVELS = {
    ModificationLevel.NONE,
    ModificationLevel.LTA_UPDATES,
    ModificationLevel.FORM_FILLING,
}


@dataclass(frozen=True)
class SignatureReport:
    """The verdict on one signature or document timestamp."""

    kind: Literal["approval", "document_timestamp"]
    field_name: str
    signer: str | None = None
    reason: str | None = None
    signing_time: datetime | None = None
    intact: bool = False
    trusted: bool = False
    timestamp_present: bool = False
    timestamp_valid: bool = False
    ltv: bool = False
    modification_level: str | None = None
    docmdp_ok: bool = False
    problems: tuple[str, ...] = ()
    #: False when validating as of a moment that precedes the signature's own time
    exists_at_moment: bool = True

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return (
            self.exists_at_moment
            and self.intact
            and self.trusted
            and self.timestamp_present
            and self.timestamp_valid
            and self.ltv
            and self.docmdp_ok
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in ISO 8601, JST)."""
        data = asdict(self)
        data["signing_time"] = self.signing_time.isoformat() if self.signing_time else None
        data["problems"] = list(self.problems)
        data["ok"] = self.ok
        return data


@dataclass(frozen=True)
class VerificationReport:
    """The verdict on a whole document: ok when every signature is, and there is one."""

    signatures: tuple[SignatureReport, ...] = ()
    error: str | None = None
    problems: tuple[str, ...] = field(default=())
    #: bytes after the end of the last signed revision (pdfsig's "Not total document signed")
    unsigned_bytes: int = 0
    #: True when the check stopped at its time or memory budget (see ``BoundedVerifier``)
    unfinished: bool = False

    @property
    def ok(self) -> bool:
        """At least one signature, every one fully valid, the file readable, and nothing after
        the last signed revision."""
        return (
            self.error is None
            and self.unsigned_bytes == 0
            and bool(self.signatures)
            and all(s.ok for s in self.signatures)
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "unfinished": self.unfinished,
            "error": self.error,
            "unsigned_bytes": self.unsigned_bytes,
            "problems": list(self.problems),
            "signatures": [s.as_dict() for s in self.signatures],
        }


def _cn(cert: x509.Certificate | None) -> str | None:
    if cert is None:
        return None
    cn = cert.subject.native.get("common_name")
    return str(cn) if cn else cert.subject.human_friendly


def _jst(moment: datetime | None) -> datetime | None:
    return moment.astimezone(JST) if moment is not None else None


def _local_context(
    reader: PdfFileReader,
    embedded: EmbeddedPdfSignature,
    trust_roots: Sequence[x509.Certificate],
    *,
    offline: bool,
    moment: datetime | None = None,
) -> ValidationContext:
    """Trust roots plus everything the file carries: DSS certs/CRLs/OCSPs and CMS certificates;
    validated at ``moment`` (now when None)."""
    kwargs: dict[str, Any] = {
        "trust_roots": list(trust_roots),
        "other_certs": list(embedded.other_embedded_certs),
        "allow_fetching": not offline and moment is None,
        "revocation_mode": "soft-fail",
    }
    if moment is not None:
        kwargs["moment"] = moment
    try:
        dss = DocumentSecurityStore.read_dss(reader)
    except ValidationInfoReadingError:
        return ValidationContext(**kwargs)
    return dss.as_validation_context(kwargs)


def _lta_spec(
    trust_roots: Sequence[x509.Certificate], *, offline: bool
) -> PdfSignatureValidationSpec:
    rule = (
        RevinfoOnlineFetchingRule.LOCAL_ONLY
        if offline
        else RevinfoOnlineFetchingRule.NO_HISTORICAL_FETCH
    )
    return PdfSignatureValidationSpec(
        SignatureValidationSpec(
            cert_validation_policy=CertValidationPolicySpec(
                trust_manager=SimpleTrustManager.build(trust_roots=list(trust_roots)),
                revinfo_policy=CertRevTrustPolicy(REQUIRE_REVINFO),
            ),
            revinfo_gathering_policy=RevocationInfoGatheringSpec(online_fetching_rule=rule),
        )
    )


async def _check_approval(
    reader: PdfFileReader,
    embedded: EmbeddedPdfSignature,
    trust_roots: Sequence[x509.Certificate],
    *,
    offline: bool,
    moment: datetime | None = None,
    proven_at: datetime | None = None,
) -> SignatureReport:
    problems: list[str] = []
    # the basic checks run when a later document timestamp proves the signature existed (its
    # certificates may have lapsed since); the AdES LTA procedure checks that proof at ``moment``
    vc = _local_context(reader, embedded, trust_roots, offline=offline, moment=proven_at)
    ts_vc = _local_context(reader, embedded, trust_roots, offline=offline, moment=proven_at)
    try:
        status = await async_validate_pdf_signature(
            embedded, signer_validation_context=vc, ts_validation_context=ts_vc
        )
    finally:
        await vc.aclose()
        await ts_vc.aclose()
    ts = status.timestamp_validity
    level = status.modification_level
    ltv = False
    try:
        timing = (
            ValidationTimingInfo(
                validation_time=moment, best_signature_time=moment, point_in_time_validation=False
            )
            if moment is not None
            else None
        )
        lta = await ades_lta_validation(
            embedded, _lta_spec(trust_roots, offline=offline), timing_info=timing
        )
        ltv = lta.ades_subindic == AdESPassed.OK
        if not ltv:
            problems.append(f"LTV: {lta.ades_subindic}: {lta.failure_msg}")
    except Exception as exc:  # the AdES API is incubating upstream; report, do not crash
        problems.append(f"LTV: {type(exc).__name__}: {exc}")
    if not status.intact:
        problems.append("the signed byte range does not match its digest")
    if not status.valid:
        problems.append("the CMS signature value is invalid")
    if not status.trusted:
        problems.append("the signer's certificate does not chain to a trusted root")
    if ts is None:
        problems.append("no signature timestamp")
    elif not (ts.intact and ts.valid and ts.trusted):
        problems.append("the signature timestamp is invalid or untrusted")
    docmdp_ok = status.docmdp_ok is not False and (level is None or level in _ALLOWED_LEVELS)
    if not docmdp_ok:
        problems.append(f"later revisions are not allowed modifications ({level})")
    reason = embedded.sig_object.get("/Reason")
    signing_time = ts.timestamp if ts is not None else status.signer_reported_dt
    return SignatureReport(
        kind="approval",
        field_name=embedded.field_name,
        signer=_cn(embedded.signer_cert),
        reason=str(reason) if reason is not None else None,
        signing_time=_jst(signing_time),
        intact=bool(status.intact and status.valid),
        trusted=bool(status.trusted),
        timestamp_present=ts is not None,
        timestamp_valid=bool(ts is not None and ts.intact and ts.valid and ts.trusted),
        ltv=ltv,
        modification_level=level.name if level is not None else None,
        docmdp_ok=docmdp_ok,
        problems=tuple(problems),
    )


async def _check_document_timestamp(
    reader: PdfFileReader,
    embedded: EmbeddedPdfSignature,
    trust_roots: Sequence[x509.Certificate],
    *,
    offline: bool,
    proven_at: datetime | None = None,
) -> SignatureReport:
    problems: list[str] = []
    # a document timestamp is checked when the next one proves it existed, the newest at the
    # validation moment: an expired TSA certificate is fine only under a later timestamp
    vc = _local_context(reader, embedded, trust_roots, offline=offline, moment=proven_at)
    try:
        status = await async_validate_pdf_timestamp(embedded, validation_context=vc)
    finally:
        await vc.aclose()
    # LTV of a document timestamp: its TSA chain validates with revocation data *required*, from
    # the file alone, at the time it was issued
    strict = ValidationContext(
        trust_roots=list(trust_roots),
        other_certs=list(vc.certificate_registry),
        crls=list(vc.crls),
        ocsps=list(vc.ocsps),
        allow_fetching=not offline,
        revinfo_policy=CertRevTrustPolicy(REQUIRE_REVINFO),
        moment=status.timestamp,
    )
    try:
        strict_status = await async_validate_pdf_timestamp(
            embedded, validation_context=strict, skip_diff=True
        )
        ltv = bool(strict_status.trusted)
        if not ltv:
            problems.append("LTV: revocation data for the TSA chain is not embedded")
    finally:
        await strict.aclose()
    level = status.modification_level
    docmdp_ok = status.docmdp_ok is not False and (level is None or level in _ALLOWED_LEVELS)
    if not (status.intact and status.valid):
        problems.append("the document timestamp does not match the document")
    if not status.trusted:
        problems.append("the TSA certificate does not chain to a trusted root")
    if not docmdp_ok:
        problems.append(f"later revisions are not allowed modifications ({level})")
    return SignatureReport(
        kind="document_timestamp",
        field_name=embedded.field_name,
        signer=_cn(embedded.signer_cert),
        reason=None,
        signing_time=_jst(status.timestamp),
        intact=bool(status.intact and status.valid),
        trusted=bool(status.trusted),
        timestamp_present=True,
        timestamp_valid=bool(status.intact and status.valid and status.trusted),
        ltv=ltv,
        modification_level=level.name if level is not None else None,
        docmdp_ok=docmdp_ok,
        problems=tuple(problems),
    )


def _token_time(embedded: EmbeddedPdfSignature) -> datetime | None:
    """The genTime of a document timestamp's token (unvalidated; validation checks it)."""
    try:
        tst_info = embedded.signed_data["encap_content_info"]["content"].parsed
        gen_time: datetime = tst_info["gen_time"].native
    except Exception:  # a damaged token is reported by validation, not here
        return None
    return gen_time


def _proof_times(
    signatures: Sequence[EmbeddedPdfSignature], moment: datetime | None
) -> list[datetime | None]:
    """For each signature: the time of the next document timestamp after it, else ``moment``
    (all None when validating now, the default)."""
    if moment is None:
        return [None] * len(signatures)
    times: list[datetime | None] = []
    for index in range(len(signatures)):
        later = (
            _token_time(s) for s in signatures[index + 1 :] if s.sig_object_type == "/DocTimeStamp"
        )
        times.append(next((t for t in later if t is not None), moment))
    return times


async def _verify(
    data: bytes,
    trust_roots: Sequence[x509.Certificate],
    offline: bool,
    moment: datetime | None = None,
) -> VerificationReport:
    try:
        reader = PdfFileReader(BytesIO(data), strict=False)
        signatures = list(reader.embedded_signatures)
    except Exception as exc:  # any parse failure is a verdict, not a crash
        return VerificationReport(error=f"unreadable PDF: {type(exc).__name__}: {exc}"[:500])
    reports: list[SignatureReport] = []
    for embedded, proven_at in zip(signatures, _proof_times(signatures, moment), strict=True):
        kind: Literal["approval", "document_timestamp"] = (
            "document_timestamp" if embedded.sig_object_type == "/DocTimeStamp" else "approval"
        )
        try:
            if kind == "approval":
                report = await _check_approval(
                    reader,
                    embedded,
                    trust_roots,
                    offline=offline,
                    moment=moment,
                    proven_at=proven_at,
                )
            else:
                report = await _check_document_timestamp(
                    reader, embedded, trust_roots, offline=offline, proven_at=proven_at
                )
        except Exception as exc:  # a damaged signature is reported as such
            log.info("signature %s failed to validate", embedded.field_name, exc_info=True)
            report = SignatureReport(
                kind=kind,
                field_name=str(embedded.field_name),
                problems=(f"{type(exc).__name__}: {exc}"[:500],),
            )
        reports.append(_at_moment(report, moment))
    unsigned = _unsigned_bytes(data, signatures, reports)
    problems = (
        (f"{unsigned} bytes after the last signed revision are covered by no signature",)
        if unsigned
        else ()
    )
    return VerificationReport(signatures=tuple(reports), unsigned_bytes=unsigned, problems=problems)


def _unsigned_bytes(
    data: bytes, signatures: Sequence[EmbeddedPdfSignature], reports: Sequence[SignatureReport]
) -> int:
    """Bytes after the newest signed revision that nothing vouches for (0: none).

    Later revisions that only add validation data (a DSS update, as the archive timestamp
    renewal writes after its timestamp) are what PAdES-LTA expects and pyHanko's difference
    analysis classifies them (``LTA_UPDATES``); anything else after the last signed byte (text
    after the final ``%%EOF``, or a revision that changes the document) counts.
    """
    if not signatures:
        return 0
    end = _signed_end(signatures)
    unsigned = len(data) - end
    if unsigned <= 0:
        return 0
    eof = data.rfind(b"%%EOF")
    after_eof = len(data) - (eof + 5) if eof >= 0 else unsigned
    if after_eof and data[eof + 5 :].strip():
        return unsigned  # something that is not a revision at all
    newest = reports[-1].modification_level if reports else None
    if eof + 5 > end and newest in ("NONE", "LTA_UPDATES"):
        return 0  # whole revisions of validation data only
    return unsigned


def _signed_end(signatures: Sequence[EmbeddedPdfSignature]) -> int:
    """Where the newest signed byte range ends (0 when none can be read)."""
    ends = []
    for embedded in signatures:
        try:
            start1, length1, start2, length2 = (int(v) for v in embedded.sig_object["/ByteRange"])
        except (KeyError, TypeError, ValueError):
            continue
        ends.append(max(start1 + length1, start2 + length2))
    return max(ends, default=0)


def _at_moment(report: SignatureReport, moment: datetime | None) -> SignatureReport:
    """``report``, failed with that one reason when ``moment`` precedes the signature's time.

    A signature cannot be valid before it was made; the chain and timestamp checks then fail
    for that reason only, so their messages would mislead (e.g. "does not chain to a trusted
    root" because the TSA certificate is checked at a time before its token existed).
    """
    if moment is None or report.signing_time is None or report.signing_time <= moment:
        return report
    when = report.signing_time.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S JST")
    asked = moment.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S JST")
    return replace(
        report,
        exists_at_moment=False,
        problems=(f"the validation time ({asked}) precedes this signature's time ({when})",),
    )


def verify_pdf(
    data: bytes,
    *,
    trust_roots: Sequence[x509.Certificate],
    offline: bool = True,
    moment: datetime | None = None,
) -> VerificationReport:
    """Validate every signature and document timestamp of ``data`` from its embedded data only
    (no network when ``offline``); never raises for a damaged file.

    ``moment`` validates as of another time (e.g. years ahead, after certificates lapsed): each
    signature is then checked at the time the next document timestamp proves, the newest
    timestamp at ``moment``, and the AdES LTA procedure runs with ``moment`` as validation time.
    """
    if moment is not None and moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware")
    return shared_loop().run(_verify(data, trust_roots, offline, moment))
