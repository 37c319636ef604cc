"""Guarantee references (電子保証): the contractor's electronic guarantee certificates.

With an electronic guarantee the contractor hands the buyer two values per certificate, the
guarantee contract number (保証契約番号) and the authentication key (認証キー), with which the buyer
views the certificate at the issuer (e.g. West Japan Construction Surety's D-Sure). They arrive
through :func:`add_guarantee` (API, CLI, a source mapping, the signing pages) or as the issuer's
notice PDF, 電子証書閲覧用「認証キー」等のお知らせ, read by :func:`read_notice` and stored by
:func:`import_notice`.

The authentication key is a secret. It is encrypted at rest with AES-256-GCM under a key derived
from the blob master key, bound to its row (id, envelope, contract number) so a ciphertext copied
onto another row does not open; only its last two characters are kept in clear, for listings.
It is never logged, never written to the audit trail and never returned by listings; the
push-back reads it with :func:`authentication_key` for the finance record.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobs import BlobStore
from core.envelopes.lifecycle import get_envelope
from core.errors import DocumentError, GuaranteeError, NotFoundError
from core.model import Amendment, Envelope, GuaranteeKind, GuaranteeReference, utcnow
from core.records.audit import record_event
from core.rendering import RenderBudget, RenderPool
from core.runtime import Runtime
from core.states import EnvelopeState

__all__ = [
    "KIND_JA",
    "MAX_NOTICE_BYTES",
    "GuaranteeInput",
    "GuaranteeObserver",
    "NoticeFields",
    "add_guarantee",
    "authentication_key",
    "import_notice",
    "list_guarantees",
    "masked_key",
    "normalize_text",
    "parse_kind",
    "read_notice",
    "remove_guarantee",
    "verify_guarantee",
]

log = logging.getLogger(__name__)

KIND_JA: dict[GuaranteeKind, str] = {
    GuaranteeKind.CONTRACT: "契約保証",
    GuaranteeKind.ADVANCE: "前払金保証",
    GuaranteeKind.INTERIM_ADVANCE: "中間前払金保証",
}
# Longest first: 中間前払金保証 contains 前払金保証. The short forms are e-Net's list columns.
_KIND_WORDS: tuple[tuple[str, GuaranteeKind], ...] = (
    ("中間前払金保証", GuaranteeKind.INTERIM_ADVANCE),
    ("中間前払", GuaranteeKind.INTERIM_ADVANCE),
    ("前払金保証", GuaranteeKind.ADVANCE),
    ("前払", GuaranteeKind.ADVANCE),
    ("契約保証", GuaranteeKind.CONTRACT),
    ("契約", GuaranteeKind.CONTRACT),
)
SOURCES = frozenset({"api", "cli", "notice", "mapping", "signing_page", "staff_page"})

_NUMBER = re.compile(r"^[0-9A-Z]{4,32}$")
_KEY = re.compile(r"^[0-9A-Za-z_-]{6,64}$")
_KEY_PURPOSE = "guarantee-authentication-keys"
_CIPHER_VERSION = "v1."
NOTICE_TITLE = "電子証書閲覧用「認証キー」等のお知らせ"
MAX_NOTICE_BYTES = 5 * 1024 * 1024
MAX_NOTICE_PAGES = 5


@runtime_checkable
class GuaranteeObserver(Protocol):
    """Told, inside the change's transaction, when a concluded envelope's guarantee references
    change (the push-back sends the finance sinks an update). ``change`` names the change
    uniquely and stably (``{guarantee id}:added`` / ``:removed``)."""

    def guarantees_changed(self, *, session: Session, envelope: Envelope, change: str) -> None:
        """React to one change."""


def _changed_after_completion(
    session: Session, runtime: Runtime | None, envelope: Envelope, change: str
) -> None:
    # Before completion the completion delivery itself carries the references.
    if runtime is None or envelope.state is not EnvelopeState.COMPLETED:
        return
    for observer in runtime.observers:
        if isinstance(observer, GuaranteeObserver):
            observer.guarantees_changed(session=session, envelope=envelope, change=change)


def _refuse(code: str, en: str, ja: str, **details: object) -> GuaranteeError:
    return GuaranteeError(code, en, ja, details=dict(details))


def normalize_text(value: str) -> str:
    """NFKC, no whitespace, case-folded: the key two names are compared on."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", value)).casefold()


