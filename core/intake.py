"""Intake: awards, contractors' registered addresses and usage requests into the database.

Idempotent on (source, award id): a record seen before with the same content changes nothing; a
changed award updates its draft envelope, but never one already sent (the change is kept on the
award, reported and left for staff). An award becomes an envelope only when its contractor's
usage request (電子契約利用申出書 / 承諾書) is there and every required contract PDF has been
fetched; until then it waits, visibly (:class:`~core.model.AwardState`), and is released by a
later run or the moment the usage request arrives.

Contract PDFs are fetched when the award is first taken in (or changes) and kept encrypted in
the blob store, so a source that moves or deletes its files afterwards loses nothing.

Sync runs, their counts and their line errors (the dead-letter store) are recorded here too, as
are source cursors, stored in the transaction that commits the records they cover.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from core.audit import record_event
from core.business_days import BusinessCalendar
from core.drafts import (
    ContractorDraft,
    ContractorRef,
    DocumentRef,
    EnvelopeDraft,
    LineError,
    UsageRequestDraft,
)
from core.envelopes import (
    DocumentInput,
    FieldInput,
    PartyInput,
    Runtime,
    create_envelope,
    send_envelope,
)
from core.errors import GatewayError, NotFoundError, RecordError
from core.links import AccessCodePolicy
from core.model import (
    AccessCode,
    Award,
    AwardDocument,
    AwardState,
    Contractor,
    ContractorEmail,
    ContractorIdentity,
    DeadLetter,
    Envelope,
    SourceCursor,
    SyncRun,
    UsageRequest,
    new_id,
    utcnow,
)
from core.states import EnvelopeState, PartyRole

log = logging.getLogger(__name__)

Fetch = Callable[[DocumentRef], bytes]

AWARD_STATE_JA = {
    AwardState.WAITING_USAGE_REQUEST: "利用申出待ち",
    AwardState.WAITING_DOCUMENTS: "契約書ファイル待ち",
    AwardState.DRAFTED: "封筒作成済み(下書き)",
    AwardState.SENT: "送信済み",
    AwardState.CHANGED_AFTER_SEND: "送信後に落札情報が変更(要確認)",
}
WAITING_STATES = (AwardState.WAITING_USAGE_REQUEST, AwardState.WAITING_DOCUMENTS)


def award_state_ja(state: AwardState) -> str:
    """The Japanese label staff see for an award state."""
    return AWARD_STATE_JA[state]


@dataclass(frozen=True)
class IntakePolicy:
    """How awards become envelopes: who creates them, whether they are sent at once, and the
    deadlines in business days (usage request within 2, signing within 5, by default)."""

    creator: str = "自動取込"
    creator_email: str | None = None
    auto_send: bool = False
    calendar: BusinessCalendar = field(default_factory=BusinessCalendar)
    usage_request_business_days: int = 2
    signing_business_days: int = 5
    access_codes: AccessCodePolicy | None = None


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
    """One mapped award and where it came from."""

    draft: EnvelopeDraft
    file: str | None = None
    line: int | None = None
    path: str | None = None


# --- contractors ------------------------------------------------------------------------------

_COMPANY_FORMS = {
    "(株)": "株式会社",
    "(有)": "有限会社",
    "(合)": "合同会社",
    "(同)": "合同会社",
    "(資)": "合資会社",
    "(名)": "合名会社",
    "(一社)": "一般社団法人",
    "(一財)": "一般財団法人",
    "(特非)": "特定非営利活動法人",
}


def name_key(name: str) -> str:
    """A key that matches the same company however it is typed: NFKC (㈱ → (株)), company
    forms spelled out, every space and middle dot removed, case folded."""
    text = unicodedata.normalize("NFKC", name)
    for short, long in _COMPANY_FORMS.items():
        text = text.replace(short, long)
    return re.sub(r"[\s・･]+", "", text).casefold()


def _identities(ref: ContractorRef) -> list[tuple[str, str]]:
    keys = []
    if ref.corporate_number:
        keys.append(("corporate_number", ref.corporate_number))
    if ref.registry_code:
        keys.append(("registry_code", unicodedata.normalize("NFKC", ref.registry_code).strip()))
    if ref.name:
        keys.append(("name_key", name_key(ref.name)[:200]))
    return keys


class ContractorDirectory:
    """Finds contractors by their identities, caching what one run has looked up."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], str] = {}
        self._missing: set[tuple[str, str]] = set()
        self.created: set[str] = set()  # contractors this directory created
        self._objects: dict[str, Contractor] = {}

    def prefetch(self, session: Session, refs: Iterable[ContractorRef]) -> None:
        """Load the identities of many refs in one query."""
        wanted = {key for ref in refs for key in _identities(ref)}
        wanted -= set(self._ids) | self._missing
        if not wanted:
            return
        values = sorted({value for _, value in wanted})
        for start in range(0, len(values), 500):
            rows = session.execute(
                select(ContractorIdentity.kind, ContractorIdentity.value, ContractorIdentity.contractor_id)
                .where(ContractorIdentity.value.in_(values[start : start + 500]))
            ).all()  # fmt: skip
            for kind, value, contractor_id in rows:
                self._ids[(kind, value)] = contractor_id
        self._missing |= wanted - set(self._ids)

    def find_id(self, session: Session, ref: ContractorRef) -> str | None:
        """The contractor's id: by corporate number, then registry code, then name."""
        self.prefetch(session, [ref])
        for key in _identities(ref):
            if key in self._ids:
                return self._ids[key]
        return None

    def resolve(self, session: Session, ref: ContractorRef) -> Contractor:
        """The contractor named by ``ref``, created when unknown; identities it was not yet
        known by are learnt (a corporate number never moves to another contractor)."""
        contractor_id = self.find_id(session, ref)
        contractor = self._objects.get(contractor_id) if contractor_id else None
        if contractor is None and contractor_id:
            with session.no_autoflush:  # a lookup must not flush the batch row by row
                contractor = session.get(Contractor, contractor_id)
        if contractor is None:
            contractor = Contractor(
                id=new_id(),
                name=(ref.name or ref.describe())[:200],
                corporate_number=ref.corporate_number,
                created_at=utcnow(),
            )
            session.add(contractor)
            self.created.add(contractor.id)
        elif ref.corporate_number and not contractor.corporate_number:
            contractor.corporate_number = ref.corporate_number
        self._objects[contractor.id] = contractor
        for key in _identities(ref):
            if key not in self._ids:
                session.add(
                    ContractorIdentity(contractor_id=contractor.id, kind=key[0], value=key[1])
                )
                self._ids[key] = contractor.id
                self._missing.discard(key)
        return contractor


