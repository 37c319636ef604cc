"""Where an award enters: awards from a mapping into the database (idempotent on
source + award id), waiting for the contractor's address and consent, then released
into an envelope (:mod:`core.envelopes.creation`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from core.drafts import ContractorRef, DocumentRef, EnvelopeDraft, LineError
from core.envelopes.creation import (
    DocumentInput,
    FieldInput,
    PartyInput,
    check_documents,
    create_envelope,
)
from core.envelopes.lifecycle import send_envelope
from core.envelopes.links import set_access_code
from core.errors import (
    DocumentError,
    GatewayError,
    InputError,
    NotFoundError,
    RecordError,
    StateError,
)
from core.intake.consent import CONSTRUCTION, has_withdrawn
from core.intake.contractors import (
    ContractorDirectory,
    choose_request,
    find_usage_request,
    requests_by_contractor,
)
from core.intake.policy import IntakePolicy
from core.model import (
    AccessCode,
    Award,
    AwardDocument,
    AwardState,
    Contractor,
    ContractorConflict,
    Envelope,
    UsageRequest,
    utcnow,
)
from core.records.audit import record_event
from core.runtime import Runtime
from core.states import EnvelopeState, PartyRole

__all__ = [
    "AwardItem",
    "IntakeCounts",
    "WaitingReason",
    "amount_text",
    "award_state_ja",
    "compact_record",
    "count_awards",
    "dismiss_award",
    "get_award",
    "intake_awards",
    "list_awards",
    "release_award",
    "release_waiting",
    "remap_award",
    "restore_record",
    "set_award_access_code",
    "waiting_reason",
]

Fetch = Callable[[DocumentRef], bytes]

AWARD_STATE_JA = {
    AwardState.WAITING_USAGE_REQUEST: "利用申出待ち",
    AwardState.WAITING_DOCUMENTS: "契約書ファイル待ち",
    AwardState.DRAFTED: "封筒作成済み(下書き)",
    AwardState.SENT: "送信済み",
    AwardState.CHANGED_AFTER_SEND: "送信後に落札情報が変更(要確認)",
    AwardState.WAITING_CONTRACTOR: "受注者の特定待ち",
    AwardState.CONTRACTOR_CONFLICT: "受注者の確認待ち(保留)",
    AwardState.DISMISSED: "対象外(職員が除外)",
    AwardState.WAITING_SIGNER: "署名者の連絡先待ち",
    AwardState.WAITING_AMOUNT: "契約金額待ち",
    AwardState.WAITING_ACCESS_CODE: "アクセスコード未設定",
}
# States a later run (or a usage request arriving) may move on by itself.
WAITING_STATES = (
    AwardState.WAITING_USAGE_REQUEST,
    AwardState.WAITING_DOCUMENTS,
    AwardState.WAITING_CONTRACTOR,
    AwardState.WAITING_SIGNER,
)
# Everything that has no envelope yet and is not dismissed: what staff see as "waiting".
PENDING_STATES = (
    *WAITING_STATES,
    AwardState.WAITING_AMOUNT,
    AwardState.WAITING_ACCESS_CODE,
    AwardState.CONTRACTOR_CONFLICT,
    AwardState.CHANGED_AFTER_SEND,
)


def award_state_ja(state: AwardState) -> str:
    """The Japanese label staff see for an award state."""
    return AWARD_STATE_JA[state]


@dataclass
class IntakeCounts:
    """What one batch (or a whole run) did."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    waiting: int = 0
    released: int = 0
    conflicts: int = 0
    errors: list[LineError] = field(default_factory=list)

    def add(self, other: IntakeCounts) -> None:
        """Add ``other``'s counts to these."""
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.waiting += other.waiting
        self.released += other.released
        self.conflicts += other.conflicts
        self.errors.extend(other.errors)


@dataclass(frozen=True)
class AwardItem:
    """One mapped award, where it came from, and the source record it was mapped from (secrets
    masked; kept on the award so staff can re-map it)."""

    draft: EnvelopeDraft
    file: str | None = None
    line: int | None = None
    path: str | None = None
    record: Mapping[str, Any] | None = None


# An attachment kept as an award document is stored in the record by its SHA-256 only.
_DOCUMENT_REF = "$award_document_sha256"
_LONG_TEXT = 4096


def compact_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as stored on the award: attachments (bytes, or long base64 text of a PDF)
    replaced by their SHA-256, since the award keeps their bytes as its documents."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        data: bytes | None = None
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str) and len(value) > _LONG_TEXT:
            try:
                data = base64.b64decode(value, validate=True)
            except ValueError:
                data = None
            if data is not None and not data.startswith(b"%PDF"):
                data = None  # long text that merely decodes: kept as it is
        out[key] = {_DOCUMENT_REF: hashlib.sha256(data).hexdigest()} if data else value
    return out


