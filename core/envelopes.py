"""Envelope services: create, send, view, approve (and sign), decline, cancel, expire, seal.

Every function takes the session explicitly and is keyword-only. State changes go through
:mod:`core.states`; each change and its audit events commit in one transaction.

Approving is two steps so that a TSA outage never leaves a document half-signed:

1. :func:`record_approval` stores the party's instruction (who, when, from where, how
   authenticated) and moves the party to ``signing``, atomically and exactly once even when the
   same approval is submitted twice at the same moment (a conditional ``UPDATE``).
   A signing task commits with it (:mod:`core.signing_tasks`).
2. The signing worker (:mod:`core.signing_worker`) runs :func:`apply_pending_signature`, which
   signs every document for that party and, in one transaction, points the documents at their
   new revisions, completes the party, closes the task and hands the envelope to the next party.
   When the TSA is down it records the error and leaves the party in ``signing``; the worker
   tries again with backoff. The last party's signature moves the envelope to ``sealing`` (and
   queues a seal task), and :func:`seal_envelope` adds validation data and a document
   timestamp, then issues the completion certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from decimal import Decimal
from io import SEEK_END, BytesIO
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from core._approval_rows import write_approval
from core.active_content import ActiveContentMode, check_active_content
from core.amendments import original_of
from core.audit import record_event
from core.blobs import BlobStore
from core.certificate_facts import DocumentCheck, check_document, issue_certificate, operation_via
from core.consent import check_contract_type, require_consent
from core.errors import (
    Disposition,
    DocumentError,
    GatewayError,
    InputError,
    NotFoundError,
    StateError,
)
from core.model import (
    AccessCode,
    Document,
    DocumentRevision,
    Envelope,
    Field,
    Party,
    Staff,
    utcnow,
)
from core.outbox import release_leases
from core.records import fill_record_facts, record_facts, require_amount
from core.rendering import RenderPool
from core.signing import (
    FieldBox,
    InspectedDocument,
    PageArea,
    PdfInfo,
    SigningEngine,
    approval_reason,
)
from core.signing_tasks import (
    claim_task,
    close_task,
    enqueue_seal,
    enqueue_signature,
    seal_key,
    signature_key,
)
from core.states import (
    ACTIONABLE_PARTY_STATES,
    EnvelopeState,
    PartyRole,
    PartyState,
    check_envelope_transition,
    check_party_transition,
    envelope_state_ja,
)
from core.text import multi_line, one_line
from core.text_boxes import check_text_box
from core.timezone import JST

__all__ = [
    "AUTH_ACCESS_CODE",
    "AUTH_STAFF",
    "AUTH_STAFF_TOTP",
    "MB",
    "DocumentInput",
    "EnvelopeObserver",
    "FieldInput",
    "Limits",
    "PartyInput",
    "Runtime",
    "action_ja",
    "apply_pending_signature",
    "approve",
    "auth_method_ja",
    "cancel_envelope",
    "check_auth_method",
    "check_authentication_means",
    "check_documents",
    "check_documents_kept",
    "check_parties",
    "check_party_can_act",
    "check_party_values",
    "check_staff_party",
    "completion_certificate",
    "create_envelope",
    "current_documents",
    "decline",
    "discard_envelope_blobs",
    "document_at",
    "expire_envelope",
    "get_envelope",
    "get_party",
    "party_auth_ja",
    "read_document",
    "record_approval",
    "record_view",
    "seal_envelope",
    "send_envelope",
    "store_revision",
]

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Size limits from the buyers' specifications (Sapporo: 20 MB/file, 50 MB/contract, 5+ files)."""

    max_file_bytes: int = 20 * MB
    max_envelope_bytes: int = 50 * MB
    max_files: int = 20
    max_parties: int = 50
    # A PDF that runs JavaScript or launches something when opened: refuse it, or strip that.
    pdf_active_content: ActiveContentMode = "refuse"


class EnvelopeObserver(Protocol):
    """Told of each envelope event inside the transaction that makes it, so what it writes
    (outbox rows for mail or sinks) commits or rolls back with the state change.

    Events: ``party.requested`` and ``party.notified`` (with the party), ``envelope.declined``
    (with the declining party), ``envelope.cancelled``, ``envelope.expired``,
    ``envelope.completed``; from :mod:`core.links`: ``party.forwarded`` (with the party under
    its new name and address), ``party.resent`` and ``party.locked`` (with the party).
    """

    def envelope_event(
        self, *, session: Session, envelope: Envelope, event: str, party: Party | None
    ) -> None:
        """React to one event; raise to abort the state change."""


@dataclass(frozen=True)
class Runtime:
    """What the services need besides the session: blob store, signing engine, observers."""

    blobs: BlobStore
    signing: SigningEngine
    buyer_name: str
    limits: Limits = field(default_factory=Limits)
    observers: tuple[EnvelopeObserver, ...] = ()
    # Renders pages in bounded processes; an upload is refused when its pages cannot all be
    # rendered within the caps (None: not checked, for callers that never show pages).
    renderer: RenderPool | None = None

    def notify(
        self, session: Session, envelope: Envelope, event: str, party: Party | None = None
    ) -> None:
        """Tell every observer of one event (inside the caller's transaction)."""
        for observer in self.observers:
            observer.envelope_event(session=session, envelope=envelope, event=event, party=party)


@dataclass(frozen=True)
class DocumentInput:
    """One PDF handed to :func:`create_envelope`."""

    name: str
    data: bytes


@dataclass(frozen=True)
class PartyInput:
    """One party, in routing order."""

    role: PartyRole
    name: str
    email: str
    company: str | None = None
    # Bind the party to the staff account with this e-mail: it signs from the staff pages
    # after logging in, and needs no access code.
    staff: bool = False


@dataclass(frozen=True)
class FieldInput:
    """A text box: which document (0-based), which party (0-based), where, and what for."""

    document: int
    party: int
    label: str
    page: int
    rect: tuple[float, float, float, float]
    required: bool = True
    max_length: int = 200


_SIGNING_ROLES = frozenset({PartyRole.APPROVER, PartyRole.SIGNER})
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")

# How a party can have been authenticated when it gave its instruction: only what a real
# surface produces. The signing pages: the mailed link plus the access code; the staff pages:
# the staff login with the password typed again at signing, plus the one-time code when the
# account has TOTP.
AUTH_ACCESS_CODE = "email+access_code"
AUTH_STAFF = "staff_login"
AUTH_STAFF_TOTP = "staff_login+totp"
LINK_AUTH_METHODS = frozenset({AUTH_ACCESS_CODE})
STAFF_AUTH_METHODS = frozenset({AUTH_STAFF, AUTH_STAFF_TOTP})


def _input_error(code: str, message_en: str, message_ja: str, **details: object) -> DocumentError:
    return DocumentError(code, message_en, message_ja, details=dict(details))


