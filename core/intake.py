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

import base64
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
from core.consent import CONSTRUCTION, has_withdrawn
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
    check_documents,
    create_envelope,
    send_envelope,
)
from core.errors import (
    DocumentError,
    GatewayError,
    InputError,
    NotFoundError,
    RecordError,
    StateError,
)
from core.links import AccessCodePolicy, set_access_code
from core.model import (
    AccessCode,
    Award,
    AwardDocument,
    AwardState,
    Contractor,
    ContractorConflict,
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

__all__ = [
    "CONFLICT_KIND_JA",
    "AwardItem",
    "ContractorDirectory",
    "Identified",
    "IntakeCounts",
    "IntakePolicy",
    "WaitingReason",
    "amount_text",
    "award_state_ja",
    "compact_record",
    "contractor_emails",
    "count_awards",
    "count_run",
    "count_runs",
    "dismiss_award",
    "find_contractor",
    "find_usage_request",
    "finish_run",
    "get_award",
    "get_cursor",
    "get_run",
    "intake_awards",
    "list_awards",
    "list_conflicts",
    "list_dead_letters",
    "list_replayable",
    "list_runs",
    "loose_name",
    "mark_replayed",
    "name_key",
    "record_line_errors",
    "registry_code_key",
    "release_award",
    "release_waiting",
    "remap_award",
    "reset_cursor",
    "resolve_conflict",
    "restore_record",
    "set_award_access_code",
    "start_run",
    "store_cursor",
    "upsert_contractor",
    "upsert_usage_request",
    "usage_request_for_envelope",
    "waiting_reason",
]

log = logging.getLogger(__name__)

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


_WITHOUT_FORMS = re.compile(
    "|".join(re.escape(f) for f in sorted(set(_COMPANY_FORMS.values()), key=len, reverse=True))
)
# Old and new forms of the same character, as registries and exports mix them (髙/高, 﨑/崎).
_VARIANTS = str.maketrans({"髙": "高", "﨑": "崎", "德": "徳", "濵": "浜", "邉": "辺", "邊": "辺"})


def loose_name(name: str) -> str:
    """A name with the company form (株式会社, 有限会社, ...) and character variants dropped:
    for saying whether two records *disagree* on a name, never for matching."""
    return _WITHOUT_FORMS.sub("", name_key(name)).translate(_VARIANTS)


def registry_code_key(code: str) -> str:
    """A registry code as stored (NFKC, trimmed)."""
    return unicodedata.normalize("NFKC", code).strip()[:200]


CONFLICT_KIND_JA = {
    "name_candidate": "商号のみ一致(同一事業者か要確認)",
    "code_name_mismatch": "業者番号と商号が不一致",
    "code_corporate_mismatch": "業者番号・法人番号の所有者が不一致",
    "merged_before": "以前の取込で複数の事業者が統合",
}


@dataclass(frozen=True)
class Identified:
    """Who a record's contractor is: the contractor, or None and why it is not known
    (``waiting_contractor``: only a name, which never decides)."""

    contractor: Contractor | None
    created: bool = False
    note: str | None = None


class ContractorDirectory:
    """Finds contractors by their identities (corporate number, registry code), caching what one
    run has looked up, and reports every doubt as a :class:`~core.model.ContractorConflict`.

    The rules (a contractor is a legal entity): the corporate number decides; a registry code
    belongs to one contractor; a name alone never matches. A record naming a company only by
    name is not attached to anything; known contractors of that name are reported as
    candidates for staff to confirm.
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], str] = {}
        self._missing: set[tuple[str, str]] = set()
        self.created: set[str] = set()  # contractors this directory created
        self._objects: dict[str, Contractor] = {}
        self._reported: set[str] = set()
        self.conflicts = 0  # conflicts newly reported through this directory
        self.touched: set[str] = set()  # contractors a registry row has updated in this run

    @staticmethod
    def _keys(ref: ContractorRef) -> list[tuple[str, str]]:
        keys = []
        if ref.corporate_number:
            keys.append(("corporate_number", ref.corporate_number))
        if ref.registry_code and registry_code_key(ref.registry_code):
            keys.append(("registry_code", registry_code_key(ref.registry_code)))
        return keys

    def prefetch(self, session: Session, refs: Iterable[ContractorRef]) -> None:
        """Load the identities of many refs in one query."""
        wanted = {key for ref in refs for key in self._keys(ref)}
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
        """The contractor's id by corporate number, else registry code; None for a ref that
        has neither (a name never decides) or that is unknown."""
        self.prefetch(session, [ref])
        for key in self._keys(ref):
            if key in self._ids:
                return self._ids[key]
        return None

    def _get(self, session: Session, contractor_id: str) -> Contractor:
        contractor = self._objects.get(contractor_id)
        if contractor is None:
            with session.no_autoflush:  # a lookup must not flush the batch row by row
                contractor = session.get(Contractor, contractor_id)
            assert contractor is not None
            self._objects[contractor_id] = contractor
        return contractor

    def _learn(self, session: Session, contractor: Contractor, kind: str, value: str) -> None:
        session.add(ContractorIdentity(contractor_id=contractor.id, kind=kind, value=value))
        self._ids[(kind, value)] = contractor.id
        self._missing.discard((kind, value))

    def _new(self, session: Session, ref: ContractorRef, keys: list[tuple[str, str]]) -> Contractor:
        name = (ref.name or ref.describe())[:200]
        contractor = Contractor(
            id=new_id(),
            name=name,
            name_key=name_key(name)[:200],
            corporate_number=ref.corporate_number,
            created_at=utcnow(),
        )
        session.add(contractor)
        self.created.add(contractor.id)
        self._objects[contractor.id] = contractor
        for kind, value in keys:
            self._learn(session, contractor, kind, value)
        return contractor

    def report(
        self,
        session: Session,
        *,
        kind: str,
        message: str,
        message_ja: str,
        contractor_id: str | None = None,
        other_contractor_id: str | None = None,
        source: str | None = None,
        award_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one doubt for staff, once: the same doubt reported again changes nothing."""
        material = [kind, contractor_id, other_contractor_id, source, award_id,
                    sorted((detail or {}).items())]  # fmt: skip
        key = hashlib.sha256(repr(material).encode()).hexdigest()
        if key in self._reported:
            return
        self._reported.add(key)
        if session.scalar(select(ContractorConflict.id).where(ContractorConflict.key == key)):
            return
        session.add(
            ContractorConflict(
                key=key,
                kind=kind,
                contractor_id=contractor_id,
                other_contractor_id=other_contractor_id,
                source=source,
                award_id=award_id,
                message=message[:4000],
                message_ja=message_ja[:4000],
                detail=dict(detail or {}),
                created_at=utcnow(),
            )
        )
        self.conflicts += 1
        log.warning("contractor conflict (%s): %s", kind, message)

    def _name_candidates(
        self, session: Session, ref: ContractorRef, exclude: str | None = None
    ) -> list[Contractor]:
        """Known contractors of the same name that could be the same legal entity (none of
        their numbers or codes contradicts the ref's)."""
        if not ref.name:
            return []
        key = name_key(ref.name)[:200]
        with session.no_autoflush:
            rows = list(
                session.scalars(
                    select(Contractor)
                    .where(Contractor.name_key == key)
                    .order_by(Contractor.created_at, Contractor.id)
                    .limit(20)
                )
            )
            # Contractors this run made are not flushed yet (lookups never flush the batch).
            rows += [
                c for cid, c in self._objects.items()
                if cid in self.created and c.name_key == key and c not in rows
            ]  # fmt: skip
            found = []
            code = registry_code_key(ref.registry_code) if ref.registry_code else None
            for row in rows:
                if row.id == exclude:
                    continue
                if ref.corporate_number and row.corporate_number:
                    continue  # two numbers: two legal entities, whatever their names
                if code is not None:
                    codes = {
                        value
                        for (kind, value), owner in self._ids.items()
                        if owner == row.id and kind == "registry_code"
                    } | set(
                        session.scalars(
                            select(ContractorIdentity.value).where(
                                ContractorIdentity.contractor_id == row.id,
                                ContractorIdentity.kind == "registry_code",
                            )
                        )
                    )
                    if codes and code not in codes:
                        continue  # another code: another contractor
                found.append(row)
        return found

    def identify(
        self,
        session: Session,
        ref: ContractorRef,
        *,
        source: str | None = None,
        award_id: str | None = None,
    ) -> Identified:
        """The contractor a record names, created when its number or code is new. A ref with
        neither is not identified (only candidates are reported)."""
        keys = self._keys(ref)
        if not keys:
            candidates = self._name_candidates(session, ref)
            if candidates:
                self.report(
                    session,
                    kind="name_candidate",
                    message=(
                        f"{source}:{award_id}: {ref.name!r} has no corporate number or registry "
                        f"code; known contractors of that name: "
                        + ", ".join(f"{c.id} ({c.corporate_number or '-'})" for c in candidates)
                    ),
                    message_ja=(
                        f"落札番号 {award_id}: 「{ref.name}」には法人番号も業者番号もありません。"
                        f"同じ商号の事業者が{len(candidates)}件あります。同一か確認してください。"
                    ),
                    contractor_id=candidates[0].id,
                    source=source,
                    award_id=award_id,
                    detail={"name": ref.name, "candidates": [c.id for c in candidates]},
                )
            note = (
                "受注者を特定できません(法人番号・業者番号がなく、商号だけでは同一の事業者と"
                "判断しません)。"
                + (f"同じ商号の事業者が{len(candidates)}件あります。" if candidates else "")
            )
            return Identified(None, note=note)
        self.prefetch(session, [ref])
        number = ref.corporate_number
        code = registry_code_key(ref.registry_code) if ref.registry_code else None
        by_number = self._ids.get(("corporate_number", number)) if number else None
        by_code = self._ids.get(("registry_code", code)) if code else None
        if by_number is not None:
            contractor = self._get(session, by_number)
            if by_code is not None and by_code != by_number:
                owner = self._get(session, by_code)
                self.report(
                    session,
                    kind="code_corporate_mismatch",
                    message=(
                        f"registry code {code} belongs to {owner.name} ({owner.corporate_number or '-'}) "
                        f"but a record gives it with corporate number {number} ({contractor.name}); "
                        "the corporate number decided"
                    ),
                    message_ja=(
                        f"業者番号 {code} は「{owner.name}」のものですが、法人番号 {number}"
                        f"(「{contractor.name}」)の記録に書かれています。法人番号で判断しました。"
                    ),
                    contractor_id=contractor.id,
                    other_contractor_id=owner.id,
                    source=source,
                    award_id=award_id,
                    detail={"registry_code": code, "corporate_number": number},
                )
            elif code is not None and by_code is None:
                self._learn(session, contractor, "registry_code", code)
            return Identified(contractor)
        if by_code is not None:
            owner = self._get(session, by_code)
            if number and owner.corporate_number and owner.corporate_number != number:
                contractor = self._new(session, ref, [("corporate_number", number)])
                self.report(
                    session,
                    kind="code_corporate_mismatch",
                    message=(
                        f"registry code {code} belongs to {owner.name} ({owner.corporate_number}) "
                        f"but a record gives it with corporate number {number}; a new contractor "
                        "was made for that number, without the code"
                    ),
                    message_ja=(
                        f"業者番号 {code} は法人番号 {owner.corporate_number} の「{owner.name}」の"
                        f"ものですが、法人番号 {number} の記録に書かれています。"
                        "法人番号で別の事業者として扱いました。"
                    ),
                    contractor_id=contractor.id,
                    other_contractor_id=owner.id,
                    source=source,
                    award_id=award_id,
                    detail={"registry_code": code, "corporate_number": number},
                )
                return Identified(contractor, created=True)
            if number and not owner.corporate_number:
                owner.corporate_number = number
                self._learn(session, owner, "corporate_number", number)
            if ref.name and owner.name and loose_name(ref.name) != loose_name(owner.name):
                self.report(
                    session,
                    kind="code_name_mismatch",
                    message=(
                        f"registry code {code} is {owner.name!r} but a record names {ref.name!r}"
                    ),
                    message_ja=(
                        f"業者番号 {code} は「{owner.name}」ですが、記録の商号は「{ref.name}」です。"
                        "業者番号で判断しました。"
                    ),
                    contractor_id=owner.id,
                    source=source,
                    award_id=award_id,
                    detail={"registry_code": code, "name": ref.name},
                )
            return Identified(owner)
        contractor = self._new(session, ref, keys)
        candidates = self._name_candidates(session, ref, exclude=contractor.id)
        if candidates:
            self.report(
                session,
                kind="name_candidate",
                message=(
                    f"new contractor {ref.name!r} ({number or code}) has the name of known "
                    "contractors without a contradicting number: "
                    + ", ".join(c.id for c in candidates)
                    + "; not merged"
                ),
                message_ja=(
                    f"新しい事業者「{ref.name}」({number or code})と同じ商号の事業者が"
                    f"{len(candidates)}件あります。統合はしていません。同一か確認してください。"
                ),
                contractor_id=contractor.id,
                other_contractor_id=candidates[0].id,
                source=source,
                detail={"candidates": [c.id for c in candidates]},
            )
        return Identified(contractor, created=True)

    def resolve(self, session: Session, ref: ContractorRef, **where: Any) -> Contractor:
        """The contractor a record names, or ``intake.contractor_unidentified`` for a ref
        with neither corporate number nor registry code."""
        found = self.identify(session, ref, **where)
        if found.contractor is None:
            raise RecordError(
                "intake.contractor_unidentified",
                f"{ref.describe()}: no corporate number or registry code; a name alone never "
                "identifies a contractor",
                f"「{ref.describe()}」: 法人番号または業者番号が必要です(商号だけでは事業者を"
                "特定しません)。",
            )
        return found.contractor


def upsert_contractor(
    *,
    session: Session,
    source: str,
    draft: ContractorDraft,
    directory: ContractorDirectory | None = None,
) -> str:
    """Record one bidder-registry row: the contractor and its registered e-mail addresses.
    Returns ``created``, ``updated`` or ``unchanged``; the same file twice changes nothing
    (a contractor listed on several rows takes its primary address and name from its first
    row in the run)."""
    directory = directory or ContractorDirectory()
    found = directory.identify(session, draft.contractor, source=source)
    if found.contractor is None:
        directory.resolve(session, draft.contractor, source=source)  # raises
    contractor = found.contractor
    assert contractor is not None
    existing = set(
        session.scalars(
            select(ContractorEmail.email).where(ContractorEmail.contractor_id == contractor.id)
        )
    )
    changed = [email for email in draft.emails if email not in existing]
    for email in changed:
        session.add(ContractorEmail(contractor_id=contractor.id, email=email, source=source))
    first_row = contractor.id not in directory.touched
    directory.touched.add(contractor.id)
    if (
        draft.emails
        and (contractor.email is None or first_row)
        and contractor.email != draft.emails[0]
    ):
        contractor.email = draft.emails[0]
        changed = changed or [draft.emails[0]]
    name = draft.contractor.name
    if (
        first_row
        and name
        and contractor.name != name[:200]
        and loose_name(name) == loose_name(contractor.name)
    ):
        contractor.name = name[:200]  # the same name spelt as the registry spells it
        contractor.name_key = name_key(name)[:200]
        changed = changed or ["name"]
    if found.created:
        return "created"
    return "updated" if changed else "unchanged"


def find_contractor(
    *, session: Session, corporate_number: str | None = None, registry_code: str | None = None
) -> Contractor | None:
    """The contractor with this corporate number (else registry code); never by name."""
    directory = ContractorDirectory()
    found = directory.find_id(
        session, ContractorRef(corporate_number=corporate_number, registry_code=registry_code)
    )
    return session.get(Contractor, found) if found else None


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
    contractor = directory.resolve(session, draft.contractor, source=source)
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
        "measures": draft.measures,
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
        from core.envelopes import cancel_envelope

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


def list_conflicts(
    *, session: Session, open_only: bool = True, limit: int = 100
) -> Sequence[ContractorConflict]:
    """Doubts about contractors' identities, newest first."""
    query = select(ContractorConflict).order_by(ContractorConflict.id.desc()).limit(limit)
    if open_only:
        query = query.where(ContractorConflict.resolved_at.is_(None))
    return session.scalars(query).all()


def resolve_conflict(
    *, session: Session, conflict_id: int, actor: str, resolution: str
) -> ContractorConflict:
    """Staff mark a conflict as checked (audited); holding or releasing awards is separate."""
    conflict = session.get(ContractorConflict, conflict_id)
    if conflict is None:
        raise NotFoundError(
            "not_found.conflict", f"no conflict {conflict_id}", "確認事項が見つかりません。"
        )
    conflict.resolved_at, conflict.resolved_by = utcnow(), actor
    conflict.resolution = resolution[:2000]
    record_event(
        session=session,
        action="contractor.conflict_resolved",
        actor=actor,
        detail={"conflict": conflict_id, "kind": conflict.kind, "resolution": resolution},
    )
    return conflict


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


def list_replayable(
    *, session: Session, source: str, run_id: int | None = None
) -> Sequence[DeadLetter]:
    """Dead letters of a source not yet replayed that hold a record (oldest first); records
    the source could not read whole (``format.*``: undecodable, wrong column count) are not
    replayable: their file is read again instead."""
    query = (
        select(DeadLetter)
        .where(
            DeadLetter.source == source,
            DeadLetter.replayed_at.is_(None),
            DeadLetter.code.not_like("format.%"),
        )
        .order_by(DeadLetter.id)
    )
    if run_id is not None:
        query = query.where(DeadLetter.run_id == run_id)
    return [d for d in session.scalars(query) if d.record]


def mark_replayed(*, session: Session, dead_letter_ids: Sequence[int]) -> None:
    """Note that these dead letters were taken in again (a new failure is a new dead letter)."""
    now = utcnow()
    for start in range(0, len(dead_letter_ids), 500):
        for row in session.scalars(
            select(DeadLetter).where(DeadLetter.id.in_(dead_letter_ids[start : start + 500]))
        ):
            row.replayed_at = now


def reset_cursor(
    *, session: Session, source: str, cursor: Mapping[str, Any], actor: str
) -> dict[str, Any]:
    """Set a source's bookmark by hand (audited): the next run reads from there. Returns the
    bookmark it replaced."""
    previous = get_cursor(session=session, source=source)
    store_cursor(session=session, source=source, cursor=cursor)
    record_event(
        session=session,
        action="source.cursor_reset",
        actor=actor,
        detail={"source": source, "from": previous, "to": dict(cursor)},
    )
    return previous


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