def upsert_contractor(
    *,
    session: Session,
    source: str,
    draft: ContractorDraft,
    directory: ContractorDirectory | None = None,
) -> str:
    """Record one bidder-registry row: the contractor and its registered e-mail addresses.
    Returns ``created``, ``updated`` or ``unchanged``."""
    directory = directory or ContractorDirectory()
    known = directory.find_id(session, draft.contractor) is not None
    contractor = directory.resolve(session, draft.contractor)
    existing = set(
        session.scalars(
            select(ContractorEmail.email).where(ContractorEmail.contractor_id == contractor.id)
        )
    )
    added = [email for email in draft.emails if email not in existing]
    for email in added:
        session.add(ContractorEmail(contractor_id=contractor.id, email=email, source=source))
    if draft.emails and contractor.email != draft.emails[0]:
        contractor.email = draft.emails[0]
        added = added or [draft.emails[0]]
    if draft.contractor.name and contractor.name != draft.contractor.name:
        contractor.name = draft.contractor.name[:200]
        added = added or ["name"]
    if not known:
        return "created"
    return "updated" if added else "unchanged"


def contractor_emails(*, session: Session, contractor_id: str) -> list[str]:
    """A contractor's registered e-mail addresses."""
    return list(
        session.scalars(
            select(ContractorEmail.email)
            .where(ContractorEmail.contractor_id == contractor_id)
            .order_by(ContractorEmail.id)
        )
    )