def _check_limits(documents: Sequence[DocumentInput], limits: Limits) -> None:
    if not documents:
        raise _input_error(
            "document.none", "an envelope needs at least one document", "文書が添付されていません。"
        )
    if len(documents) > limits.max_files:
        raise _input_error(
            "document.too_many_files",
            f"{len(documents)} files given; at most {limits.max_files} per envelope",
            f"1件の封筒に添付できる文書は{limits.max_files}ファイルまでです"
            f"({len(documents)}ファイルが指定されました)。",
            count=len(documents),
            limit=limits.max_files,
        )
    for doc in documents:
        if len(doc.data) > limits.max_file_bytes:
            raise _input_error(
                "document.too_large",
                f"{doc.name} is {len(doc.data)} bytes; at most {limits.max_file_bytes} per file",
                f"「{doc.name}」は1ファイルの上限({limits.max_file_bytes // MB}MB)を超えています。",
                document=doc.name,
                size=len(doc.data),
                limit=limits.max_file_bytes,
            )
    total = sum(len(d.data) for d in documents)
    if total > limits.max_envelope_bytes:
        raise _input_error(
            "document.envelope_too_large",
            f"documents total {total} bytes; at most {limits.max_envelope_bytes} per envelope",
            f"文書の合計サイズが1件あたりの上限({limits.max_envelope_bytes // MB}MB)を超えています。",
            size=total,
            limit=limits.max_envelope_bytes,
        )


def _check_parties(parties: Sequence[PartyInput], limits: Limits) -> None:
    if not any(p.role in _SIGNING_ROLES for p in parties):
        raise InputError(
            "envelope.no_signer",
            "an envelope needs at least one approver or signer",
            "承認者または署名者を1人以上指定してください。",
        )
    if len(parties) > limits.max_parties:
        raise InputError(
            "envelope.too_many_parties",
            f"{len(parties)} parties given; at most {limits.max_parties}",
            f"署名者は{limits.max_parties}人までです。",
        )
    for index, party in enumerate(parties):
        if not party.name.strip() or not _EMAIL.fullmatch(party.email.strip()):
            raise InputError(
                "envelope.bad_party",
                f"party {index + 1} needs a name and an e-mail address",
                f"{index + 1}番目の署名者の氏名とメールアドレスを入力してください。",
                details={"party": index + 1},
            )


def _staff_accounts(session: Session, parties: Sequence[PartyInput]) -> list[Staff | None]:
    """The staff account of each party bound to one (by e-mail), or ``envelope.party_not_staff``."""
    accounts: list[Staff | None] = []
    for index, party in enumerate(parties):
        if not party.staff:
            accounts.append(None)
            continue
        if party.role not in _SIGNING_ROLES:
            raise InputError(
                "envelope.bad_party",
                f"party {index + 1} is a cc and cannot be bound to a staff account",
                f"{index + 1}番目の署名者はCC(写し送付先)のため、職員の署名には指定できません。",
                details={"party": index + 1},
            )
        try:
            accounts.append(check_staff_party(session=session, email=party.email))
        except StateError as exc:
            exc.details["party"] = index + 1
            exc.message_ja = f"{index + 1}番目の署名者: {exc.message_ja}"
            raise
    return accounts


def check_staff_party(*, session: Session, email: str) -> Staff:
    """The enabled staff account a party with ``email`` is bound to, or
    ``envelope.party_not_staff``."""
    email = email.strip().lower()
    staff = session.scalars(select(Staff).where(Staff.email == email)).first()
    if staff is None or staff.disabled:
        raise InputError(
            "envelope.party_not_staff",
            f"no enabled staff account has the e-mail {email}",
            f"{email} は職員として登録されていないか、無効になっています。"
            "職員管理で登録するか、アクセスコードで署名する署名者にしてください。",
            details={"email": email},
        )
    return staff


def party_auth_ja(party: Party) -> str:
    """How a party signs, as staff read it: 職員ログイン or メール＋アクセスコード."""
    if party.role is PartyRole.CC:
        return "(写し送付のみ)"
    return "職員ログイン" if party.staff_id is not None else "メールのURL＋アクセスコード"


def check_authentication_means(*, session: Session, envelope: Envelope) -> None:
    """Refuse (``envelope.party_cannot_authenticate``) an envelope in which an approver or
    signer has no way to authenticate: neither a staff account that can log in nor an access
    code. Otherwise its mailed link would refuse every code and lock."""
    for party in envelope.parties:
        if party.role not in _SIGNING_ROLES:
            continue
        if party.staff_id is not None:
            staff = session.get(Staff, party.staff_id)
            if staff is not None and not staff.disabled and staff.password_hash is not None:
                continue
            problem_en = "its staff account is disabled or has no password"
            problem_ja = "職員アカウントが無効か、パスワードが設定されていません"
        else:
            if session.get(AccessCode, party.id) is not None:
                continue
            problem_en = "it has no access code and is not bound to a staff account"
            problem_ja = "アクセスコードが設定されておらず、職員にも指定されていません"
        raise InputError(
            "envelope.party_cannot_authenticate",
            f"party {party.routing_order} ({party.email}) cannot authenticate: {problem_en}",
            f"{party.routing_order}番目の署名者({party.name})は本人確認の手段がないため、"
            f"送信できません({problem_ja})。",
            details={"routing_order": party.routing_order},
        )


def check_documents(*, runtime: Runtime, documents: Sequence[DocumentInput]) -> list[PdfInfo]:
    """Refuse documents over the size limits or that the signing engine cannot take (what
    :func:`create_envelope` checks first), before anything is stored; returns their page counts."""
    _check_limits(documents, runtime.limits)
    inspected = [runtime.signing.inspect_upload(doc.data) for doc in documents]
    for doc in documents:
        check_active_content(doc.data, name=doc.name, mode=runtime.limits.pdf_active_content)
    _check_renderable(runtime, documents, inspected)
    return [inspection.info for inspection in inspected]


_render_waiters: tuple[int, ThreadPoolExecutor] | None = None


def _check_renderable_later(
    runtime: Runtime, documents: Sequence[DocumentInput], inspected: Sequence[InspectedDocument]
) -> Future[None]:
    """:func:`_check_renderable` in a thread that only waits for the rendering processes;
    :func:`_rendered` takes its answer. The create goes on meanwhile (preparing, storing), so
    it waits for the slower of the two instead of for both."""
    global _render_waiters
    if _render_waiters is None or _render_waiters[0] != os.getpid():  # a forked worker's own
        _render_waiters = (
            os.getpid(),
            ThreadPoolExecutor(max_workers=16, thread_name_prefix="render-check"),
        )
    return _render_waiters[1].submit(_check_renderable, runtime, documents, inspected)


def _rendered(check: Future[None]) -> None:
    """Wait for :func:`_check_renderable_later`; raise its refusal, if any."""
    check.result()


def _check_renderable(
    runtime: Runtime, documents: Sequence[DocumentInput], inspected: Sequence[InspectedDocument]
) -> None:
    """Refuse a document whose pages cannot all be rendered within the page-image caps and
    the renderer's budget: signers could never read it (``document.too_complex``,
    ``document.page_size``). What is rendered is what signers will be shown: the file the
    engine rebuilt when it had to (pdfium can loop on a form tree the rebuild mends)."""
    if runtime.renderer is None:
        return
    for doc, inspection in zip(documents, inspected, strict=True):
        runtime.renderer.check(inspection.rebuilt or doc.data, name=doc.name)


def check_parties(*, runtime: Runtime, parties: Sequence[PartyInput]) -> None:
    """Refuse a routing order :func:`create_envelope` would refuse (no approver or signer, too
    many parties, a party without name or e-mail address)."""
    _check_parties(parties, runtime.limits)