def parse_kind(value: str | GuaranteeKind) -> GuaranteeKind:
    """A kind from its code (``advance``) or its Japanese name (前払金保証, 前払, ...)."""
    if isinstance(value, GuaranteeKind):
        return value
    text = normalize_text(value)
    for kind in GuaranteeKind:
        if text == kind.value:
            return kind
    for word, kind in _KIND_WORDS:
        if text == word or (len(word) > 2 and word in text):
            return kind
    raise _refuse(
        "guarantee.bad_kind",
        f"unknown guarantee kind {value!r}; use 契約保証, 前払金保証 or 中間前払金保証",
        "保証の区分は「契約保証」「前払金保証」「中間前払金保証」のいずれかを指定してください。",
        kind=value,
    )


@dataclass(frozen=True)
class GuaranteeInput:
    """One reference as handed over. ``project_name`` and ``buyer`` are what the issuer printed
    (工事名, 発注者), checked against the envelope when given."""

    kind: GuaranteeKind | str
    contract_number: str
    authentication_key: str = field(repr=False)
    issuer: str
    project_name: str | None = None
    buyer: str | None = None


@dataclass(frozen=True)
class NoticeFields:
    """What an issuer's notice PDF says."""

    kind: GuaranteeKind
    contract_number: str
    authentication_key: str = field(repr=False)
    project_name: str
    buyer: str
    issuer: str

    def as_input(self) -> GuaranteeInput:
        """The same values as an :class:`GuaranteeInput`."""
        return GuaranteeInput(
            kind=self.kind,
            contract_number=self.contract_number,
            authentication_key=self.authentication_key,
            issuer=self.issuer,
            project_name=self.project_name,
            buyer=self.buyer,
        )


def masked_key(reference: GuaranteeReference) -> str:
    """The authentication key as listings show it: all but its last two characters hidden."""
    return "*" * 8 + reference.key_hint


def _clean_number(value: str) -> str:
    number = re.sub(r"[\s\-‐－ー]", "", unicodedata.normalize("NFKC", value)).upper()
    if not _NUMBER.match(number):
        raise _refuse(
            "guarantee.bad_number",
            "a guarantee contract number is 4-32 letters or digits",
            "保証契約番号の形式が正しくありません(英数字4〜32文字)。",
        )
    return number


def _clean_key(value: str) -> str:
    key = re.sub(r"\s+", "", unicodedata.normalize("NFKC", value))
    if not _KEY.match(key):
        # The value itself is never echoed: it is a secret even when mistyped.
        raise _refuse(
            "guarantee.bad_key",
            "an authentication key is 6-64 letters, digits, '-' or '_'",
            "認証キーの形式が正しくありません(英数字6〜64文字)。",
        )
    return key


def _key_cipher(blobs: BlobStore) -> AESGCM:
    return AESGCM(blobs.derive_key(_KEY_PURPOSE))


def _associated_data(reference: GuaranteeReference) -> bytes:
    return (
        f"guarantee-key\x00{reference.id}\x00{reference.envelope_id}\x00{reference.contract_number}"
    ).encode()


def _seal_key(blobs: BlobStore, reference: GuaranteeReference, key: str) -> str:
    nonce = secrets.token_bytes(12)
    sealed = _key_cipher(blobs).encrypt(nonce, key.encode(), _associated_data(reference))
    return _CIPHER_VERSION + base64.b64encode(nonce + sealed).decode("ascii")


def authentication_key(*, runtime: Runtime, reference: GuaranteeReference) -> str:
    """The decrypted authentication key, for the push-back only (never for listings)."""
    text = reference.key_ciphertext
    try:
        if not text.startswith(_CIPHER_VERSION):
            raise ValueError("unknown version")
        raw = base64.b64decode(text[len(_CIPHER_VERSION) :], validate=True)
        plain = _key_cipher(runtime.blobs).decrypt(raw[:12], raw[12:], _associated_data(reference))
    except (ValueError, InvalidTag) as exc:
        raise _refuse(
            "guarantee.key_unreadable",
            f"the authentication key of guarantee {reference.id} cannot be decrypted "
            "(changed, moved to another row, or another master key)",
            "認証キーを復号できません(改ざん、または別のマスター鍵の可能性があります)。",
            guarantee=reference.id,
        ) from exc
    return plain.decode()