# --- usage requests ---------------------------------------------------------------------------


def upsert_usage_request(
    *,
    session: Session,
    source: str,
    draft: UsageRequestDraft,
    policy: IntakePolicy,
    directory: ContractorDirectory | None = None,
) -> tuple[UsageRequest, str]:
    """Record one usage request (imported from a source or posted); the access code is kept
    only as a salted, peppered hash. Returns the row and ``created``/``updated``/``unchanged``."""
    directory = directory or ContractorDirectory()
    contractor = directory.resolve(session, draft.contractor)
    code_hash = None
    if draft.access_code is not None:
        if policy.access_codes is None:
            raise RecordError(
                "intake.access_code_policy",
                "an access code arrived but no access-code policy is configured",
                "アクセスコードを保存する設定がありません。",
            )
        code_hash = policy.access_codes.hash(policy.access_codes.check_format(draft.access_code))
    key = draft.key()[:200]
    row = session.scalar(
        select(UsageRequest).where(UsageRequest.source == source, UsageRequest.request_key == key)
    )
    values: dict[str, Any] = {
        "contractor_id": contractor.id,
        "award_ref": draft.award_id,
        "signer_name": draft.signer_name[:200],
        "signer_title": draft.signer_title,
        "signer_email": draft.signer_email,
        "contact_department": draft.contact_department,
        "contact_name": draft.contact_name,
        "contact_phone": draft.contact_phone,
        "contact_email": draft.contact_email,
        "consented_on": draft.consented_on,
    }
    now = utcnow()
    if row is None:
        row = UsageRequest(
            source=source,
            request_key=key,
            access_code_hash=code_hash,
            created_at=now,
            updated_at=now,
            **values,
        )
        session.add(row)
        session.flush()
        outcome = "created"
    else:
        changed = any(getattr(row, k) != v for k, v in values.items())
        same_code = draft.access_code is None or (
            row.access_code_hash is not None
            and policy.access_codes is not None
            and policy.access_codes.matches(draft.access_code, row.access_code_hash)
        )
        if changed or not same_code:
            for k, v in values.items():
                setattr(row, k, v)
            if not same_code:
                row.access_code_hash = code_hash
            row.updated_at = now
            outcome = "updated"
        else:
            outcome = "unchanged"
    return row, outcome


def find_usage_request(
    *, session: Session, contractor_id: str, award_ref: str | None
) -> UsageRequest | None:
    """The usage request that covers an award: one naming this award first, else one covering
    all of the contractor's awards; withdrawn ones never."""
    rows = session.scalars(
        select(UsageRequest)
        .where(UsageRequest.contractor_id == contractor_id, UsageRequest.withdrawn_at.is_(None))
        .order_by(UsageRequest.updated_at.desc())
    ).all()
    return _choose_request(rows, award_ref)


def _requests_by_contractor(
    session: Session, contractor_ids: set[str]
) -> dict[str, list[UsageRequest]]:
    found: dict[str, list[UsageRequest]] = {cid: [] for cid in contractor_ids}
    ids = sorted(contractor_ids)
    for start in range(0, len(ids), 500):
        for row in session.scalars(
            select(UsageRequest)
            .where(
                UsageRequest.contractor_id.in_(ids[start : start + 500]),
                UsageRequest.withdrawn_at.is_(None),
            )
            .order_by(UsageRequest.updated_at.desc())
        ):
            found[row.contractor_id].append(row)
    return found