def _field_error(index: int, message_en: str, message_ja: str) -> InputError:
    return InputError(
        "envelope.bad_field",
        f"field {index + 1}: {message_en}",
        f"{index + 1}番目のテキストボックス: {message_ja}",
        details={"field": index + 1},
    )


def _check_fields(
    fields: Sequence[FieldInput], parties: Sequence[PartyInput], pages: Sequence[Sequence[PageArea]]
) -> None:
    for index, f in enumerate(fields):
        if not 0 <= f.document < len(pages):
            raise _field_error(index, "no such document", "指定された文書がありません。")
        if not 0 <= f.party < len(parties):
            raise _field_error(index, "no such party", "指定された署名者がいません。")
        if parties[f.party].role not in _SIGNING_ROLES:
            raise _field_error(
                index, "a cc party cannot fill fields", "CC(写し送付先)は入力できません。"
            )
        # Where the box is, its size and label: the rule the compose page and mappings share.
        check_text_box(
            number=index + 1,
            label=f.label,
            rect=f.rect,
            max_length=f.max_length,
            page=f.page,
            pages=pages[f.document],
        )


def _new_management_number(session: Session, now: dt.datetime) -> str:
    # Readable, sortable and unique without a sequence shared across nodes; dated in JST, the
    # day the buyer's clerks work in (00:30 JST is the next day, not UTC's previous one).
    return f"KG-{now.astimezone(JST):%Y%m%d}-{secrets.token_hex(4).upper()}"


def create_envelope(
    *,
    session: Session,
    runtime: Runtime,
    title: str,
    creator: str,
    documents: Sequence[DocumentInput],
    parties: Sequence[PartyInput],
    fields: Sequence[FieldInput] = (),
    creator_email: str | None = None,
    management_number: str | None = None,
    counterparty: str | None = None,
    amount: Decimal | None = None,
    transaction_date: dt.date | None = None,
    deadline: dt.date | None = None,
    actor: str | None = None,
    department: str | None = None,
    contract_type: str = "other",
    consent_id: str | None = None,
    via: Mapping[str, str | None] | None = None,
) -> Envelope:
    """Validate the inputs, stamp and prepare every document, and add a draft envelope.

    A ``construction`` contract needs the contractor's consent in force (``consent_id``,
    :mod:`core.consent`). Nothing is added to the session when any input is refused.
    ``via`` says how it was created (:func:`core.certificate_facts.operation_via`; read from
    ``actor`` when not given) for the completion certificate.
    """
    # Every text on one line, control characters refused, before anything is stored: a line
    # break in a title or name would break the mails and downloads made from it later.
    title = one_line(title, field="title", label_ja="件名")
    creator = one_line(creator, field="creator", label_ja="文書作成者")
    creator_email = _optional_line(creator_email, "sender_email", "送信者メールアドレス")
    management_number = _optional_line(management_number, "management_number", "管理番号")
    counterparty = _optional_line(counterparty, "counterparty", "契約相手方")
    department = _optional_line(department, "department", "所属")
    documents = [
        DocumentInput(
            name=one_line(d.name, field=f"documents.{i}.name", label_ja="文書名"), data=d.data
        )
        for i, d in enumerate(documents)
    ]
    parties = [
        replace(
            p,
            name=one_line(p.name, field=f"parties.{i}.name", label_ja="氏名"),
            email=one_line(p.email, field=f"parties.{i}.email", label_ja="メールアドレス"),
            company=_optional_line(p.company, f"parties.{i}.company", "会社名"),
        )
        for i, p in enumerate(parties)
    ]
    fields = [
        replace(f, label=one_line(f.label, field=f"fields.{i}.label", label_ja="項目名"))
        for i, f in enumerate(fields)
    ]
    check_contract_type(contract_type)
    require_consent(session=session, contract_type=contract_type, consent_id=consent_id)
    if not title:
        raise InputError(
            "envelope.no_title", "an envelope needs a title", "件名を入力してください。"
        )
    limits = runtime.limits
    _check_limits(documents, limits)
    _check_parties(parties, limits)
    inspected = [runtime.signing.inspect_upload(doc.data) for doc in documents]
    infos = [i.info for i in inspected]
    # Before the documents are stored or stamped: the first signature covers no script.
    documents = [
        DocumentInput(
            d.name, check_active_content(d.data, name=d.name, mode=limits.pdf_active_content)
        )
        for d in documents
    ]
    rendering = _check_renderable_later(runtime, documents, inspected)
    try:
        _check_fields(fields, parties, [i.pages for i in infos])
        accounts = _staff_accounts(session, parties)
    except BaseException:
        _rendered(rendering)  # a refusal to render comes first, as when checked before these
        raise

    now = utcnow()
    envelope = Envelope(
        id=secrets.token_hex(16),
        management_number=management_number or _new_management_number(session, now),
        title=title.strip(),
        state=EnvelopeState.DRAFT,
        certificate_id=secrets.token_hex(16),
        creator=creator,
        creator_email=creator_email,
        counterparty=counterparty,
        department=department,
        amount=amount,
        transaction_date=transaction_date,
        deadline=deadline,
        created_at=now,
        updated_at=now,
        contract_type=contract_type,
        consent_id=consent_id,
    )
    party_rows = [
        Party(
            id=secrets.token_hex(16),
            routing_order=order,
            role=p.role,
            state=PartyState.WAITING,
            name=p.name.strip(),
            email=account.email if account is not None else p.email.strip(),
            company=p.company,
            staff_id=account.id if account is not None else None,
        )
        for order, (p, account) in enumerate(zip(parties, accounts, strict=True), start=1)
    ]
    doc_ids = [secrets.token_hex(16) for _ in documents]
    field_rows = [
        Field(
            id=secrets.token_hex(16),
            document_id=doc_ids[f.document],
            party_id=party_rows[f.party].id,
            name=f"kg_text_{index + 1}",
            label=f.label,
            page=f.page,
            x1=f.rect[0],
            y1=f.rect[1],
            x2=f.rect[2],
            y2=f.rect[3],
            required=f.required,
            max_length=f.max_length,
        )
        for index, f in enumerate(fields)
    ]
    # Prepare (certificate ID stamp + empty text fields) before anything is stored, so a
    # refused document leaves neither rows nor blobs behind.
    try:
        prepared = [
            runtime.signing.prepare(
                doc.data,
                certificate_id=envelope.certificate_id,
                fields=[
                    FieldBox(name=f.name, page=f.page, rect=(f.x1, f.y1, f.x2, f.y2))
                    for f in field_rows
                    if f.document_id == doc_ids[position]
                ],
                inspected=inspected[position],
            )
            for position, doc in enumerate(documents)
        ]
    except BaseException:
        _rendered(rendering)
        raise
    try:
        try:
            _store_documents(runtime, envelope, documents, infos, prepared, doc_ids, now)
        finally:
            _rendered(rendering)  # a refusal wins over a failed store, as when run before it
        envelope.parties.extend(party_rows)
        envelope.fields.extend(field_rows)
        session.add(envelope)
        record_event(
            session=session,
            action="envelope.created",
            actor=actor or creator,
            envelope_id=envelope.id,
            at=now,
            detail={
                "documents": [d.name for d in documents],
                "parties": len(parties),
                "via": dict(via or operation_via(session=session, actor=actor or creator)),
            },
        )
        session.flush()
    except BaseException:
        discard_envelope_blobs(runtime=runtime, envelope=envelope)
        raise
    return envelope