def _buyer_matches(notice_buyer: str, buyer_name: str) -> bool:
    ours = re.sub(r"(役所|役場|庁)$", "", normalize_text(buyer_name))
    return bool(ours) and ours in normalize_text(notice_buyer)


def _check_against_envelope(
    title: str, buyer_name: str, reference: GuaranteeInput, envelope_id: str
) -> None:
    if reference.project_name is not None:
        project, ours = normalize_text(reference.project_name), normalize_text(title)
        if not project or project not in ours:
            raise _refuse(
                "guarantee.project_mismatch",
                f"the guarantee is for {reference.project_name!r}, the envelope is {title!r}",
                f"保証の工事名「{reference.project_name}」が契約の件名「{title}」と一致しません。",
                envelope=envelope_id,
                project_name=reference.project_name,
                title=title,
            )
    if reference.buyer is not None and not _buyer_matches(reference.buyer, buyer_name):
        raise _refuse(
            "guarantee.buyer_mismatch",
            f"the guarantee names the buyer {reference.buyer!r}, not {buyer_name!r}",
            f"保証の発注者「{reference.buyer}」が{buyer_name}ではありません。",
            envelope=envelope_id,
            buyer=reference.buyer,
        )


def _related_envelopes(session: Session, envelope_id: str) -> set[str]:
    # An amendment (変更契約) and its original share their guarantees legitimately.
    rows = session.execute(
        select(Amendment.envelope_id, Amendment.original_id).where(
            (Amendment.envelope_id == envelope_id) | (Amendment.original_id == envelope_id)
        )
    ).all()
    return {envelope_id} | {r[0] for r in rows} | {r[1] for r in rows}


def add_guarantee(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    reference: GuaranteeInput,
    actor: str,
    source: str = "api",
    allow_reuse: bool = False,
    notice_blob_id: str | None = None,
) -> GuaranteeReference:
    """Validate and store one reference (key encrypted) with its audit event; not committed.

    Refused: a bad kind, number or key; a number already on this envelope; a number already on
    another envelope (unless it is this one's original or amendment, or ``allow_reuse``); a
    project name or buyer that does not match the envelope.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    kind = parse_kind(reference.kind)
    number = _clean_number(reference.contract_number)
    key = _clean_key(reference.authentication_key)
    issuer = unicodedata.normalize("NFKC", reference.issuer).strip()
    if not issuer or len(issuer) > 200:
        raise _refuse(
            "guarantee.bad_issuer",
            "the issuer (保証機関) is required, at most 200 characters",
            "保証機関を200文字以内で入力してください。",
        )
    _check_against_envelope(envelope.title, runtime.buyer_name, reference, envelope.id)
    holders = session.scalars(
        select(GuaranteeReference.envelope_id).where(GuaranteeReference.contract_number == number)
    ).all()
    if envelope.id in holders:
        raise _refuse(
            "guarantee.duplicate",
            f"guarantee {number} is already registered on this envelope",
            f"保証契約番号 {number} は既にこの契約に登録されています。",
            contract_number=number,
        )
    others = set(holders) - _related_envelopes(session, envelope.id)
    if others and not allow_reuse:
        raise _refuse(
            "guarantee.number_in_use",
            f"guarantee {number} is registered on another envelope",
            f"保証契約番号 {number} は別の契約に登録されています。",
            contract_number=number,
            envelopes=sorted(others),
        )
    row = GuaranteeReference(
        id=secrets.token_hex(16),
        envelope_id=envelope.id,
        kind=kind,
        contract_number=number,
        issuer=issuer,
        key_hint=key[-2:],
        project_name=reference.project_name,
        buyer=reference.buyer,
        source=source,
        notice_blob_id=notice_blob_id,
        created_by=actor,
        created_at=utcnow(),
    )
    row.key_ciphertext = _seal_key(runtime.blobs, row, key)
    session.add(row)
    record_event(
        session=session,
        action="guarantee.added",
        actor=actor,
        envelope_id=envelope.id,
        at=row.created_at,
        detail={
            "guarantee": row.id,
            "kind": kind.value,
            "contract_number": number,
            "issuer": issuer,
            "source": source,
            **({"reused_from": sorted(others)} if others else {}),
        },
    )
    session.flush()
    _changed_after_completion(session, runtime, envelope, f"{row.id}:added")
    log.info("envelope %s: guarantee %s (%s) added by %s", envelope.id, number, kind.value, actor)
    return row


def import_notice(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    data: bytes,
    actor: str,
    allow_reuse: bool = False,
) -> GuaranteeReference:
    """Read an issuer's notice PDF, check it against the envelope, store the PDF (encrypted,
    it holds the key) and the reference; not committed."""
    notice = read_notice(data, renderer=runtime.renderer)
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    # Checked before the PDF is stored, so a refused notice leaves no blob behind.
    _check_against_envelope(envelope.title, runtime.buyer_name, notice.as_input(), envelope.id)
    blob_id = runtime.blobs.put(data)
    return add_guarantee(
        session=session,
        runtime=runtime,
        envelope_id=envelope_id,
        reference=notice.as_input(),
        actor=actor,
        source="notice",
        allow_reuse=allow_reuse,
        notice_blob_id=blob_id,
    )


def list_guarantees(*, session: Session, envelope_id: str) -> Sequence[GuaranteeReference]:
    """An envelope's references in the order they were added (keys stay encrypted)."""
    return session.scalars(
        select(GuaranteeReference)
        .where(GuaranteeReference.envelope_id == envelope_id)
        .order_by(GuaranteeReference.created_at, GuaranteeReference.id)
    ).all()


