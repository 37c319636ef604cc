"""Contractors and their registered addresses: one record per corporate number (法人番号;
a name alone never merges two), conflicts for staff to resolve, and usage requests
(利用申出書: the contractor's signer and consent).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.drafts import ContractorDraft, ContractorRef, UsageRequestDraft
from core.errors import NotFoundError, RecordError
from core.intake.policy import IntakePolicy
from core.model import (
    Award,
    Contractor,
    ContractorConflict,
    ContractorEmail,
    ContractorIdentity,
    UsageRequest,
    new_id,
    utcnow,
)
from core.records.audit import record_event

__all__ = [
    "CONFLICT_KIND_JA",
    "ContractorDirectory",
    "Identified",
    "choose_request",
    "contractor_emails",
    "find_contractor",
    "find_usage_request",
    "list_conflicts",
    "loose_name",
    "name_key",
    "registry_code_key",
    "requests_by_contractor",
    "resolve_conflict",
    "upsert_contractor",
    "upsert_usage_request",
    "usage_request_for_envelope",
]

log = logging.getLogger(__name__)


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
    return choose_request(rows, award_ref)


def requests_by_contractor(
    session: Session, contractor_ids: set[str]
) -> dict[str, list[UsageRequest]]:
    """The open (not withdrawn) usage requests of each contractor, newest first."""
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


def choose_request(rows: Sequence[UsageRequest], award_ref: str | None) -> UsageRequest | None:
    """The request that governs an award: the newest one naming this award, else the newest
    general one (``rows`` newest first), else None."""
    specific = [r for r in rows if award_ref is not None and r.award_ref == award_ref]
    general = [r for r in rows if r.award_ref is None]
    candidates = specific or general
    return candidates[0] if candidates else None


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