def _choose_request(rows: Sequence[UsageRequest], award_ref: str | None) -> UsageRequest | None:
    specific = [r for r in rows if award_ref is not None and r.award_ref == award_ref]
    general = [r for r in rows if r.award_ref is None]
    candidates = specific or general
    return candidates[0] if candidates else None


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
) -> str | None:
    """Fetch and keep every document of the draft; the reason when a required one is missing."""
    if award.documents:
        award.documents.clear()
        session.flush()  # the old rows go before new ones take their positions
    missing: str | None = None
    position = 0
    for ref in draft.documents:
        try:
            data = ref.data if ref.data is not None else fetch(ref)
        except RecordError as exc:
            if ref.required:
                missing = missing or f"{ref.name}: {exc.message_ja}"
            continue
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
        position += 1
    if not award.documents and missing is None:
        missing = "文書がありません。"
    return missing


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
    requests = _requests_by_contractor(
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
    contractor = directory.resolve(session, draft.contractor)
    if requests is not None and contractor.id not in requests:
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
        contractor_id=contractor.id,
        last_run_id=run_id,
        created_at=now,
    )
    _apply_draft(award, draft, item, policy)
    award.documents = []
    session.add(award)
    missing = _stage_documents(session, runtime, award, draft, fetch)
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
    contractor = directory.resolve(session, draft.contractor)
    award.contractor_id = contractor.id
    counts.updated += 1
    new = award.draft
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
        missing = _stage_documents(session, runtime, award, draft, fetch)
        if missing is not None:
            award.state = AwardState.WAITING_DOCUMENTS
            award.note = missing
    if envelope is not None:
        # Documents, parties or fields changed: the draft is replaced by a new one.
        from core.envelopes import cancel_envelope

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
        return
    if requests is not None and award.contractor_id in requests:
        request = _choose_request(requests[award.contractor_id], award.award_id)
    else:
        request = find_usage_request(
            session=session, contractor_id=award.contractor_id, award_ref=award.award_id
        )
    if request is None:
        award.state = AwardState.WAITING_USAGE_REQUEST
        award.note = "受注者の電子契約利用申出書(承諾書)がまだ届いていません。"
        counts.waiting += 1
        return
    try:
        with session.begin_nested():
            envelope = _make_envelope(session, runtime, policy, award, request)
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
    award.usage_request_id = request.id
    award.state = AwardState.SENT if envelope.state is EnvelopeState.SENT else AwardState.DRAFTED
    award.note = None
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
    request: UsageRequest,
) -> Envelope:
    draft = award.draft
    parties: list[PartyInput] = []
    contractor_positions: list[int] = []
    for position, p in enumerate(draft.get("parties", [])):
        role = PartyRole(p["role"])
        if p.get("source") == "contractor":
            contractor_positions.append(position)
            name = request.signer_name
            if request.signer_title:
                name = f"{request.signer_title} {request.signer_name}"
            parties.append(PartyInput(role, name, request.signer_email, award.counterparty))
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
    )
    envelope.contractor_id = award.contractor_id
    if request.access_code_hash:
        for position in contractor_positions:
            session.add(
                AccessCode(
                    party_id=envelope.parties[position].id,
                    code_hash=request.access_code_hash,
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
            "usage_request": request.id,
        },
    )
    session.flush()
    if policy.auto_send:
        send_envelope(
            session=session, runtime=runtime, envelope_id=envelope.id, actor=policy.creator
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
    ready = and_(Award.state == AwardState.WAITING_USAGE_REQUEST.value, consented)
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
    limit: int = 100,
) -> Sequence[Award]:
    """Awards, newest first, optionally of one source or in one state."""
    query = select(Award).order_by(Award.updated_at.desc(), Award.id).limit(limit)
    if source is not None:
        query = query.where(Award.source == source)
    if state is not None:
        query = query.where(Award.state == state.value)
    return session.scalars(query).all()


def usage_request_for_envelope(*, session: Session, envelope_id: str) -> UsageRequest | None:
    """The usage request an envelope was made on (None for envelopes not made by intake)."""
    return session.scalar(
        select(UsageRequest)
        .join(Award, Award.usage_request_id == UsageRequest.id)
        .where(Award.envelope_id == envelope_id)
    )


# --- runs, dead letters, cursors --------------------------------------------------------------


