"""A party's instruction: view, fill text boxes, approve (or sign).

Approving is two steps so that a TSA outage never leaves a document half-signed:
:func:`record_approval` stores the party's instruction (who, when, from where, how
authenticated) and moves the party to ``signing``, atomically and exactly once even
when the same approval is submitted twice at the same moment (a conditional
``UPDATE``); a signing task commits with it (:mod:`core.signing.tasks`). The signing
worker then applies the signature (:mod:`core.signing.signatures`).
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Mapping

from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from core.envelopes._approval_rows import write_approval
from core.envelopes.creation import SIGNING_ROLES
from core.envelopes.lifecycle import compare_and_set, get_party, require_current, set_party_state
from core.envelopes.sealing import seal_envelope
from core.errors import GatewayError, InputError, StateError
from core.model import Party, utcnow
from core.pushback.outbox import release_leases
from core.records.audit import record_event
from core.runtime import Runtime
from core.signing.signatures import record_retriable, record_signature, sign_documents
from core.signing.tasks import claim_task, enqueue_signature, seal_key
from core.staged_blobs import Staged, commit_with
from core.states import ACTIONABLE_PARTY_STATES, EnvelopeState, PartyState, check_party_transition

__all__ = [
    "AUTH_ACCESS_CODE",
    "AUTH_STAFF",
    "AUTH_STAFF_TOTP",
    "approve",
    "check_auth_method",
    "check_party_values",
    "record_approval",
    "record_view",
]

# How a party can have been authenticated when it gave its instruction: only what a real
# surface produces. The signing pages: the mailed link plus the access code; the staff pages:
# the staff login with the password typed again at signing, plus the one-time code when the
# account has TOTP.
AUTH_ACCESS_CODE = "email+access_code"
AUTH_STAFF = "staff_login"
AUTH_STAFF_TOTP = "staff_login+totp"
LINK_AUTH_METHODS = frozenset({AUTH_ACCESS_CODE})
STAFF_AUTH_METHODS = frozenset({AUTH_STAFF, AUTH_STAFF_TOTP})


def record_view(
    *, session: Session, envelope_id: str, party_id: str, ip: str | None = None
) -> Party:
    """The current party opened the documents (first view only is a state change)."""
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    require_current(party)
    if party.state is PartyState.SENT:
        now = utcnow()
        set_party_state(party, PartyState.VIEWED)
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
    require_current(party)
    if party.role not in SIGNING_ROLES:
        raise StateError(
            "state.cc_cannot_act", "a cc party cannot approve", "CC(写し送付先)は承認できません。"
        )
    check_auth_method(party, auth_method)
    cleaned = _check_values(party, values)
    check_party_transition(party.state, PartyState.SIGNING)
    return cleaned


def _already_acted() -> StateError:
    """A second submit of one approval (the once-only guard changed no row)."""
    return StateError(
        "state.already_acted",
        "this approval was already submitted",
        "この署名依頼は既に処理されています。",
    )


def _approved(
    session: Session,
    party: Party,
    *,
    now: dt.datetime,
    ip: str | None,
    auth_method: str,
    fields: int,
) -> None:
    """Audit an approval the guarded UPDATE just wrote, and mirror that row on ``party`` without
    another write (shared by :func:`record_approval` and :func:`approve`)."""
    record_event(
        session=session,
        action="party.approved",
        actor=party.email,
        envelope_id=party.envelope_id,
        party_id=party.id,
        ip=ip,
        at=now,
        detail={"method": auth_method, "fields": fields},
    )
    set_committed_value(party, "approved_at", now)
    set_committed_value(party, "approved_ip", ip)
    set_committed_value(party, "auth_method", auth_method)


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
    compare_and_set(
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
        _already_acted(),
    )
    for f in party.fields:
        f.value = cleaned[f.id]
    _approved(session, party, now=now, ip=ip, auth_method=auth_method, fields=len(cleaned))
    set_committed_value(party, "state", PartyState.SIGNING)
    # The signature is applied by the signing worker; its task commits with the approval, so
    # an approval the signer was told is complete can never be left unsigned.
    enqueue_signature(session=session, party=party, lease_to=lease_to)
    session.commit()
    return party


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

    The documents are signed first and the increments encrypted; then the approval, the
    signature, the increments themselves (:mod:`core.staged_blobs`) and the hand-on to the next
    party commit in one transaction, so that commit is the one durable write on the path and
    no signing task is needed; the increments' files are written right after it. If signing
    fails the approval is committed on its own with a task for the signing worker (and a
    retriable error recorded on the envelope), then the error is raised, as
    :func:`record_approval` would.
    """
    inline = f"inline:{secrets.token_hex(4)}"
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    cleaned = _check_approval(party, values, auth_method)
    check_party_transition(PartyState.SIGNING, PartyState.COMPLETED)
    now = utcnow()
    # Signed before anything is written (no lock is held meanwhile); the increments commit
    # with the rows that reference them.
    staged: list[Staged] = []
    try:
        new_revisions = sign_documents(runtime, party, now, cleaned, staged)
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
            record_retriable(session, party.envelope, exc, party_id=party.id)
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
        raise _already_acted()
    _approved(session, party, now=now, ip=ip, auth_method=auth_method, fields=len(cleaned))
    record_signature(session, runtime, party, new_revisions, now, stored=True)
    commit_with(session, runtime, staged)  # the increments: the approval's one durable write
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