def restore_record(*, award: Award, blobs: Any) -> dict[str, Any] | None:
    """The stored record with each attachment put back (as base64, which mappings read as an
    attachment) from the award's documents; None when the award kept no record."""
    if award.record is None:
        return None
    by_sha = {d.sha256: d.blob_id for d in award.documents}
    out: dict[str, Any] = {}
    for key, value in award.record.items():
        if isinstance(value, dict) and _DOCUMENT_REF in value:
            blob_id = by_sha.get(str(value[_DOCUMENT_REF]))
            out[key] = base64.b64encode(blobs.get(blob_id)).decode("ascii") if blob_id else None
        else:
            out[key] = value
    return out


# --- awards -----------------------------------------------------------------------------------


def _deadlines(draft: EnvelopeDraft, policy: IntakePolicy) -> tuple[dt.date | None, dt.date | None]:
    if draft.award_date is None:
        return None, draft.deadline
    usage = policy.calendar.add_business_days(draft.award_date, policy.usage_request_business_days)
    signing = draft.deadline or policy.calendar.add_business_days(
        draft.award_date, policy.signing_business_days
    )
    return usage, signing


def _apply_draft(award: Award, draft: EnvelopeDraft, item: AwardItem, policy: IntakePolicy) -> None:
    award.title = draft.title[:300]
    award.amount = draft.amount
    award.award_date = draft.award_date
    award.transaction_date = draft.transaction_date
    award.department = draft.department
    award.counterparty = (draft.contractor.name or "")[:200] or None
    award.corporate_number = draft.contractor.corporate_number
    award.draft = draft.as_json()
    award.fingerprint = draft.fingerprint()
    award.usage_request_due, award.signing_due = _deadlines(draft, policy)
    award.file, award.line = item.file, item.line
    if item.record is not None:
        award.record = compact_record(item.record)
    award.updated_at = utcnow()


def _line_error(
    source: str, item: AwardItem, exc: GatewayError, field_name: str | None = None
) -> LineError:
    return LineError(
        source=source,
        file=item.file,
        line=item.line,
        path=item.path,
        field=field_name,
        code=exc.code,
        reason=exc.message_en,
        reason_ja=exc.message_ja,
    )


def _stage_documents(
    session: Session,
    runtime: Runtime,
    award: Award,
    draft: EnvelopeDraft,
    fetch: Fetch,
    refused: list[DocumentError] | None = None,
) -> str | None:
    """Fetch and keep every document of the draft; the reason when a required one is missing
    or refused. A document the envelope would refuse (not a PDF, damaged, a Flate bomb, pages
    that cannot be rendered) is checked before anything is stored, and never stored: it is
    added to ``refused`` and the award waits for a better one."""
    fetched: list[tuple[Any, bytes]] = []
    missing: str | None = None
    for ref in draft.documents:
        try:
            data = ref.data if ref.data is not None else fetch(ref)
        except RecordError as exc:
            if ref.required:
                missing = missing or f"{ref.name}: {exc.message_ja}"
            continue
        try:
            check_documents(runtime=runtime, documents=[DocumentInput(ref.name, data)])
        except DocumentError as exc:
            if exc.retriable:
                raise
            missing = missing or f"{ref.name}: {exc.message_ja}"
            if refused is not None:
                refused.append(exc)
            continue
        fetched.append((ref, data))
    if award.documents:
        award.documents.clear()
        session.flush()  # the old rows go before new ones take their positions
    for position, (ref, data) in enumerate(fetched):
        award.documents.append(
            AwardDocument(
                position=position,
                name=ref.name,
                origin=ref.path or "attachment",
                blob_id=runtime.blobs.put(data),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
            )
        )
    if not award.documents and missing is None:
        missing = "文書がありません。"
    return missing


def _report_refused(
    counts: IntakeCounts, source: str, item: AwardItem, refused: list[DocumentError]
) -> None:
    for exc in refused:
        counts.errors.append(
            _line_error(
                source,
                item,
                RecordError(exc.code, exc.message_en, exc.message_ja, details=exc.details),
                "documents",
            )
        )