def start_run(*, session: Session, source: str, trigger: str) -> SyncRun:
    """Record the start of a sync run (the caller commits, so it is visible while it runs)."""
    run = SyncRun(source=source, trigger=trigger, status="running", started_at=utcnow())
    session.add(run)
    session.flush()
    return run


def count_run(*, run: SyncRun, counts: IntakeCounts, records: int = 0, skipped: int = 0) -> None:
    """Add a batch's counts to its run."""
    run.records += records
    run.skipped += skipped
    run.created += counts.created
    run.updated += counts.updated
    run.unchanged += counts.unchanged
    run.waiting += counts.waiting
    run.released += counts.released
    run.conflicts += counts.conflicts
    run.errors += len(counts.errors)


def finish_run(
    *, session: Session, run: SyncRun, status: str, message: str | None = None
) -> SyncRun:
    """Record the end of a run: status, duration and, on failure, why."""
    now = utcnow()
    run.status = status
    run.finished_at = now
    started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=dt.UTC)
    run.duration_ms = int((now - started).total_seconds() * 1000)
    run.message = message[:4000] if message else None
    return run


def record_line_errors(
    *,
    session: Session,
    run_id: int | None,
    errors: Sequence[LineError],
    records: Mapping[tuple[str | None, int | None, str | None], Mapping[str, Any]] | None = None,
) -> None:
    """Put line errors into the dead-letter store, each with its (redacted) record."""
    records = records or {}
    for error in errors:
        session.add(
            DeadLetter(
                run_id=run_id,
                source=error.source,
                file=error.file,
                line=error.line,
                path=error.path,
                field=error.field,
                code=error.code,
                reason=error.reason,
                reason_ja=error.reason_ja,
                mapping_line=error.mapping_line,
                record=dict(records.get((error.file, error.line, error.path), {})),
                created_at=utcnow(),
            )
        )


def list_runs(
    *, session: Session, source: str | None = None, limit: int = 20, offset: int = 0
) -> Sequence[SyncRun]:
    """Sync runs, newest first."""
    query = select(SyncRun).order_by(SyncRun.id.desc()).limit(limit).offset(offset)
    if source is not None:
        query = query.where(SyncRun.source == source)
    return session.scalars(query).all()


def count_runs(*, session: Session, source: str | None = None) -> int:
    """How many sync runs there are (of one source)."""
    query = select(func.count()).select_from(SyncRun)
    if source is not None:
        query = query.where(SyncRun.source == source)
    return int(session.scalar(query) or 0)


def get_run(*, session: Session, run_id: int) -> SyncRun:
    """One sync run, or ``not_found.sync_run``."""
    run = session.get(SyncRun, run_id)
    if run is None:
        raise NotFoundError(
            "not_found.sync_run", f"no sync run {run_id}", "取込の記録が見つかりません。"
        )
    return run


def list_dead_letters(
    *, session: Session, source: str | None = None, run_id: int | None = None, limit: int = 100
) -> Sequence[DeadLetter]:
    """Line errors, oldest first within a run."""
    query = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if source is not None:
        query = query.where(DeadLetter.source == source)
    if run_id is not None:
        query = query.where(DeadLetter.run_id == run_id)
    return session.scalars(query).all()


def get_cursor(*, session: Session, source: str) -> dict[str, Any]:
    """The source's bookmark ({} before its first run)."""
    row = session.get(SourceCursor, source)
    return dict(row.cursor) if row is not None else {}


def store_cursor(*, session: Session, source: str, cursor: Mapping[str, Any]) -> None:
    """Store the bookmark in the caller's transaction (with the records it covers)."""
    row = session.get(SourceCursor, source)
    if row is None:
        session.add(SourceCursor(source=source, cursor=dict(cursor), updated_at=utcnow()))
    else:
        row.cursor = dict(cursor)
        row.updated_at = utcnow()


def amount_text(amount: Decimal | None) -> str:
    """An amount as staff read it (``31,389,000円``)."""
    return "" if amount is None else f"{amount:,.0f}円"