def discard_envelope_blobs(*, runtime: Runtime, envelope: Envelope) -> None:
    """Remove the blobs a create wrote for ``envelope`` when the create fails or is rolled
    back (call it from the caller's failure path too): no orphan stays in the store."""
    for document in envelope.documents:
        for revision in document.revisions:
            runtime.blobs.discard(revision.blob_id)


def _optional_line(text: str | None, field: str, label_ja: str) -> str | None:
    return one_line(text, field=field, label_ja=label_ja) or None if text is not None else None


def _store_documents(
    runtime: Runtime,
    envelope: Envelope,
    documents: Sequence[DocumentInput],
    infos: Sequence[PdfInfo],
    prepared: Sequence[bytes],
    doc_ids: Sequence[str],
    now: dt.datetime,
) -> None:
    # The upload is kept as revision 1; preparing appends to it, so the prepared file costs
    # one small append instead of a second full copy. Every blob is written at once: one
    # create waits for one round of fsyncs, not one per blob.
    appends = [
        len(data) > len(doc.data) and data.startswith(doc.data)
        for doc, data in zip(documents, prepared, strict=True)
    ]
    blob_ids = runtime.blobs.put_many(
        [doc.data for doc in documents]
        + [
            data[len(doc.data) :] if append else data
            for doc, data, append in zip(documents, prepared, appends, strict=True)
        ]
    )
    for position, (doc, info, data) in enumerate(zip(documents, infos, prepared, strict=True)):
        original = DocumentRevision(
            seq=1,
            kind="full",
            blob_id=blob_ids[position],
            size=len(doc.data),
            reason="original",
            created_at=now,
        )
        document = Document(
            id=doc_ids[position],
            position=position,
            name=doc.name,
            original_blob_id=original.blob_id,
            original_sha256=hashlib.sha256(doc.data).hexdigest(),
            size=len(data),
            page_count=info.page_count,
            revisions=[original],
        )
        envelope.documents.append(document)
        document.revisions.append(
            DocumentRevision(
                seq=2,
                kind="append" if appends[position] else "full",
                blob_id=blob_ids[len(documents) + position],
                size=len(data),
                reason="prepared",
                created_at=now,
            )
        )


def _envelope_graph() -> tuple[Any, ...]:
    # One envelope's documents, revisions, parties and fields in three SELECTs (each a round
    # trip to PostgreSQL, paid on every approval): the envelope joined with its parties and
    # their fields, then its documents, then their revisions. The revisions are not joined
    # onto the documents: a joined load refreshing revisions flushed in the same transaction
    # left them expired rather than expunged after a rollback (the compose page's failed send
    # then could not discard their blobs).
    return (
        joinedload(Envelope.parties).joinedload(Party.fields),
        selectinload(Envelope.documents).selectinload(Document.revisions),
    )


def get_envelope(*, session: Session, envelope_id: str) -> Envelope:
    """One envelope by id, freshly read with its documents and parties, or ``not_found.envelope``."""
    envelope = (
        session.execute(
            select(Envelope)
            .where(Envelope.id == envelope_id)
            .options(*_envelope_graph())
            .execution_options(populate_existing=True)
        )
        .unique()
        .scalar_one_or_none()
    )
    if envelope is None:
        raise NotFoundError(
            "not_found.envelope", f"no envelope {envelope_id}", "指定された封筒が見つかりません。"
        )
    return envelope


def document_at(envelope: Envelope, position: int) -> Document:
    """The envelope's document at ``position`` (1-based, as URLs number them)."""
    for document in envelope.documents:
        if document.position == position:
            return document
    raise NotFoundError(
        "not_found.document",
        f"no document {position} in {envelope.id}",
        "文書が見つかりません。",
    )


def get_party(*, session: Session, envelope_id: str, party_id: str) -> Party:
    """One party of one envelope, read through its envelope (never by party id alone)."""
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    for party in envelope.parties:
        if party.id == party_id:
            # Tie the party to this envelope object: the identity map holds objects weakly, so
            # otherwise the envelope (and the documents loaded with it) would be dropped and
            # lazily read again on first use.
            set_committed_value(party, "envelope", envelope)
            return party
    raise NotFoundError(
        "not_found.party", f"no party {party_id} in {envelope_id}", "署名者が見つかりません。"
    )


def _set_envelope_state(envelope: Envelope, target: EnvelopeState, now: dt.datetime) -> None:
    check_envelope_transition(envelope.state, target)
    envelope.state = target
    envelope.updated_at = now


def _set_party_state(party: Party, target: PartyState) -> None:
    check_party_transition(party.state, target)
    party.state = target


def _advance(
    session: Session, runtime: Runtime, envelope: Envelope, now: dt.datetime
) -> Party | None:
    """Hand the envelope to the next party; move it to ``sealing`` when nobody is left.

    Returns the party now asked to act, or None.
    """
    for party in envelope.parties:
        if party.state is not PartyState.WAITING:
            continue
        if party.role is PartyRole.CC:
            # A copy recipient never acts: it is told when its turn comes and routing goes on.
            _set_party_state(party, PartyState.NOTIFIED)
            party.sent_at = now
            record_event(
                session=session,
                action="party.notified",
                actor="system",
                envelope_id=envelope.id,
                party_id=party.id,
                at=now,
            )
            runtime.notify(session, envelope, "party.notified", party)
            continue
        _set_party_state(party, PartyState.SENT)
        party.sent_at = now
        record_event(
            session=session,
            action="party.requested",
            actor="system",
            envelope_id=envelope.id,
            party_id=party.id,
            at=now,
            detail={"routing_order": party.routing_order, "role": party.role.value},
        )
        runtime.notify(session, envelope, "party.requested", party)
        return party
    if all(p.state in (PartyState.COMPLETED, PartyState.NOTIFIED) for p in envelope.parties):
        _set_envelope_state(envelope, EnvelopeState.SEALING, now)
        enqueue_seal(session=session, envelope=envelope)
    return None


def send_envelope(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    actor: str,
    ip: str | None = None,
    via: Mapping[str, str | None] | None = None,
) -> Party:
    """Send a draft: the first acting party is asked to act. Returns that party. A construction
    contract whose consent was withdrawn meanwhile is not sent (``consent.withdrawn``), nor an
    envelope without its amount (``envelope.amount_required``, :func:`core.records.require_amount`).
    ``via`` as for :func:`create_envelope`."""
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    require_consent(
        session=session, contract_type=envelope.contract_type, consent_id=envelope.consent_id
    )
    check_envelope_transition(envelope.state, EnvelopeState.SENT)
    require_amount(envelope)
    check_authentication_means(session=session, envelope=envelope)
    now = utcnow()
    _set_envelope_state(envelope, EnvelopeState.SENT, now)
    envelope.sent_at = now
    record_event(
        session=session,
        action="envelope.sent",
        actor=actor,
        envelope_id=envelope.id,
        ip=ip,
        at=now,
        detail={"via": dict(via or operation_via(session=session, actor=actor))},
    )
    first = _advance(session, runtime, envelope, now)
    assert first is not None  # create_envelope guarantees an acting party
    session.flush()
    return first