def remove_guarantee(
    *,
    session: Session,
    envelope_id: str,
    guarantee_id: str,
    actor: str,
    reason: str,
    runtime: Runtime | None = None,
) -> None:
    """Delete a mistaken reference, recording who did it and why; not committed. With
    ``runtime``, a concluded envelope's observers are told (an update for the finance sinks)."""
    row = session.scalar(
        select(GuaranteeReference).where(
            GuaranteeReference.id == guarantee_id, GuaranteeReference.envelope_id == envelope_id
        )
    )
    if row is None:
        raise NotFoundError(
            "not_found.guarantee",
            f"no guarantee {guarantee_id} on envelope {envelope_id}",
            "指定された保証が見つかりません。",
        )
    if not reason.strip():
        raise _refuse(
            "guarantee.reason_required",
            "removing a guarantee needs a reason",
            "保証を削除する理由を入力してください。",
        )
    record_event(
        session=session,
        action="guarantee.removed",
        actor=actor,
        envelope_id=envelope_id,
        detail={
            "guarantee": row.id,
            "kind": row.kind.value,
            "contract_number": row.contract_number,
            "reason": reason.strip(),
        },
    )
    session.delete(row)
    session.flush()
    envelope = session.get(Envelope, envelope_id)
    if envelope is not None:
        _changed_after_completion(session, runtime, envelope, f"{guarantee_id}:removed")


def verify_guarantee(
    *, session: Session, envelope_id: str, guarantee_id: str, actor: str
) -> GuaranteeReference:
    """Record that ``actor`` confirmed the certificate at its issuer (with the number and the
    key); not committed."""
    row = session.scalar(
        select(GuaranteeReference).where(
            GuaranteeReference.id == guarantee_id, GuaranteeReference.envelope_id == envelope_id
        )
    )
    if row is None:
        raise NotFoundError(
            "not_found.guarantee",
            f"no guarantee {guarantee_id} on envelope {envelope_id}",
            "指定された保証が見つかりません。",
        )
    row.verified_by = actor
    row.verified_at = utcnow()
    record_event(
        session=session,
        action="guarantee.verified",
        actor=actor,
        envelope_id=envelope_id,
        at=row.verified_at,
        detail={"guarantee": row.id, "contract_number": row.contract_number},
    )
    session.flush()
    return row


# --- the issuer's notice PDF ---

