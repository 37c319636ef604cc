"""What staff do when a sent envelope goes wrong, without cancelling and starting again.

Each action is checked (only while the party has not acted, never for a cc), recorded as an
audit event with who did it, and tells by mail whom it affects (observer events, so the mail
commits with the change):

- :func:`unlock_party`: a link locked by wrong access codes works again (``party.unlocked``:
  the party is told it may try again).
- :func:`change_access_code`: a new access code for a link party (``party.code_changed``: the
  party is told a new code will come by another channel; the code itself is never mailed).
- :func:`readdress_party`: correct a party's name or e-mail address before it acted, or replace
  the signer by another person (``replace=True``, a reason required): its links stop working,
  the new address gets a new request (``party.resent``), and the old address is told only that
  the request moved (``party.readdressed``: no title, no link).
- :func:`remind_party`: remind the current party now (``party.reminded``).
- :func:`extend_deadline`: a later signing deadline (``envelope.deadline_extended``: the current
  party is told).
- :func:`locked_party_ids`: which parties are locked out, for the lists and the detail page.

Resending a request is :func:`core.envelopes.links.resend_request`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.envelopes.creation import check_authentication_means, check_staff_party
from core.envelopes.lifecycle import check_party_can_act, get_envelope, get_party
from core.envelopes.links import revoke_party_links, set_access_code
from core.errors import InputError, StateError
from core.model import Envelope, LinkPurpose, Party, SigningLink, utcnow
from core.records.audit import record_event
from core.runtime import Runtime
from core.states import ACTIONABLE_PARTY_STATES, EnvelopeState, PartyRole, PartyState
from core.timezone import JST

__all__ = [
    "change_access_code",
    "extend_deadline",
    "locked_party_ids",
    "readdress_party",
    "remind_party",
    "unlock_party",
]

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _not_acted(session: Session, envelope_id: str, party_id: str) -> Party:
    """A party of a draft or sent envelope that has not acted yet (and is not a cc)."""
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    if party.envelope.state not in (EnvelopeState.DRAFT, EnvelopeState.SENT):
        raise StateError(
            "state.envelope_not_open",
            f"the envelope is {party.envelope.state.value}",
            "この契約は手続き中ではないため、変更できません。",
        )
    if party.role is PartyRole.CC:
        raise StateError(
            "state.cc_cannot_act", "a cc party has no request", "CC(写し送付先)は対象外です。"
        )
    if party.state not in (PartyState.WAITING, *ACTIONABLE_PARTY_STATES):
        raise StateError(
            "state.already_acted",
            f"party {party.routing_order} has already acted ({party.state.value})",
            "この署名者は既に手続きを終えているため、変更できません。",
        )
    return party


def _is_current(party: Party) -> bool:
    return party.envelope.state is EnvelopeState.SENT and party.state in ACTIONABLE_PARTY_STATES


def locked_party_ids(*, session: Session, envelope_ids: Iterable[str]) -> set[str]:
    """The parties (of these envelopes) whose live signing link is locked by wrong codes."""
    ids = list(envelope_ids)
    if not ids:
        return set()
    rows = session.scalars(
        select(SigningLink.party_id).where(
            SigningLink.envelope_id.in_(ids),
            SigningLink.purpose == LinkPurpose.SIGN.value,
            SigningLink.locked_at.is_not(None),
            SigningLink.revoked_at.is_(None),
        )
    )
    return {r for r in rows if r is not None}


def unlock_party(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str,
    actor: str,
    ip: str | None = None,
) -> Party:
    """Unlock the party's locked signing link (after confirming with the party that the wrong
    codes were theirs); its failure count starts again. ``party.not_locked`` when none is."""
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    check_party_can_act(party)
    result = session.execute(
        update(SigningLink)
        .where(
            SigningLink.party_id == party.id,
            SigningLink.purpose == LinkPurpose.SIGN.value,
            SigningLink.locked_at.is_not(None),
            SigningLink.revoked_at.is_(None),
        )
        .values(locked_at=None, failed_attempts=0)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise InputError(
            "party.not_locked",
            f"party {party.routing_order} has no locked link",
            "この署名者のURLはロックされていません。",
        )
    record_event(
        session=session,
        action="party.unlocked",
        actor=actor,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        detail={"links": int(result.rowcount)},  # type: ignore[attr-defined]
    )
    runtime.notify(session, party.envelope, "party.unlocked", party)
    session.flush()
    return party


def change_access_code(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str,
    code_hash: str,
    actor: str,
    ip: str | None = None,
) -> Party:
    """Set a new access code (hashed by the caller's policy) for a party that signs by link;
    the party, once asked, is told that a new code will reach it by another channel."""
    party = _not_acted(session, envelope_id, party_id)
    if party.staff_id is not None:
        raise InputError(
            "party.staff_has_no_code",
            "this party signs as staff and has no access code",
            "この署名者は職員としてログインして署名するため、アクセスコードはありません。",
        )
    set_access_code(session=session, party_id=party.id, code_hash=code_hash)
    record_event(
        session=session,
        action="party.access_code_changed",
        actor=actor,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
    )
    if party.state is not PartyState.WAITING:
        runtime.notify(session, party.envelope, "party.code_changed", party)
    session.flush()
    return party


def _check_person(name: str, email: str) -> tuple[str, str]:
    name, email = name.strip(), email.strip()
    if not name or len(name) > 200:
        raise InputError(
            "party.bad_name", "a name of 1 to 200 characters is needed", "氏名を入力してください。"
        )
    if not _EMAIL.match(email) or len(email) > 320:
        raise InputError(
            "party.bad_email",
            "a valid e-mail address is needed",
            "メールアドレスを正しく入力してください。",
        )
    return name, email


def readdress_party(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str,
    name: str,
    email: str,
    actor: str,
    staff: bool | None = None,
    code_hash: str | None = None,
    replace: bool = False,
    reason: str = "",
    ip: str | None = None,
) -> Party:
    """Correct a party's name or address (a typo), or with ``replace`` put another person in
    its place (a signer who left; a reason is required). ``staff`` binds the party to the staff
    account with the new address (None: as before); ``code_hash`` sets its access code. The
    party's links stop working; when it is the party's turn the new address gets a fresh
    request and the old one a notice that tells nothing of the contract."""
    party = _not_acted(session, envelope_id, party_id)
    name, email = _check_person(name, email)
    reason = reason.strip()
    if replace and not reason:
        raise InputError(
            "party.replace_reason_required",
            "replacing a signer needs a reason",
            "署名者を変更する理由を入力してください。",
        )
    bind = party.staff_id is not None if staff is None else staff
    account = check_staff_party(session=session, email=email) if bind else None
    if account is not None:
        email = account.email
    old_name, old_email = party.name, party.email
    if (
        (name, email.lower()) == (old_name, old_email.lower())
        and ((account.id if account else None) == party.staff_id)
        and code_hash is None
    ):
        raise InputError(
            "party.unchanged", "nothing to change", "氏名・メールアドレスが変更されていません。"
        )
    party.name, party.email = name, email
    party.staff_id = account.id if account is not None else None
    if code_hash is not None and account is None:
        set_access_code(session=session, party_id=party.id, code_hash=code_hash)
    session.flush()
    if party.envelope.state is EnvelopeState.SENT:  # a draft is checked when it is sent
        check_authentication_means(session=session, envelope=party.envelope)
    revoke_party_links(session=session, party_id=party.id, reason="readdressed")
    record_event(
        session=session,
        action="party.replaced" if replace else "party.corrected",
        actor=actor,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        detail={
            "from_name": old_name,
            "from_email": old_email,
            "to_name": name,
            "to_email": email,
            "staff": account is not None,
            "reason": reason,
        },
    )
    if _is_current(party):
        if old_email.lower() != email.lower():
            # A detached stand-in for the old address: told only that the request moved.
            old = Party(id=party.id, role=party.role, state=party.state, name=old_name,
                        email=old_email, routing_order=party.routing_order)  # fmt: skip
            runtime.notify(session, party.envelope, "party.readdressed", old)
        runtime.notify(session, party.envelope, "party.resent", party)
    session.flush()
    return party


def remind_party(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str,
    actor: str,
    ip: str | None = None,
) -> Party:
    """Remind the party whose turn it is, now (a fresh link for a link party)."""
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    check_party_can_act(party)
    if party.role is PartyRole.CC:
        raise StateError(
            "state.cc_cannot_act", "a cc party has no request", "CC(写し送付先)は対象外です。"
        )
    record_event(
        session=session, action="party.reminded", actor=actor, envelope_id=envelope_id,
        party_id=party.id, ip=ip,
    )  # fmt: skip
    runtime.notify(session, party.envelope, "party.reminded", party)
    session.flush()
    return party


def extend_deadline(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    deadline: dt.date,
    actor: str,
    ip: str | None = None,
    today: dt.date | None = None,
) -> Envelope:
    """Move the signing deadline of a draft or sent envelope later (never into the past, never
    earlier); the party whose turn it is is told the new date."""
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    if envelope.state not in (EnvelopeState.DRAFT, EnvelopeState.SENT):
        raise StateError(
            "state.envelope_not_open",
            f"the envelope is {envelope.state.value}",
            "この契約は手続き中ではないため、期限を変更できません。",
        )
    today = today or utcnow().astimezone(JST).date()
    if deadline < today or (envelope.deadline is not None and deadline <= envelope.deadline):
        raise InputError(
            "envelope.deadline_not_later",
            f"the new deadline {deadline} must be after {envelope.deadline or today}",
            "新しい締切日は、現在の締切日より後の日付を指定してください。",
            details={"deadline": str(envelope.deadline) if envelope.deadline else None},
        )
    previous = envelope.deadline
    envelope.deadline = deadline
    envelope.updated_at = utcnow()
    record_event(
        session=session,
        action="envelope.deadline_extended",
        actor=actor,
        envelope_id=envelope_id,
        ip=ip,
        detail={"from": str(previous) if previous else None, "to": str(deadline)},
    )
    current = next((p for p in envelope.parties if _is_current(p)), None)
    if current is not None:
        runtime.notify(session, envelope, "envelope.deadline_extended", current)
    session.flush()
    return envelope