def _require_current(party: Party) -> None:
    envelope = party.envelope
    if envelope.state is not EnvelopeState.SENT:
        raise StateError(
            "state.envelope_not_open",
            f"the envelope is {envelope.state.value}; parties act only while it is sent",
            f"この封筒は「{envelope_state_ja(envelope.state)}」のため、操作できません。",
            details={"state": envelope.state.value},
        )
    if party.state is PartyState.WAITING:
        raise StateError(
            "state.not_your_turn",
            f"party {party.routing_order} cannot act before the parties ahead of it",
            "まだ順番が回ってきていません。前の署名者の手続き完了後に操作してください。",
            details={"routing_order": party.routing_order},
        )
    if party.state not in ACTIONABLE_PARTY_STATES:
        raise StateError(
            "state.already_acted",
            f"party {party.routing_order} has already acted ({party.state.value})",
            "この署名依頼は既に処理されています。",
            details={"state": party.state.value},
        )


def check_party_can_act(party: Party) -> None:
    """Raise a ``state.*`` error unless ``party`` is the one whose turn it is and has not acted."""
    _require_current(party)


def record_view(
    *, session: Session, envelope_id: str, party_id: str, ip: str | None = None
) -> Party:
    """The current party opened the documents (first view only is a state change)."""
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    _require_current(party)
    if party.state is PartyState.SENT:
        now = utcnow()
        _set_party_state(party, PartyState.VIEWED)
        party.viewed_at = now
        record_event(
            session=session,
            action="party.viewed",
            actor=party.email,
            envelope_id=envelope_id,
            party_id=party.id,
            ip=ip,
            at=now,
        )
        session.flush()
    return party


def check_party_values(party: Party, values: Mapping[str, str]) -> dict[str, str]:
    """The values :func:`record_approval` would store for ``party``'s fields, or the
    ``envelope.field_*`` error it would raise (so a page can check before asking more)."""
    return _check_values(party, values)


def _check_values(party: Party, values: Mapping[str, str]) -> dict[str, str]:
    """Values for exactly this party's fields (by field id), required ones present."""
    own = {f.id: f for f in party.fields}
    unknown = sorted(set(values) - set(own))
    if unknown:
        raise InputError(
            "envelope.foreign_field",
            f"fields {unknown} do not belong to this party",
            "入力できないテキストボックスが指定されました。",
            details={"fields": unknown},
        )
    cleaned: dict[str, str] = {}
    for field_id, f in own.items():
        value = (values.get(field_id) or "").strip()
        if f.required and not value:
            raise InputError(
                "envelope.field_required",
                f"field {f.label!r} is required",
                f"「{f.label}」を入力してください。",
                details={"field": field_id},
            )
        if len(value) > f.max_length:
            raise InputError(
                "envelope.field_too_long",
                f"field {f.label!r} takes at most {f.max_length} characters",
                f"「{f.label}」は{f.max_length}文字以内で入力してください。",
                details={"field": field_id},
            )
        cleaned[field_id] = value
    return cleaned


def check_auth_method(party: Party, auth_method: str) -> None:
    """Refuse (``envelope.bad_auth_method``) an authentication method the party cannot have
    used: a staff-bound party signs only from the staff pages, any other only by link + code."""
    allowed = STAFF_AUTH_METHODS if party.staff_id is not None else LINK_AUTH_METHODS
    if auth_method not in allowed:
        raise InputError(
            "envelope.bad_auth_method",
            f"party {party.routing_order} cannot have authenticated by {auth_method!r} "
            f"(expected one of {sorted(allowed)})",
            "この署名者は、この方法では署名できません。",
            details={"auth_method": auth_method, "allowed": sorted(allowed)},
        )


def _check_approval(party: Party, values: Mapping[str, str], auth_method: str) -> dict[str, str]:
    """Everything an approval must pass before anything is written; returns the cleaned values."""
    _require_current(party)
    if party.role not in _SIGNING_ROLES:
        raise StateError(
            "state.cc_cannot_act", "a cc party cannot approve", "CC(写し送付先)は承認できません。"
        )
    check_auth_method(party, auth_method)
    cleaned = _check_values(party, values)
    check_party_transition(party.state, PartyState.SIGNING)
    return cleaned


def record_approval(
    *,
    session: Session,
    envelope_id: str,
    party_id: str,
    values: Mapping[str, str],
    auth_method: str,
    ip: str | None = None,
    lease_to: str | None = None,
) -> Party:
    """Record the current party's instruction to sign; exactly once even under concurrent submits.

    Moves the party to ``signing`` and commits. The signature itself is applied by
    :func:`apply_pending_signature`; ``lease_to`` commits its task already leased to that
    worker (an inline caller about to sign it).
    """
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    cleaned = _check_approval(party, values, auth_method)
    now = utcnow()
    _compare_and_set(
        session,
        Party,
        party.id,
        frozenset(s.value for s in ACTIONABLE_PARTY_STATES),
        {
            "state": PartyState.SIGNING.value,
            "approved_at": now,
            "approved_ip": ip,
            "auth_method": auth_method,
        },
        StateError(
            "state.already_acted",
            "this approval was already submitted",
            "この署名依頼は既に処理されています。",
        ),
    )
    for f in party.fields:
        f.value = cleaned[f.id]
    record_event(
        session=session,
        action="party.approved",
        actor=party.email,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        at=now,
        detail={"method": auth_method, "fields": len(cleaned)},
    )
    # The row was changed by the UPDATE above; mirror it on the object without another write.
    set_committed_value(party, "state", PartyState.SIGNING)
    set_committed_value(party, "approved_at", now)
    set_committed_value(party, "approved_ip", ip)
    set_committed_value(party, "auth_method", auth_method)
    # The signature is applied by the signing worker; its task commits with the approval, so
    # an approval the signer was told is complete can never be left unsigned.
    enqueue_signature(session=session, party=party, lease_to=lease_to)
    session.commit()
    return party


