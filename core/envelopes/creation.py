"""Where an award (or an API or compose-page request) becomes an envelope: the input
checks (parties, documents, text boxes, limits) and :func:`create_envelope`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.envelopes.active_content import check_active_content
from core.envelopes.certificate_facts import operation_via
from core.errors import DocumentError, InputError, StateError
from core.intake.consent import check_contract_type, require_consent
from core.model import AccessCode, Document, DocumentRevision, Envelope, Field, Party, Staff, utcnow
from core.records.audit import record_event
from core.runtime import MB, Limits, Runtime
from core.signing import FieldBox, InspectedDocument, PageArea, PdfInfo
from core.states import EnvelopeState, PartyRole, PartyState
from core.text import one_line
from core.text_boxes import check_text_box
from core.timezone import JST

__all__ = [
    "SIGNING_ROLES",
    "DocumentInput",
    "FieldInput",
    "PartyInput",
    "check_authentication_means",
    "check_documents",
    "check_parties",
    "check_staff_party",
    "create_envelope",
    "discard_envelope_blobs",
]


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


SIGNING_ROLES = frozenset({PartyRole.APPROVER, PartyRole.SIGNER})
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


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
    if not any(p.role in SIGNING_ROLES for p in parties):
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
        if party.role not in SIGNING_ROLES:
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


def check_authentication_means(*, session: Session, envelope: Envelope) -> None:
    """Refuse (``envelope.party_cannot_authenticate``) an envelope in which an approver or
    signer has no way to authenticate: neither a staff account that can log in nor an access
    code. Otherwise its mailed link would refuse every code and lock."""
    for party in envelope.parties:
        if party.role not in SIGNING_ROLES:
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
        if parties[f.party].role not in SIGNING_ROLES:
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


@dataclass(frozen=True)
class _CheckedUploads:
    """The uploads once every check has passed but the render check, which runs meanwhile."""

    documents: list[DocumentInput]  # after the active-content check (stripped when allowed)
    inspected: list[InspectedDocument]
    rendering: Future[None]
    accounts: list[Staff | None]  # the staff account of each party bound to one


def _one_line_inputs(
    documents: Sequence[DocumentInput],
    parties: Sequence[PartyInput],
    fields: Sequence[FieldInput],
) -> tuple[list[DocumentInput], list[PartyInput], list[FieldInput]]:
    """The documents', parties' and text boxes' texts each on one line (control characters
    refused): a line break in a name would break the mails and downloads made from it."""
    return (
        [
            DocumentInput(
                name=one_line(d.name, field=f"documents.{i}.name", label_ja="文書名"),
                data=d.data,
            )
            for i, d in enumerate(documents)
        ],
        [
            replace(
                p,
                name=one_line(p.name, field=f"parties.{i}.name", label_ja="氏名"),
                email=one_line(p.email, field=f"parties.{i}.email", label_ja="メールアドレス"),
                company=_optional_line(p.company, f"parties.{i}.company", "会社名"),
            )
            for i, p in enumerate(parties)
        ],
        [
            replace(f, label=one_line(f.label, field=f"fields.{i}.label", label_ja="項目名"))
            for i, f in enumerate(fields)
        ],
    )


def _check_uploads(
    session: Session,
    runtime: Runtime,
    documents: Sequence[DocumentInput],
    parties: Sequence[PartyInput],
    fields: Sequence[FieldInput],
) -> _CheckedUploads:
    """Limits, routing, each upload read by the engine and freed of active content, the render
    check started, the text boxes and the staff parties checked. A refusal to render comes
    first, as when it was checked before the others."""
    limits = runtime.limits
    _check_limits(documents, limits)
    _check_parties(parties, limits)
    inspected = [runtime.signing.inspect_upload(doc.data) for doc in documents]
    # Before the documents are stored or stamped: the first signature covers no script.
    documents = [
        DocumentInput(
            d.name, check_active_content(d.data, name=d.name, mode=limits.pdf_active_content)
        )
        for d in documents
    ]
    rendering = _check_renderable_later(runtime, documents, inspected)
    try:
        _check_fields(fields, parties, [i.info.pages for i in inspected])
        accounts = _staff_accounts(session, parties)
    except BaseException:
        _rendered(rendering)
        raise
    return _CheckedUploads(list(documents), inspected, rendering, accounts)


def _party_rows(parties: Sequence[PartyInput], accounts: Sequence[Staff | None]) -> list[Party]:
    """The parties in routing order; one bound to a staff account takes that account's e-mail."""
    return [
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


def _field_rows(
    fields: Sequence[FieldInput], doc_ids: Sequence[str], party_rows: Sequence[Party]
) -> list[Field]:
    """The text boxes, named ``kg_text_N`` in the order given."""
    return [
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


@dataclass(frozen=True)
class _PreparedDocument:
    """One prepared document as it is stored: its size and the blob of revision 2."""

    size: int
    blob: bytes  # what preparing appended to the upload when it appended, else the whole file
    append: bool


def _as_stored(upload: bytes, prepared: bytes) -> _PreparedDocument:
    # The upload is kept as revision 1; preparing appends to it, so the prepared file costs
    # one small append instead of a second full copy (on disk, and in memory until the
    # blobs are written: the whole prepared file is dropped here).
    append = len(prepared) > len(upload) and prepared.startswith(upload)
    return _PreparedDocument(
        size=len(prepared),
        blob=prepared[len(upload) :] if append else prepared,
        append=append,
    )


def _prepare_documents(
    runtime: Runtime,
    envelope: Envelope,
    checked: _CheckedUploads,
    field_rows: Sequence[Field],
    doc_ids: Sequence[str],
) -> list[_PreparedDocument]:
    """Each document with the certificate ID stamp and its empty text fields, before anything
    is stored, so a refused document leaves neither rows nor blobs behind."""
    try:
        return [
            _as_stored(
                doc.data,
                runtime.signing.prepare(
                    doc.data,
                    certificate_id=envelope.certificate_id,
                    fields=[
                        FieldBox(name=f.name, page=f.page, rect=(f.x1, f.y1, f.x2, f.y2))
                        for f in field_rows
                        if f.document_id == doc_ids[position]
                    ],
                    inspected=checked.inspected[position],
                ),
            )
            for position, doc in enumerate(checked.documents)
        ]
    except BaseException:
        _rendered(checked.rendering)
        raise


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
    :mod:`core.intake.consent`). Nothing is added to the session when any input is refused.
    ``via`` says how it was created (:func:`core.envelopes.certificate_facts.operation_via`; read from
    ``actor`` when not given) for the completion certificate.
    """
    # Every text on one line, control characters refused, before anything is stored.
    title = one_line(title, field="title", label_ja="件名")
    creator = one_line(creator, field="creator", label_ja="文書作成者")
    creator_email = _optional_line(creator_email, "sender_email", "送信者メールアドレス")
    management_number = _optional_line(management_number, "management_number", "管理番号")
    counterparty = _optional_line(counterparty, "counterparty", "契約相手方")
    department = _optional_line(department, "department", "所属")
    documents, parties, fields = _one_line_inputs(documents, parties, fields)
    check_contract_type(contract_type)
    require_consent(session=session, contract_type=contract_type, consent_id=consent_id)
    if not title:
        raise InputError(
            "envelope.no_title", "an envelope needs a title", "件名を入力してください。"
        )
    checked = _check_uploads(session, runtime, documents, parties, fields)

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
    party_rows = _party_rows(parties, checked.accounts)
    doc_ids = [secrets.token_hex(16) for _ in checked.documents]
    field_rows = _field_rows(fields, doc_ids, party_rows)
    prepared = _prepare_documents(runtime, envelope, checked, field_rows, doc_ids)
    try:
        try:
            infos = [i.info for i in checked.inspected]
            _store_documents(runtime, envelope, checked.documents, infos, prepared, doc_ids, now)
        finally:
            _rendered(checked.rendering)  # a refusal wins over a failed store
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
                "documents": [d.name for d in checked.documents],
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
    prepared: Sequence[_PreparedDocument],
    doc_ids: Sequence[str],
    now: dt.datetime,
) -> None:
    # Every blob is written at once: one create waits for one round of fsyncs, not one per blob.
    blob_ids = runtime.blobs.put_many(
        [doc.data for doc in documents] + [done.blob for done in prepared]
    )
    for position, (doc, info, done) in enumerate(zip(documents, infos, prepared, strict=True)):
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
            size=done.size,
            page_count=info.page_count,
            revisions=[original],
        )
        envelope.documents.append(document)
        document.revisions.append(
            DocumentRevision(
                seq=2,
                kind="append" if done.append else "full",
                blob_id=blob_ids[len(documents) + position],
                size=done.size,
                reason="prepared",
                created_at=now,
            )
        )
