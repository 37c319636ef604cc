"""Buyer-side parties who are staff: their 署名待ち inbox and their approval from the staff pages.

A party bound to a staff account (``Party.staff_id``) never gets a link or an access code. It
logs in to the staff pages, opens the envelope from its inbox, and gives its instruction with
the same two steps as the signing pages; at that moment it types its password again (and its
one-time code when the account has TOTP), checked by the login's own code path with its failure
count and lockout. How it was authenticated is recorded on the approval (``staff_login`` or
``staff_login+totp``, 電子署名法 2条1項: who instructed, how authenticated, when), and the
approval goes through :func:`core.envelopes.approvals.record_approval` and the signing worker like any
other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.envelopes.approvals import (
    AUTH_STAFF,
    AUTH_STAFF_TOTP,
    check_party_values,
    record_approval,
)
from core.envelopes.lifecycle import check_party_can_act, get_envelope
from core.errors import AuthError, NotFoundError
from core.model import Envelope, Party, Staff
from core.records.audit import record_event
from core.staff.accounts import PasswordPolicy, authenticate
from core.states import ACTIONABLE_PARTY_STATES, EnvelopeState

__all__ = [
    "AwaitingSignature",
    "approve_as_staff",
    "get_staff_party",
    "list_awaiting",
]


@dataclass(frozen=True)
class AwaitingSignature:
    """One envelope waiting for the staff member's approval or signature."""

    envelope: Envelope
    party: Party


def list_awaiting(*, session: Session, staff: Staff) -> list[AwaitingSignature]:
    """The envelopes whose current party is bound to ``staff``, oldest request first."""
    rows = session.execute(
        select(Envelope, Party)
        .join(Party, Party.envelope_id == Envelope.id)
        .where(
            Party.staff_id == staff.id,
            Party.state.in_(sorted(s.value for s in ACTIONABLE_PARTY_STATES)),
            Envelope.state == EnvelopeState.SENT.value,
        )
        .order_by(Party.sent_at, Envelope.id)
    ).all()
    return [AwaitingSignature(envelope, party) for envelope, party in rows]


def get_staff_party(*, session: Session, staff: Staff, envelope_id: str) -> Party:
    """The party of one envelope bound to ``staff``: the one whose turn it is when there is
    one, else the last one bound to them. ``not_found.envelope`` when none is theirs (the same
    answer as a missing envelope, so nothing leaks)."""
    try:
        envelope = get_envelope(session=session, envelope_id=envelope_id)
    except NotFoundError:
        envelope = None
    own = [p for p in envelope.parties if p.staff_id == staff.id] if envelope else []
    if staff.disabled or not own:
        raise NotFoundError(
            "not_found.envelope", "no such envelope", "該当する契約が見つかりません。"
        )
    current = [p for p in own if p.state in ACTIONABLE_PARTY_STATES]
    return current[0] if current else own[-1]


def approve_as_staff(
    *,
    session: Session,
    staff: Staff,
    envelope_id: str,
    values: Mapping[str, str],
    password: str,
    policy: PasswordPolicy,
    totp_code: str | None = None,
    ip: str | None = None,
) -> Party:
    """The staff member's instruction to sign, after checking their password (and one-time
    code) again. A wrong password counts towards the account's lockout like a failed login,
    is committed, and raises ``auth.*``; field errors are raised before the password is
    checked. Commits."""
    party = get_staff_party(session=session, staff=staff, envelope_id=envelope_id)
    check_party_can_act(party)
    check_party_values(party, values)
    outcome = authenticate(
        session=session,
        email=staff.email,
        password=password,
        policy=policy,
        totp_code=totp_code,
        ip=ip,
    )
    if outcome.staff is None or outcome.staff.id != staff.id:
        record_event(
            session=session,
            action="party.reauth_failed",
            actor=staff.email,
            envelope_id=envelope_id,
            party_id=party.id,
            ip=ip,
        )
        session.commit()
        raise outcome.error or AuthError(
            "auth.login_failed", "re-authentication failed", "本人確認に失敗しました。"
        )
    method = AUTH_STAFF_TOTP if staff.totp_secret else AUTH_STAFF
    record_event(
        session=session,
        action="party.authenticated",
        actor=staff.email,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        detail={"method": method, "via": "staff pages"},
    )
    session.commit()
    return record_approval(
        session=session,
        envelope_id=envelope_id,
        party_id=party.id,
        values=values,
        auth_method=method,
        ip=ip,
    )