def _compare_and_set(
    session: Session,
    model: type[Party] | type[Envelope],
    row_id: str,
    expected: frozenset[str],
    values: dict[str, Any],
    error: StateError,
) -> None:
    """Change one row only if it is still in an ``expected`` state, else roll back and raise.

    This is the once-only guard: of two concurrent attempts, one changes the row and the other
    sees no row changed.
    """
    result = session.execute(
        update(model)
        .where(model.id == row_id, model.state.in_(sorted(expected)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise error


def _signature_field_name(party: Party) -> str:
    return f"kg_sig_{party.routing_order:02d}_{party.id[:8]}"


def apply_pending_signature(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str | None = None,
    party: Party | None = None,
) -> Party:
    """Sign every document for a party in ``signing``; commit the new revisions at once.

    ``party`` is one the caller just read with :func:`get_party` in this session (the worker
    checks its state first), so the envelope graph is not read again; else ``party_id`` is read.
    On a retriable failure (TSA down) the error is recorded on the envelope, committed, and
    re-raised; the party stays in ``signing`` with no document changed.
    """
    if party is None:
        if party_id is None:
            raise TypeError("apply_pending_signature needs party_id or party")
        party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    elif party.envelope_id != envelope_id:
        raise ValueError(f"party {party.id} is not of envelope {envelope_id}")
    return _sign_for_party(session, runtime, party)


def _sign_for_party(session: Session, runtime: Runtime, party: Party) -> Party:
    # The compare-and-set below and the unique (document, seq) of revisions make it safe to
    # work on objects loaded earlier in this session: a concurrent worker's success wins and
    # this one's work is dropped.
    envelope = party.envelope
    check_party_transition(party.state, PartyState.COMPLETED)
    assert party.approved_at is not None
    try:
        new_revisions = _sign_documents(
            runtime, party, party.approved_at, {f.id: f.value or "" for f in party.fields}
        )
    except GatewayError as exc:
        if exc.retriable:
            _record_retriable(session, envelope, exc, party_id=party.id)
        raise
    now = utcnow()
    # A concurrent retry of the same signature loses here; its blobs are never referenced.
    _compare_and_set(
        session,
        Party,
        party.id,
        frozenset({PartyState.SIGNING.value}),
        {"state": PartyState.COMPLETED.value, "completed_at": now},
        StateError(
            "state.already_acted",
            "this signature was already applied",
            "この署名は既に適用されています。",
        ),
    )
    close_task(session=session, key=signature_key(party.id), now=now)
    _record_signature(session, runtime, party, new_revisions, now)
    session.commit()
    return party


def _sign_documents(
    runtime: Runtime, party: Party, approved_at: dt.datetime, values: Mapping[str, str]
) -> list[tuple[Document, DocumentRevision]]:
    """Sign every document for ``party`` with its fields' ``values`` (by field id) and store each
    increment in the blob store (durable, and in the mirror, before any commit references it);
    returns the revisions unattached. Writes nothing to the database."""
    reason = approval_reason(name=party.name, email=party.email, at=approved_at)
    field_name = _signature_field_name(party)
    new_revisions: list[tuple[Document, DocumentRevision]] = []
    for doc in party.envelope.documents:
        by_name = {f.name: values.get(f.id, "") for f in party.fields if f.document_id == doc.id}
        # Decrypted a chunk at a time into one buffer, signed in place there, and only the
        # new revision stored: no copy of the whole document is made or compared.
        current = _read_document_stream(runtime, doc)
        increment = runtime.signing.sign_approval_increment(
            current, signature_field=field_name, reason=reason, values=by_name
        )
        size = current.seek(0, SEEK_END)
        del current  # keep one document's bytes alive at a time
        new_revisions.append(
            (doc, _store_increment(runtime, doc, increment, size=size, reason="signature"))
        )
    return new_revisions


def _record_signature(
    session: Session,
    runtime: Runtime,
    party: Party,
    new_revisions: list[tuple[Document, DocumentRevision]],
    now: dt.datetime,
    *,
    stored: bool = False,
) -> None:
    """After the party's row was moved to ``completed``: attach the new revisions (unless
    ``stored`` already), record the signature and hand the envelope on (in the caller's
    transaction)."""
    envelope = party.envelope
    if not stored:
        for doc, revision in new_revisions:
            doc.revisions.append(revision)
            doc.size = revision.size
            doc.signature_count += 1
    envelope.last_error = None
    set_committed_value(party, "state", PartyState.COMPLETED)
    set_committed_value(party, "completed_at", now)
    record_event(
        session=session,
        action="party.signed",
        actor="system",
        envelope_id=envelope.id,
        party_id=party.id,
        at=now,
        detail={
            "signature_field": _signature_field_name(party),
            "documents": len(envelope.documents),
        },
    )
    _advance(session, runtime, envelope, now)


def _record_retriable(
    session: Session, envelope: Envelope, exc: GatewayError, *, party_id: str | None = None
) -> None:
    session.rollback()
    envelope.last_error = f"{exc.code}: {exc.message_en}"
    record_event(
        session=session,
        action="signing.deferred",
        actor="system",
        envelope_id=envelope.id,
        party_id=party_id,
        detail={"code": exc.code, "message": exc.message_en},
    )
    session.commit()
    log.warning("envelope %s: signing deferred: %s", envelope.id, exc)


def approve(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str,
    values: Mapping[str, str],
    auth_method: str,
    ip: str | None = None,
) -> Party:
    """Record the party's approval and apply it at once (and seal when it was the last one)
    instead of leaving it to the signing worker: for callers without a worker (the CLI's
    one-shot commands, tests).

    The documents are signed first and the increments stored (durably, mirrored); then the
    approval, the signature and the hand-on to the next party commit in one transaction, so
    there is one database commit on the path and no signing task. If signing fails the
    approval is committed on its own with a task for the signing worker (and a retriable error
    recorded on the envelope), then the error is raised, as :func:`record_approval` would.
    """
    inline = f"inline:{secrets.token_hex(4)}"
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    cleaned = _check_approval(party, values, auth_method)
    check_party_transition(PartyState.SIGNING, PartyState.COMPLETED)
    now = utcnow()
    # Signed before anything is written (no lock is held meanwhile); the increments are on disk
    # and in the mirror before the one commit below references them.
    try:
        new_revisions = _sign_documents(runtime, party, now, cleaned)
    except GatewayError as exc:
        # The approval is kept all the same, with its signing task for the worker (which
        # retries a transient fault): the signer's instruction is never lost.
        session.rollback()
        party = record_approval(
            session=session,
            envelope_id=envelope_id,
            party_id=party_id,
            values=values,
            auth_method=auth_method,
            ip=ip,
        )
        if exc.retriable:
            _record_retriable(session, party.envelope, exc, party_id=party.id)
        raise
    # One transaction for the approval and its signature, so no signing task is needed; of
    # two concurrent submits one changes the row, the other's blobs are never referenced. The
    # party, its fields and the new revisions are written by Core statements (one on
    # PostgreSQL), not by the unit of work.
    if not write_approval(
        session,
        party=party,
        now=now,
        ip=ip,
        auth_method=auth_method,
        values=cleaned,
        new_revisions=new_revisions,
    ):
        session.rollback()
        raise StateError(
            "state.already_acted",
            "this approval was already submitted",
            "この署名依頼は既に処理されています。",
        )
    record_event(
        session=session,
        action="party.approved",
        actor=party.email,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        at=now,
        detail={"method": auth_method, "fields": len(cleaned)},
    )
    set_committed_value(party, "approved_at", now)
    set_committed_value(party, "approved_ip", ip)
    set_committed_value(party, "auth_method", auth_method)
    _record_signature(session, runtime, party, new_revisions, now, stored=True)
    session.commit()
    if party.envelope.state is EnvelopeState.SEALING:
        task = claim_task(session=session, key=seal_key(envelope_id), worker=inline)
        if task is None:
            # A signing worker took the seal a moment earlier: wait for it as for a signature.
            return _wait_until_signed(session, party, dt.timedelta(minutes=2))
        try:
            seal_envelope(session=session, runtime=runtime, envelope_id=envelope_id)
        except GatewayError:
            release_leases(session=session, worker=inline, delivery_ids=[task])
            raise
    return party


def _wait_until_signed(session: Session, party: Party, limit: dt.timedelta) -> Party:
    deadline = time.monotonic() + limit.total_seconds()
    while True:
        session.expire_all()
        current = get_party(session=session, envelope_id=party.envelope_id, party_id=party.id)
        busy = (
            current.state is PartyState.SIGNING
            or current.envelope.state is EnvelopeState.SEALING  # the worker seals right after
        )
        if not busy or time.monotonic() > deadline:
            session.rollback()
            return current
        session.rollback()
        time.sleep(0.05)


def decline(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str,
    reason: str,
    ip: str | None = None,
) -> Envelope:
    """The current party declines with a reason; the envelope ends as ``declined``."""
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    _require_current(party)
    reason = multi_line(reason, field="reason", label_ja="却下理由")
    if not reason:
        raise InputError(
            "envelope.decline_reason_required",
            "a decline needs a reason",
            "却下する理由を入力してください。",
        )
    now = utcnow()
    _set_party_state(party, PartyState.DECLINED)
    party.decline_reason = reason
    _set_envelope_state(party.envelope, EnvelopeState.DECLINED, now)
    record_event(
        session=session,
        action="party.declined",
        actor=party.email,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        at=now,
        detail={"reason": reason},
    )
    runtime.notify(session, party.envelope, "envelope.declined", party)
    session.flush()
    return party.envelope


def cancel_envelope(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    actor: str,
    reason: str = "",
    ip: str | None = None,
) -> Envelope:
    """Cancel an envelope before completion (draft or sent), with a reason the parties
    already asked are told (``envelope.cancel_reason_required`` without one)."""
    reason = multi_line(reason, field="reason", label_ja="取消理由")
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    check_envelope_transition(envelope.state, EnvelopeState.CANCELLED)
    if not reason.strip():
        raise InputError(
            "envelope.cancel_reason_required",
            "a cancel needs a reason",
            "取り消す理由を入力してください。",
        )
    now = utcnow()
    _set_envelope_state(envelope, EnvelopeState.CANCELLED, now)
    record_event(
        session=session,
        action="envelope.cancelled",
        actor=actor,
        envelope_id=envelope_id,
        ip=ip,
        at=now,
        detail={"reason": reason},
    )
    runtime.notify(session, envelope, "envelope.cancelled")
    session.flush()
    return envelope


def expire_envelope(*, session: Session, runtime: Runtime, envelope_id: str) -> Envelope:
    """The deadline passed before every party acted."""
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    now = utcnow()
    _set_envelope_state(envelope, EnvelopeState.EXPIRED, now)
    record_event(
        session=session,
        action="envelope.expired",
        actor="system",
        envelope_id=envelope_id,
        at=now,
    )
    runtime.notify(session, envelope, "envelope.expired")
    session.flush()
    return envelope


_METHOD_JA = {
    AUTH_ACCESS_CODE: "メール認証＋アクセスコード",
    AUTH_STAFF: "職員ログイン(署名時にパスワードを再入力)",
    AUTH_STAFF_TOTP: "職員ログイン(署名時にパスワード＋確認コードを再入力)",
}

_ACTION_JA = {
    "envelope.created": "作成",
    "envelope.sent": "送信",
    "party.approved": "承認",
    "party.declined": "却下",
    "envelope.completed": "タイムスタンプ付与・締結",
}


_AUDIT_JA = {
    **_ACTION_JA,
    "envelope.completed": "締結(タイムスタンプ付与)",
    "envelope.cancelled": "取消",
    "envelope.expired": "期限切れ",
    "envelope.deadline_extended": "締切日の変更",
    "party.requested": "署名依頼",
    "party.notified": "写しの通知",
    "party.viewed": "初回閲覧",
    "documents.viewed": "文書の閲覧",
    "document.downloaded": "文書のダウンロード",
    "party.authenticated": "本人確認",
    "party.code_failed": "アクセスコード誤り",
    "party.locked": "URLのロック",
    "party.unlocked": "ロック解除",
    "party.reauth_failed": "署名時の本人確認失敗",
    "party.signed": "電子署名の付与",
    "party.forwarded": "転送",
    "party.resent": "再送",
    "party.reminded": "再通知",
    "party.corrected": "宛先の訂正",
    "party.replaced": "署名者の変更",
    "party.access_code_changed": "アクセスコードの変更",
    "envelope.amends": "変更契約として作成",
    "envelope.copy_requested": "最新文書の案内を送信",
    "envelope.facts_corrected": "検索項目(取引年月日・金額・取引先)の訂正",
    "envelope.updated_from_award": "落札情報の変更を反映",
    "document.retimestamped": "タイムスタンプの更新",
    "retention.purged": "保存期間満了による文書の削除",
    "guarantee.added": "電子保証の登録",
    "guarantee.removed": "電子保証の削除",
    "guarantee.verified": "電子保証の確認",
    "award.released": "落札案件の作成再開",
    "award.dismissed": "落札案件の取り下げ",
    "award.remapped": "落札案件の再マッピング",
    "award.access_code_set": "落札案件のアクセスコード設定",
    "award.change_rejected": "落札情報の変更を拒否",
    "consent.withdrawn": "承諾の撤回",
    "contractor.conflict_resolved": "業者の重複の解消",
    "address_book.add": "アドレス帳に追加",
    "address_book.update": "アドレス帳の変更",
    "address_book.delete": "アドレス帳から削除",
    "address_book.import": "アドレス帳の一括登録",
    "address_book.export": "アドレス帳の出力",
    "api.locked": "APIの利用停止中のアクセス",
    "api.lockout": "APIの利用停止",
    "api_client.networks": "API接続元の変更",
    "blobs.swept": "不要な文書ファイルの削除",
    "login": "ログイン",
    "login.failed": "ログイン失敗",
    "login.locked": "ロック中のログイン",
    "login.lockout": "ログインのロック",
    "login.totp_reused": "使用済みの確認コードによるログイン",
    "settings.changed": "設定の変更",
    "logout": "ログアウト",
    "outbox.retry": "送信の再試行",
    "source.cursor_reset": "取込位置のリセット",
    "staff.add": "職員の追加",
    "staff.update": "職員の変更",
    "staff.import": "職員の一括登録",
    "staff.password_set": "パスワードの設定",
    "staff.sessions_ended": "ログインの強制終了",
    "staff.totp_enabled": "確認コードの設定",
    "staff.totp_disabled": "確認コードの解除",
    "signing.deferred": "署名処理の延期(再試行)",
    "staff.view": "職員の閲覧",
    "staff.download": "職員のダウンロード",
    "staff.download_certificate": "締結証明書のダウンロード",
    "award.envelope_created": "落札情報から作成",
    "link.opened_closed": "終了後のURLアクセス",
    "download.viewed": "ダウンロード画面の表示",
    "certificate.downloaded": "締結証明書のダウンロード",
    "certificate.reissued": "締結証明書の再発行",
}


def action_ja(action: str) -> str:
    """The Japanese label staff see for an audit action (the code itself when none)."""
    return _AUDIT_JA.get(action, action)


def auth_method_ja(method: str | None) -> str:
    """The Japanese label for how a party was authenticated."""
    if not method:
        return ""
    return _METHOD_JA.get(method, method)


def seal_envelope(*, session: Session, runtime: Runtime, envelope_id: str) -> Envelope:
    """Add validation data and a document timestamp to every document; issue the certificate.

    Retriable failures are recorded and re-raised with the envelope left in ``sealing``.
    """
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    check_envelope_transition(envelope.state, EnvelopeState.COMPLETED)
    sealed: list[tuple[Document, DocumentRevision]] = []
    expiries: dict[str, dt.datetime | None] = {}
    checks: list[DocumentCheck] = []
    try:
        for doc in envelope.documents:
            current = read_document(runtime=runtime, document=doc)
            data = runtime.signing.seal(current)
            sealed.append(
                (
                    doc,
                    store_revision(
                        runtime=runtime, document=doc, previous=current, new=data, reason="seal"
                    ),
                )
            )
            expiries[doc.id] = runtime.signing.timestamp_expiry(data)
            # hashed and verified now, for the certificate's document list and status line
            checks.append(check_document(runtime.signing, name=doc.name, data=data))
            del current, data
        now = utcnow()
        # Signed and timestamped like the documents, before the envelope row is written: the
        # TSA round trips hold no lock (on SQLite, the database's write lock).
        certificate = issue_certificate(
            session=session,
            runtime=runtime,
            envelope=envelope,
            now=now,
            checks=checks,
            completing=True,
        )
    except GatewayError as exc:
        if exc.retriable:
            _record_retriable(session, envelope, exc)
        raise
    _compare_and_set(
        session,
        Envelope,
        envelope.id,
        frozenset({EnvelopeState.SEALING.value}),
        {
            "state": EnvelopeState.COMPLETED.value,
            "completed_at": now,
            "updated_at": now,
            "last_error": None,
        },
        StateError(
            "state.already_sealed",
            "this envelope was already sealed",
            "この封筒は既に締結済みです。",
        ),
    )
    for doc, revision in sealed:
        doc.revisions.append(revision)
        doc.size = revision.size
        doc.timestamp_expires_at = expiries[doc.id]
    # 電帳法: every concluded envelope carries its search keys, and they are chained
    filled = fill_record_facts(envelope=envelope, concluded_at=now, buyer_name=runtime.buyer_name)
    record_event(
        session=session,
        action="envelope.completed",
        actor="system",
        envelope_id=envelope.id,
        at=now,
        detail={"facts": record_facts(envelope), "facts_filled": filled},
    )
    close_task(session=session, key=seal_key(envelope.id), now=now)
    set_committed_value(envelope, "state", EnvelopeState.COMPLETED)
    set_committed_value(envelope, "completed_at", now)
    set_committed_value(envelope, "updated_at", now)
    set_committed_value(envelope, "last_error", None)
    session.flush()
    original = original_of(session=session, envelope_id=envelope.id)
    reissue = (
        original is not None
        and original.state is EnvelopeState.COMPLETED
        and original.documents_purged_at is None  # nothing of a purged original is kept
    )
    envelope.certificate_blob_id = runtime.blobs.put(certificate)
    if reissue:
        assert original is not None
        # The original's certificate is issued again so that it names this amendment too (it
        # lists concluded amendments only, so this runs after the state change; amendments are
        # rare). A TSA outage here leaves the envelope sealing, as above.
        try:
            original_checks = [
                check_document(runtime.signing, name=name, data=data)
                for name, data in current_documents(runtime=runtime, envelope=original)
            ]
            reissued = issue_certificate(
                session=session, runtime=runtime, envelope=original, now=now, checks=original_checks
            )
        except GatewayError as exc:
            if exc.retriable:
                _record_retriable(session, envelope, exc)
            raise
        original.certificate_blob_id = runtime.blobs.put(reissued)
        record_event(
            session=session,
            action="certificate.reissued",
            actor="system",
            envelope_id=original.id,
            at=now,
            detail={"amended_by": envelope.id},
        )
    runtime.notify(session, envelope, "envelope.completed")
    session.commit()
    return envelope


def current_documents(*, runtime: Runtime, envelope: Envelope) -> list[tuple[str, bytes]]:
    """(name, newest revision bytes) of every document, in order."""
    return [(doc.name, read_document(runtime=runtime, document=doc)) for doc in envelope.documents]


def check_documents_kept(envelope: Envelope) -> None:
    """Raise ``document.purged`` once the retention purge (:mod:`core.retention`) removed the
    envelope's documents: every reader answers that instead of a missing blob."""
    purged_at = envelope.documents_purged_at
    if purged_at is None:
        return
    when = purged_at.astimezone(JST).strftime("%Y年%m月%d日 %H:%M")
    raise DocumentError(
        "document.purged",
        f"the documents of envelope {envelope.id} were deleted at the end of their retention "
        f"period ({purged_at.isoformat()})",
        f"保存期間の満了により文書は削除されました（{when} JST）",
        disposition=Disposition.FATAL,
        details={"documents_purged_at": purged_at.astimezone(JST).isoformat()},
    )


def read_document(*, runtime: Runtime, document: Document) -> bytes:
    """The newest revision of a document: its last full revision plus every append after it."""
    check_documents_kept(document.envelope)
    revisions = document.revisions
    start = max(i for i, rev in enumerate(revisions) if rev.kind == "full")
    parts = [runtime.blobs.get(rev.blob_id) for rev in revisions[start:]]
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_document_stream(runtime: Runtime, document: Document) -> BytesIO:
    """:func:`read_document` into one writable buffer, decrypted a chunk at a time."""
    check_documents_kept(document.envelope)
    revisions = document.revisions
    start = max(i for i, rev in enumerate(revisions) if rev.kind == "full")
    out = BytesIO()
    for rev in revisions[start:]:
        runtime.blobs.read_into(rev.blob_id, out)
    return out


def _store_increment(
    runtime: Runtime, document: Document, increment: bytes, *, size: int, reason: str
) -> DocumentRevision:
    """Store an incremental update (the bytes a signer appended) as an ``append`` revision;
    returned unattached, for the caller's transaction."""
    seq = document.revisions[-1].seq + 1
    blob_id = runtime.blobs.put(increment)
    return DocumentRevision(seq=seq, kind="append", blob_id=blob_id, size=size, reason=reason)


def store_revision(
    *, runtime: Runtime, document: Document, previous: bytes, new: bytes, reason: str
) -> DocumentRevision:
    """Store ``new`` as an append to ``previous`` when it is one (an incremental update), else
    whole. The revision is returned unattached; the caller adds it in its transaction."""
    seq = document.revisions[-1].seq + 1
    if len(new) > len(previous) and new.startswith(previous):
        blob_id, kind = runtime.blobs.put(new[len(previous) :]), "append"
    else:
        blob_id, kind = runtime.blobs.put(new), "full"
    return DocumentRevision(seq=seq, kind=kind, blob_id=blob_id, size=len(new), reason=reason)


def completion_certificate(*, runtime: Runtime, envelope: Envelope) -> bytes:
    """The completion certificate PDF of a completed envelope."""
    if envelope.state is not EnvelopeState.COMPLETED or envelope.certificate_blob_id is None:
        raise StateError(
            "state.not_completed",
            "the envelope is not completed yet",
            "締結が完了していないため、締結証明書はまだ発行できません。",
        )
    check_documents_kept(envelope)
    return runtime.blobs.get(envelope.certificate_blob_id)