_LABELS: dict[str, tuple[str, ...]] = {
    "kind": ("区分", "保証区分", "保証の種類"),
    "contract_number": ("保証契約番号",),
    "authentication_key": ("認証キー",),
    "project_name": ("工事名", "業務名", "件名", "案件名"),
    "buyer": ("発注者", "発注者名"),
    "issuer": ("保証機関", "保証会社"),
}
_LABEL_JA = {
    "kind": "区分",
    "contract_number": "保証契約番号",
    "authentication_key": "認証キー",
    "project_name": "工事名",
    "buyer": "発注者",
    "issuer": "保証機関",
}


def _not_a_notice(en: str, ja: str) -> GuaranteeError:
    return _refuse(
        "guarantee.not_a_notice",
        f"not an issuer's notice ({NOTICE_TITLE}): {en}",
        f"保証会社の「{NOTICE_TITLE}」のPDFではありません({ja})。",
    )


def _notice_text(data: bytes, renderer: RenderPool | None) -> list[str]:
    if len(data) > MAX_NOTICE_BYTES:
        raise _not_a_notice("larger than 5 MB", "5MBを超えています")
    if not data.lstrip()[:5] == b"%PDF-":
        raise _not_a_notice("not a PDF file", "PDFファイルではありません")
    # pdfium reads the notice in a bounded worker process (core.rendering): the file comes
    # from outside, and a hostile one must cost a killed child, not the request worker.
    try:
        if renderer is not None:
            encrypted, pages, text = renderer.text(data, max_pages=MAX_NOTICE_PAGES)
        else:
            with RenderPool(RenderBudget(workers=1)) as pool:
                encrypted, pages, text = pool.text(data, max_pages=MAX_NOTICE_PAGES)
    except DocumentError as exc:
        raise _refuse(
            "guarantee.notice_unreadable",
            f"the PDF cannot be read: {exc.message_en}",
            "PDFを読み込めません(破損している可能性があります)。",
        ) from exc
    if encrypted:
        raise _not_a_notice("the PDF is encrypted", "PDFが暗号化されています")
    if pages > MAX_NOTICE_PAGES:
        raise _not_a_notice(
            f"{pages} pages; a notice has at most {MAX_NOTICE_PAGES}", "ページ数が多すぎます"
        )
    lines = [unicodedata.normalize("NFKC", line).strip() for line in text.splitlines()]
    return [line for line in lines if line]


def _field_value(lines: Sequence[str], labels: Sequence[str]) -> str | None:
    # A table cell comes out either as "label value" on one line or as the label alone with
    # the value on the next line, depending on the PDF producer.
    for index, line in enumerate(lines):
        for label in labels:
            if not line.startswith(label):
                continue
            rest = line[len(label) :].strip().lstrip(":：").strip()
            if rest:
                return rest
            if line == label and index + 1 < len(lines):
                return lines[index + 1]
    return None


def read_notice(data: bytes, *, renderer: RenderPool | None = None) -> NoticeFields:
    """The kind, number, key, project name, buyer and issuer printed on an issuer's notice
    (電子証書閲覧用「認証キー」等のお知らせ); ``guarantee.not_a_notice`` for any other PDF.
    The text is read by ``renderer`` (a pool of its own, started for this call, when None)."""
    lines = _notice_text(data, renderer)
    flat = normalize_text("".join(lines))
    if normalize_text(NOTICE_TITLE) not in flat:
        raise _not_a_notice("its title is missing", f"「{NOTICE_TITLE}」の表題がありません")
    values = {name: _field_value(lines, labels) for name, labels in _LABELS.items()}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise _refuse(
            "guarantee.notice_incomplete",
            f"the notice lacks {', '.join(missing)}",
            "お知らせから読み取れない項目があります: "
            + "、".join(_LABEL_JA[name] for name in missing),
            missing=missing,
        )
    return NoticeFields(
        kind=parse_kind(values["kind"] or ""),
        contract_number=_clean_number(values["contract_number"] or ""),
        authentication_key=_clean_key(values["authentication_key"] or ""),
        project_name=values["project_name"] or "",
        buyer=values["buyer"] or "",
        issuer=values["issuer"] or "",
    )