def intake_awards(
    *,
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    source: str,
    items: Sequence[AwardItem],
    fetch: Fetch,
    run_id: int | None = None,
    directory: ContractorDirectory | None = None,
) -> IntakeCounts:
    """Take in one batch of mapped awards (the caller commits). Envelopes are made for awards
    that are ready; the rest wait."""
    counts = IntakeCounts()
    directory = directory or ContractorDirectory()
    reported = directory.conflicts
    ids = [item.draft.award_id for item in items]
    existing: dict[str, Award] = {}
    for start in range(0, len(ids), 500):
        for row in session.scalars(
            select(Award)
            .where(Award.source == source, Award.award_id.in_(ids[start : start + 500]))
            .options(selectinload(Award.documents))
        ):
            existing[row.award_id] = row
    directory.prefetch(session, [item.draft.contractor for item in items])
    requests = requests_by_contractor(
        session,
        {cid for item in items if (cid := directory.find_id(session, item.draft.contractor))},
    )
    seen: set[str] = set()
    for item in items:
        draft = item.draft
        if draft.award_id in seen:
            counts.errors.append(
                _line_error(
                    source,
                    item,
                    RecordError(
                        "intake.duplicate_award",
                        f"award {draft.award_id} appears twice in this run; the first was kept",
                        f"落札番号 {draft.award_id} が重複しています(先の行を採用しました)。",
                    ),
                    "award.id",
                )
            )
            continue
        seen.add(draft.award_id)
        award = existing.get(draft.award_id)
        try:
            if award is None:
                _create_award(
                    session, runtime, policy, source, item, fetch, run_id, directory, counts,
                    requests,
                )  # fmt: skip
            elif award.state in (AwardState.DISMISSED, AwardState.CONTRACTOR_CONFLICT):
                counts.unchanged += 1  # staff decide these; a source never moves them on
            elif award.fingerprint == draft.fingerprint():
                counts.unchanged += 1
                if award.state in WAITING_STATES:
                    award.last_run_id = run_id  # tried by this run: not again at its end
                    _release(session, runtime, policy, award, fetch, counts, requests)
            else:
                _update_award(
                    session, runtime, policy, award, item, fetch, run_id, directory, counts,
                    requests,
                )  # fmt: skip
        except RecordError as exc:
            counts.errors.append(_line_error(source, item, exc))
    counts.conflicts += directory.conflicts - reported
    return counts


def _create_award(
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    source: str,
    item: AwardItem,
    fetch: Fetch,
    run_id: int | None,
    directory: ContractorDirectory,
    counts: IntakeCounts,
    requests: dict[str, list[UsageRequest]] | None = None,
) -> None:
    draft = item.draft
    found = directory.identify(session, draft.contractor, source=source, award_id=draft.award_id)
    contractor = found.contractor
    if contractor is not None and requests is not None and contractor.id not in requests:
        # Unknown to the batch's one query: a contractor created just now has no request.
        requests[contractor.id] = (
            []
            if contractor.id in directory.created
            else list(
                session.scalars(
                    select(UsageRequest).where(
                        UsageRequest.contractor_id == contractor.id,
                        UsageRequest.withdrawn_at.is_(None),
                    )
                )
            )
        )
    now = utcnow()
    award = Award(
        source=source,
        award_id=draft.award_id[:100],
        state=AwardState.WAITING_USAGE_REQUEST,
        contractor_id=contractor.id if contractor is not None else None,
        last_run_id=run_id,
        created_at=now,
    )
    _apply_draft(award, draft, item, policy)
    award.documents = []
    session.add(award)
    if contractor is None:
        award.note = found.note
    refused: list[DocumentError] = []
    missing = _stage_documents(session, runtime, award, draft, fetch, refused)
    _report_refused(counts, source, item, refused)
    counts.created += 1
    if missing is not None:
        award.state = AwardState.WAITING_DOCUMENTS
        award.note = missing
        counts.waiting += 1
        return
    _release(session, runtime, policy, award, fetch, counts, requests)


def _scalar_change_only(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return all(old.get(k) == new.get(k) for k in ("documents", "parties", "fields", "contractor"))


def _update_award(
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    award: Award,
    item: AwardItem,
    fetch: Fetch,
    run_id: int | None,
    directory: ContractorDirectory,
    counts: IntakeCounts,
    requests: dict[str, list[UsageRequest]] | None = None,
) -> None:
    draft = item.draft
    envelope = session.get(Envelope, award.envelope_id) if award.envelope_id else None
    if envelope is not None and envelope.state is not EnvelopeState.DRAFT:
        # Never touch what the contractor may already be reading: keep the change for staff.
        if award.rejected_change != draft.as_json():
            award.rejected_change = draft.as_json()
            award.state = AwardState.CHANGED_AFTER_SEND
            award.note = (
                f"封筒の送信後に落札情報が変更されました(封筒の状態: {envelope.state.value})。"
                "変更は反映していません。"
            )
            award.last_run_id = run_id
            award.updated_at = utcnow()
            record_event(
                session=session,
                action="award.change_rejected",
                actor="intake",
                envelope_id=envelope.id,
                detail={"source": award.source, "award_id": award.award_id},
            )
        counts.conflicts += 1
        return
    old = award.draft
    _apply_draft(award, draft, item, policy)
    award.last_run_id = run_id
    award.rejected_change = None
    new = award.draft
    if old.get("contractor") != new.get("contractor") or award.contractor_id is None:
        # A contractor staff assigned by hand stays while the record names the same company.
        found = directory.identify(
            session, draft.contractor, source=award.source, award_id=award.award_id
        )
        award.contractor_id = found.contractor.id if found.contractor is not None else None
        if found.contractor is None:
            award.note = found.note
    counts.updated += 1
    if envelope is not None and _scalar_change_only(old, new):
        envelope.title = award.title
        envelope.amount = award.amount
        envelope.counterparty = award.counterparty
        envelope.transaction_date = award.transaction_date
        envelope.deadline = award.signing_due
        envelope.updated_at = utcnow()
        record_event(
            session=session,
            action="envelope.updated_from_award",
            actor="intake",
            envelope_id=envelope.id,
            detail={"source": award.source, "award_id": award.award_id},
        )
        return
    award.state = AwardState.WAITING_USAGE_REQUEST
    if old.get("documents") != new.get("documents") or not award.documents:
        refused: list[DocumentError] = []
        missing = _stage_documents(session, runtime, award, draft, fetch, refused)
        _report_refused(counts, award.source, item, refused)
        if missing is not None:
            award.state = AwardState.WAITING_DOCUMENTS
            award.note = missing
    if envelope is not None:
        # Documents, parties or fields changed: the draft is replaced by a new one.
        from core.envelopes.lifecycle import cancel_envelope

        cancel_envelope(
            session=session,
            runtime=runtime,
            envelope_id=envelope.id,
            actor="intake",
            reason="落札情報の更新により作り直しました",
        )
        award.envelope_id = None
    if award.state is AwardState.WAITING_DOCUMENTS:
        counts.waiting += 1
        return
    _release(session, runtime, policy, award, fetch, counts, requests)


def _release(
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    award: Award,
    fetch: Fetch | None,
    counts: IntakeCounts,
    requests: dict[str, list[UsageRequest]] | None = None,
) -> None:
    """Make the award's envelope when it is ready; otherwise record what it waits for.
    ``requests`` holds the usage requests of contractors already looked up in one query."""
    if award.state is AwardState.WAITING_DOCUMENTS:
        if fetch is None:
            counts.waiting += 1
            return
        draft = _draft_from_json(award.draft)
        missing = _stage_documents(session, runtime, award, draft, fetch)
        if missing is not None:
            award.note = missing
            counts.waiting += 1
            return
        award.state = AwardState.WAITING_USAGE_REQUEST
    if award.contractor_id is None:
        award.state = AwardState.WAITING_CONTRACTOR
        award.note = award.note or "受注者を特定できません(法人番号・業者番号がありません)。"
        counts.waiting += 1
        return
    if award.amount is None:
        # Nothing at completion can supply the amount (records-law search needs it): the
        # mapping must give it; the award waits for a corrected record or a re-map.
        award.state = AwardState.WAITING_AMOUNT
        award.note = "取込レコードに契約金額がありません(envelope.amount_required)。"
        counts.waiting += 1
        return
    contract_type = award.draft.get("contract_type") or CONSTRUCTION
    signer_from = (
        "usage_request"
        if contract_type == CONSTRUCTION
        else award.draft.get("signer_from") or "usage_request"
    )
    if has_withdrawn(session=session, contractor_id=award.contractor_id):
        award.state = AwardState.WAITING_USAGE_REQUEST
        award.note = "受注者が電子契約の承諾を撤回しています(新しい封筒は作成しません)。"
        counts.waiting += 1
        return
    request: UsageRequest | None = None
    signer: tuple[str, str, str | None]
    if signer_from == "usage_request":
        if requests is not None and award.contractor_id in requests:
            request = choose_request(requests[award.contractor_id], award.award_id)
        else:
            request = find_usage_request(
                session=session, contractor_id=award.contractor_id, award_ref=award.award_id
            )
        if request is None:
            award.state = AwardState.WAITING_USAGE_REQUEST
            award.note = "受注者の電子契約利用申出書(承諾書)がまだ届いていません。"
            counts.waiting += 1
            return
        name = request.signer_name
        if request.signer_title:
            name = f"{request.signer_title} {request.signer_name}"
        signer = (name, request.signer_email, request.access_code_hash)
    elif signer_from == "registry":
        contractor = session.get(Contractor, award.contractor_id)
        if contractor is None or not contractor.email:
            award.state = AwardState.WAITING_SIGNER
            award.note = "入札参加資格者名簿に受注者の登録メールアドレスがありません。"
            counts.waiting += 1
            return
        signer = (f"{contractor.name} ご担当者", contractor.email, None)
    else:  # the mapping named the signer on the contractor party
        party = next(p for p in award.draft.get("parties", []) if p.get("source") == "contractor")
        name = party.get("name") or f"{award.counterparty or ''} ご担当者".strip()
        if party.get("title"):
            name = f"{party['title']} {name}"
        signer = (name, party["email"], None)
    try:
        with session.begin_nested():
            envelope = _make_envelope(
                session, runtime, policy, award, request, signer, contract_type
            )
    except IntegrityError as exc:
        raise RecordError(
            "intake.duplicate_management_number",
            f"award {award.award_id}: its management number is already used",
            f"落札番号 {award.award_id}: 管理番号が他の封筒と重複しています。",
        ) from exc
    except GatewayError as exc:
        if exc.retriable:
            raise
        award.note = f"{exc.code}: {exc.message_ja}"
        counts.waiting += 1
        raise RecordError(exc.code, exc.message_en, exc.message_ja, details=exc.details) from exc
    award.envelope_id = envelope.id
    award.usage_request_id = request.id if request is not None else None
    if envelope.state is EnvelopeState.SENT:
        award.state, award.note = AwardState.SENT, None
    elif signer[2] is not None:
        award.state, award.note = AwardState.DRAFTED, None
    else:
        # A registry address or a mapping names no access code, and a party that cannot
        # authenticate is never sent to: the award waits, visibly, for staff to set one.
        award.state = AwardState.WAITING_ACCESS_CODE
        award.note = (
            f"アクセスコード未設定: 受注者の署名者 {signer[1]} にアクセスコードがありません。"
        )
        counts.waiting += 1
        return
    counts.released += 1


def _draft_from_json(data: Mapping[str, Any]) -> EnvelopeDraft:
    contractor = data.get("contractor") or {}
    return EnvelopeDraft(
        award_id=str(data.get("award_id")),
        title=str(data.get("title")),
        contractor=ContractorRef(**{k: contractor.get(k) for k in ("name", "corporate_number", "registry_code")}),
        documents=tuple(
            DocumentRef(name=d["name"], path=d.get("path"), required=d.get("required", True))
            for d in data.get("documents", [])
            if d.get("path") is not None
        ),
    )  # fmt: skip


def _make_envelope(
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    award: Award,
    request: UsageRequest | None,
    signer: tuple[str, str, str | None],
    contract_type: str,
) -> Envelope:
    """The award's envelope, its contractor party being ``signer`` (name, e-mail, access-code
    hash); a construction contract is made on the usage request as its consent."""
    draft = award.draft
    parties: list[PartyInput] = []
    contractor_positions: list[int] = []
    signer_name, signer_email, code_hash = signer
    for position, p in enumerate(draft.get("parties", [])):
        role = PartyRole(p["role"])
        if p.get("source") == "contractor":
            contractor_positions.append(position)
            parties.append(PartyInput(role, signer_name, signer_email, award.counterparty))
        else:
            name = p.get("name") or ""
            if p.get("title"):
                name = f"{p['title']} {name}".strip()
            # The official from the signing-authority register is a staff member, as is a
            # fixed party the mapping marks `staff: true`: they sign after logging in.
            staff = p.get("source") == "signing_authority" or bool(p.get("staff"))
            parties.append(
                PartyInput(role, name, p.get("email") or "", p.get("company"), staff=staff)
            )
    fields = [
        FieldInput(
            document=f["document"],
            party=f["party"],
            label=f["label"],
            page=f["page"],
            rect=(f["rect"][0], f["rect"][1], f["rect"][2], f["rect"][3]),
            required=f.get("required", True),
            max_length=f.get("max_length", 200),
        )
        for f in draft.get("fields", [])
    ]
    documents = [DocumentInput(d.name, runtime.blobs.get(d.blob_id)) for d in award.documents]
    envelope = create_envelope(
        session=session,
        runtime=runtime,
        title=award.title,
        creator=policy.creator,
        creator_email=policy.creator_email,
        documents=documents,
        parties=parties,
        fields=fields,
        management_number=draft.get("management_number"),
        counterparty=award.counterparty,
        amount=award.amount,
        transaction_date=award.transaction_date,
        deadline=award.signing_due,
        actor="intake",
        department=award.department,
        contract_type=contract_type,
        consent_id=request.id if request is not None else None,
        via={"method": "intake", "source": award.source},
    )
    envelope.contractor_id = award.contractor_id
    if code_hash:
        for position in contractor_positions:
            session.add(
                AccessCode(
                    party_id=envelope.parties[position].id,
                    code_hash=code_hash,
                    set_at=utcnow(),
                )
            )
    record_event(
        session=session,
        action="award.envelope_created",
        actor="intake",
        envelope_id=envelope.id,
        detail={
            "source": award.source,
            "award_id": award.award_id,
            "usage_request": request.id if request is not None else None,
            "contract_type": contract_type,
        },
    )
    session.flush()
    if policy.auto_send and code_hash:
        send_envelope(
            session=session,
            runtime=runtime,
            envelope_id=envelope.id,
            actor=policy.creator,
            via={"method": "intake", "source": award.source},
        )
    return envelope


def release_waiting(
    *,
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    source: str | None = None,
    contractor_ids: Iterable[str] | None = None,
    fetch: Fetch | None = None,
    exclude_run_id: int | None = None,
) -> IntakeCounts:
    """Try again every waiting award (of one source, or of some contractors): documents are
    fetched again only when ``fetch`` is given (the award's own source is at hand). Awards the
    run ``exclude_run_id`` already tried are left alone. Read in pages, so memory stays flat."""
    counts = IntakeCounts()
    # Only what can move: awards waiting for documents (when they can be fetched again), and
    # awards waiting for a usage request that now exists.
    consented = exists(
        select(UsageRequest.id).where(
            UsageRequest.contractor_id == Award.contractor_id,
            UsageRequest.withdrawn_at.is_(None),
            or_(UsageRequest.award_ref.is_(None), UsageRequest.award_ref == Award.award_id),
        )
    )
    ready = or_(
        and_(Award.state == AwardState.WAITING_USAGE_REQUEST.value, consented),
        Award.state == AwardState.WAITING_SIGNER.value,
    )
    if fetch is not None:
        ready = or_(ready, Award.state == AwardState.WAITING_DOCUMENTS.value)
    query = select(Award).where(ready)
    if source is not None:
        query = query.where(Award.source == source)
    if contractor_ids is not None:
        ids = list(contractor_ids)
        if not ids:
            return counts
        query = query.where(Award.contractor_id.in_(ids))
    if exclude_run_id is not None:
        query = query.where(or_(Award.last_run_id.is_(None), Award.last_run_id != exclude_run_id))
    awards = session.scalars(
        query.options(selectinload(Award.documents))
        .order_by(Award.created_at, Award.id)
        .execution_options(yield_per=500)
    )
    for award in awards:
        try:
            _release(
                session, runtime, policy, award, fetch if award.source == source else None, counts
            )
        except RecordError as exc:
            item = AwardItem(draft=_draft_from_json(award.draft), file=award.file, line=award.line)
            counts.errors.append(_line_error(award.source, item, exc))
    return counts


# --- looking things up ------------------------------------------------------------------------


def get_award(*, session: Session, source: str, award_id: str) -> Award:
    """One award by source and award id, or ``not_found.award``."""
    award = session.scalar(
        select(Award)
        .where(Award.source == source, Award.award_id == award_id)
        .options(selectinload(Award.documents))
        .execution_options(populate_existing=True)
    )
    if award is None:
        raise NotFoundError(
            "not_found.award", f"no award {award_id} from {source}", "落札情報が見つかりません。"
        )
    return award


def list_awards(
    *,
    session: Session,
    source: str | None = None,
    state: AwardState | None = None,
    waiting: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[Award]:
    """Awards, newest first, optionally of one source, in one state, or every one that has
    no envelope yet and is not dismissed (``waiting``)."""
    query = select(Award).order_by(Award.updated_at.desc(), Award.id).limit(limit).offset(offset)
    if source is not None:
        query = query.where(Award.source == source)
    if state is not None:
        query = query.where(Award.state == state.value)
    if waiting:
        query = query.where(Award.state.in_([s.value for s in PENDING_STATES]))
    return session.scalars(query).all()


def count_awards(*, session: Session, source: str | None = None, waiting: bool = False) -> int:
    """How many awards :func:`list_awards` would list without a limit."""
    query = select(func.count()).select_from(Award)
    if source is not None:
        query = query.where(Award.source == source)
    if waiting:
        query = query.where(Award.state.in_([s.value for s in PENDING_STATES]))
    return int(session.scalar(query) or 0)


@dataclass(frozen=True)
class WaitingReason:
    """Why an award has no envelope, and what would give it one (Japanese for staff)."""

    code: (
        str  # no_usage_request | no_document | no_contractor_match | conflict | changed_after_send
    )
    reason: str
    reason_ja: str
    release_ja: str


def waiting_reason(award: Award) -> WaitingReason | None:
    """Why the award waits (None when it has its envelope or was dismissed)."""
    note = award.note or ""
    if award.state is AwardState.WAITING_USAGE_REQUEST:
        return WaitingReason(
            "no_usage_request",
            "the contractor's usage request (consent, signer) has not arrived",
            note or "受注者の電子契約利用申出書(承諾書)がまだ届いていません。",
            "利用申出書が取り込まれる(または登録される)と、自動的に封筒を作成します。",
        )
    if award.state is AwardState.WAITING_DOCUMENTS:
        return WaitingReason(
            "no_document",
            f"a contract document could not be fetched: {note}",
            note or "契約書ファイルがありません。",
            "取込元に契約書ファイルを置くと、次回の取込で作成します。",
        )
    if award.state is AwardState.WAITING_CONTRACTOR:
        return WaitingReason(
            "no_contractor_match",
            "the record names its contractor by name only (no corporate number or code)",
            note or "受注者を特定できません。",
            "取込元に法人番号か業者番号を含めるか、職員が受注者を指定して解除してください。",
        )
    if award.state is AwardState.WAITING_SIGNER:
        return WaitingReason(
            "no_signer_address",
            "the signer comes from the bidder registry, which has no address for the contractor",
            note or "入札参加資格者名簿に受注者の登録メールアドレスがありません。",
            "名簿に登録メールアドレスが取り込まれると、自動的に封筒を作成します。",
        )
    if award.state is AwardState.CONTRACTOR_CONFLICT:
        return WaitingReason(
            "conflict",
            "the contractor's identity is in doubt (see keiyaku contractors conflicts)",
            note or "受注者の同一性に疑いがあるため保留しています。",
            "受注者を確認し、正しい受注者を指定して解除するか、対象外にしてください。",
        )
    if award.state is AwardState.WAITING_AMOUNT:
        return WaitingReason(
            "no_amount",
            "the record gives no amount (取引金額); an envelope without one is never sent",
            note or "契約金額がありません。",
            "取込元のレコードに契約金額を含めて再取込するか、マッピングを直して再マッピングしてください。",
        )
    if award.state is AwardState.WAITING_ACCESS_CODE:
        return WaitingReason(
            "no_access_code",
            "the contractor's signer (registry address or mapping) has no access code",
            note or "アクセスコード未設定",
            "職員がアクセスコードを設定すると送信します(落札情報一覧の「アクセスコードを設定して送信」、"
            "API の set-access-code、keiyaku awards set-code)。コードは受注者に別経路で伝えてください。",
        )
    if award.state is AwardState.CHANGED_AFTER_SEND:
        return WaitingReason(
            "changed_after_send",
            "the source changed the award after its envelope was sent; the change was not applied",
            note or "封筒の送信後に落札情報が変更されました。",
            "封筒を取り消して作り直すか、変更を破棄(対象外)してください。",
        )
    return None


def _award_for_staff(session: Session, source: str, award_id: str) -> Award:
    award = get_award(session=session, source=source, award_id=award_id)
    return award


def release_award(
    *,
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    source: str,
    award_id: str,
    actor: str,
    contractor_id: str | None = None,
) -> Award:
    """Staff release a waiting award (audited): optionally name its contractor (a legal entity
    staff have confirmed), then make its envelope when it is ready; otherwise it waits again for
    what it still lacks. Conflicts reported for this award are marked resolved."""
    award = _award_for_staff(session, source, award_id)
    if award.state is AwardState.WAITING_ACCESS_CODE:
        raise StateError(
            "state.award_needs_access_code",
            f"award {award_id} of {source} has its draft; set the signer's access code to send it",
            "この落札情報は封筒作成済みです。アクセスコードを設定して送信してください。",
        )
    if award.state in (AwardState.DRAFTED, AwardState.SENT, AwardState.CHANGED_AFTER_SEND):
        raise StateError(
            "state.award_not_waiting",
            f"award {award_id} of {source} has an envelope ({award.state.value}); cancel it first",
            "この落札情報には封筒が作成済みです。作り直す場合は封筒を取り消してください。",
        )
    previous = award.contractor_id
    if contractor_id is not None:
        if session.get(Contractor, contractor_id) is None:
            raise NotFoundError(
                "not_found.contractor", f"no contractor {contractor_id}", "事業者が見つかりません。"
            )
        award.contractor_id = contractor_id
    if award.contractor_id is None:
        raise StateError(
            "state.award_contractor_unknown",
            f"award {award_id}: name its contractor (--contractor) to release it",
            "受注者が特定されていません。受注者を指定してください。",
        )
    for conflict in session.scalars(
        select(ContractorConflict).where(
            ContractorConflict.source == source,
            ContractorConflict.award_id == award_id,
            ContractorConflict.resolved_at.is_(None),
        )
    ):
        conflict.resolved_at, conflict.resolved_by = utcnow(), actor
        conflict.resolution = f"released with contractor {award.contractor_id}"
    award.state = (
        AwardState.WAITING_USAGE_REQUEST if award.documents else AwardState.WAITING_DOCUMENTS
    )
    award.note = None
    award.updated_at = utcnow()
    record_event(
        session=session,
        action="award.released",
        actor=actor,
        detail={"source": source, "award_id": award_id, "contractor": award.contractor_id,
                "previous_contractor": previous},
    )  # fmt: skip
    _release(session, runtime, policy, award, None, IntakeCounts())
    return award


REMAPPABLE_STATES = (*WAITING_STATES, AwardState.WAITING_AMOUNT, AwardState.WAITING_ACCESS_CODE,
                     AwardState.DRAFTED)  # fmt: skip


def remap_award(
    *,
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    award: Award,
    item: AwardItem,
    fetch: Fetch,
    actor: str,
) -> Award:
    """Apply a fresh mapping result (``item``, made by the caller from the award's stored
    record with the current mapping) to a waiting award or its unsent draft, audited as
    ``award.remapped``; its envelope is made when it is ready, as on a sync run. An award held
    for a contractor conflict, sent or dismissed is refused (``state.award_not_remappable``)."""
    if award.state not in REMAPPABLE_STATES:
        raise StateError(
            "state.award_not_remappable",
            f"award {award.award_id} of {award.source} cannot be re-mapped ({award.state.value})",
            f"この落札情報は「{award_state_ja(award.state)}」のため、再マッピングできません。",
        )
    before = award.fingerprint
    old_state = award.state
    counts = IntakeCounts()
    if item.draft.fingerprint() == before:
        if award.state in WAITING_STATES:
            _release(session, runtime, policy, award, fetch, counts)
    else:
        _update_award(
            session, runtime, policy, award, item, fetch, award.last_run_id, ContractorDirectory(),
            counts,
        )  # fmt: skip
    if item.record is not None:
        award.record = compact_record(item.record)
    award.updated_at = utcnow()
    record_event(
        session=session,
        action="award.remapped",
        actor=actor,
        envelope_id=award.envelope_id,
        detail={
            "source": award.source,
            "award_id": award.award_id,
            "changed": award.fingerprint != before,
            "before": {"fingerprint": before, "state": old_state.value},
            "after": {"fingerprint": award.fingerprint, "state": award.state.value},
        },
    )
    return award


def set_award_access_code(
    *,
    session: Session,
    runtime: Runtime,
    policy: IntakePolicy,
    source: str,
    award_id: str,
    actor: str,
    code: str,
    ip: str | None = None,
) -> Award:
    """Staff set the access code of an award's contractor signer (one named by the registry
    address or the mapping, which carry none) and send its draft envelope (audited). The code
    reaches the contractor by another channel (phone, paper): it is never mailed."""
    award = _award_for_staff(session, source, award_id)
    if award.state is not AwardState.WAITING_ACCESS_CODE or award.envelope_id is None:
        raise StateError(
            "state.award_not_waiting_access_code",
            f"award {award_id} of {source} does not wait for an access code ({award.state.value})",
            "この落札情報はアクセスコードの設定を待っていません。",
        )
    if policy.access_codes is None:
        raise InputError(
            "config.no_access_code_policy",
            "no access-code policy configured",
            "アクセスコードを設定できません(設定がありません)。",
        )
    code_hash = policy.access_codes.hash(policy.access_codes.check_format(code))
    envelope = session.get(Envelope, award.envelope_id)
    if envelope is None or envelope.state is not EnvelopeState.DRAFT:
        raise StateError(
            "state.award_not_waiting_access_code",
            f"award {award_id}: its envelope is no longer a draft",
            "この落札情報の封筒は下書きではありません。",
        )
    # Only the contractor's parties (by their place in the mapped draft): another party without
    # a code is never given the contractor's, and the send then says who cannot authenticate.
    contractor_orders = {
        position
        for position, p in enumerate(award.draft.get("parties", []), start=1)
        if p.get("source") == "contractor"
    }
    parties = [
        p
        for p in envelope.parties
        if p.routing_order in contractor_orders
        and p.role is not PartyRole.CC
        and p.staff_id is None
        and session.get(AccessCode, p.id) is None
    ]
    for party in parties:
        set_access_code(session=session, party_id=party.id, code_hash=code_hash)
    record_event(
        session=session,
        action="award.access_code_set",
        actor=actor,
        envelope_id=envelope.id,
        ip=ip,
        detail={"source": source, "award_id": award_id, "parties": [p.id for p in parties]},
    )
    session.flush()
    send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor=actor, ip=ip)
    award.state, award.note = AwardState.SENT, None
    award.updated_at = utcnow()
    return award


def dismiss_award(
    *,
    session: Session,
    runtime: Runtime,
    source: str,
    award_id: str,
    actor: str,
    reason: str,
) -> Award:
    """Staff decide a waiting award never becomes an envelope here (audited, with a reason);
    for a change that arrived after sending, the change is dropped and the envelope stays."""
    if not reason.strip():
        raise StateError("state.reason_required", "give a reason", "理由を入力してください。")
    award = _award_for_staff(session, source, award_id)
    if award.state is AwardState.WAITING_ACCESS_CODE and award.envelope_id is not None:
        # Its draft was never sent: it goes with the award.
        from core.envelopes.lifecycle import cancel_envelope

        cancel_envelope(
            session=session,
            runtime=runtime,
            envelope_id=award.envelope_id,
            actor=actor,
            reason=f"落札情報を対象外にしました: {reason}",
        )
    if award.state is AwardState.CHANGED_AFTER_SEND:
        award.rejected_change = None
        award.state = AwardState.SENT
        award.note = f"送信後の変更を破棄しました: {reason}"
    elif award.state in (AwardState.DRAFTED, AwardState.SENT):
        raise StateError(
            "state.award_not_waiting",
            f"award {award_id} of {source} has an envelope; cancel the envelope instead",
            "この落札情報には封筒が作成済みです。封筒を取り消してください。",
        )
    else:
        award.state = AwardState.DISMISSED
        award.note = reason[:1000]
    award.updated_at = utcnow()
    record_event(
        session=session,
        action="award.dismissed",
        actor=actor,
        envelope_id=award.envelope_id,
        detail={"source": source, "award_id": award_id, "reason": reason},
    )
    return award


def amount_text(amount: Decimal | None) -> str:
    """An amount as staff read it (``31,389,000円``)."""
    return "" if amount is None else f"{amount:,.0f}円"
