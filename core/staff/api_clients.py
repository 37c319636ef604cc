"""Systems that use the envelope API, their tokens, and what each may see.

Each system (an e-bidding system, a document-management system) gets one bearer token, shown
once when it is created; only the token's SHA-256 is stored. A system sees only the envelopes
it created: every lookup goes through :func:`get_client_envelope`, which answers
``not_found.envelope`` for another system's envelope exactly as for one that does not exist.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from core.envelopes.lifecycle import get_envelope
from core.envelopes.links import hash_token
from core.errors import AuthError, InputError, NotFoundError
from core.model import ApiClient, ApiEnvelope, AuthThrottle, Envelope, Staff, utcnow
from core.records.audit import record_event
from core.staff.attempts import (
    address_counter,
    admits,
    lock_counter,
    reserve_attempt,
    throttle_counter,
)
from core.states import EnvelopeState

__all__ = [
    "DEFAULT_SCOPES",
    "SCOPES",
    "TokenPolicy",
    "authenticate",
    "client_department",
    "client_search_scope",
    "create_api_client",
    "find_idempotent",
    "get_client_envelope",
    "list_api_clients",
    "list_client_envelopes",
    "record_ownership",
    "require_scope",
    "revoke_api_client",
    "update_api_client",
]

SCOPES = ("awards:read", "awards:write", "envelopes:read", "envelopes:write", "staff:write")
# What a client gets when none is named: staff:write (the staff import, which can disable every
# account) only ever on request.
DEFAULT_SCOPES = ("awards:read", "awards:write", "envelopes:read", "envelopes:write")
_TOKEN_PREFIX = "kgw_"  # noqa: S105 - a prefix, not a secret


def create_api_client(
    *, session: Session, name: str, scopes: Sequence[str] = DEFAULT_SCOPES
) -> tuple[ApiClient, str]:
    """Register a system; returns the row and its token (shown once, never stored)."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InputError(
            "api_client.bad_name", "a client needs a name of 1-100 characters", "名前が不正です。"
        )
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InputError(
            "api_client.bad_scope",
            f"unknown scopes {unknown}; known: {list(SCOPES)}",
            "権限(スコープ)の指定が正しくありません。",
        )
    if session.scalar(select(ApiClient.id).where(ApiClient.name == name)) is not None:
        raise InputError(
            "api_client.exists", f"an API client named {name!r} exists", "同名の連携先があります。"
        )
    token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient(
        name=name,
        token_hash=hash_token(token),
        token_hint=token[: len(_TOKEN_PREFIX) + 6],
        scopes=sorted(set(scopes)),
        created_at=utcnow(),
    )
    session.add(client)
    session.flush()
    return client, token


def list_api_clients(*, session: Session) -> Sequence[ApiClient]:
    """Every registered system, by name."""
    return session.scalars(select(ApiClient).order_by(ApiClient.name)).all()


def revoke_api_client(*, session: Session, name: str) -> ApiClient:
    """Stop a system's token from working (its envelopes stay)."""
    client = session.scalar(select(ApiClient).where(ApiClient.name == name))
    if client is None:
        raise NotFoundError(
            "not_found.api_client", f"no API client {name!r}", "連携先がありません。"
        )
    if client.revoked_at is None:
        client.revoked_at = utcnow()
    return client


def _unauthorized() -> AuthError:
    return AuthError(
        "auth.invalid_token",
        "missing, unknown or revoked API token",
        "APIトークンが指定されていないか、無効です。",
    )


@dataclass(frozen=True)
class TokenPolicy:
    """How many wrong tokens one caller address may present before it is locked out, and for
    how long. A token carries 256 random bits, so the limit is not what keeps a token secret;
    it stops a scan and tells the audit log about it."""

    max_failures: int = 20
    lockout: dt.timedelta = dt.timedelta(minutes=15)


def authenticate(
    *,
    session: Session,
    token: str | None,
    ip: str | None = None,
    policy: TokenPolicy | None = None,
    now: dt.datetime | None = None,
) -> ApiClient:
    """The live client holding ``token``, or ``auth.invalid_token``.

    Wrong tokens are counted per caller address (:mod:`core.staff.attempts`): each reserves one
    of ``policy.max_failures`` attempts, the one that uses the last locks the address out for
    ``policy.lockout``, and a locked-out address is answered ``auth.invalid_token`` whatever
    token it holds, without looking it up (the audit log records ``api.locked``).

    Unlike a password or an access code, a token is looked up before an attempt is reserved:
    the lookup is one indexed read of 256 random bits (no slow hash), and what decides a wrong
    token's answer and the lock is still its reservation alone, so parallel guesses cannot
    exceed the limit. A right token only reads, at the start, that its address is open: an
    authenticated call writes nothing and takes no lock to authenticate, so no call waits for
    another caller's writes (SQLite has one writer at a time, and every call from one address
    would otherwise update the same row).
    """
    policy = policy or TokenPolicy()
    now = now or utcnow()
    key = f"api_token:{ip or '-'}"
    lock = {AuthThrottle.locked_until: now + policy.lockout, AuthThrottle.failures: 0}
    counter = address_counter(key=key, limit=policy.max_failures, now=now)
    if not admits(session=session, counter=counter):
        # Locked, or at or over a limit lowered since its failures were counted: then locked
        # now, so it expires like any lock instead of refusing the address for good. (A wrong
        # token's reservation and its lock commit together, so unlike a password's, a row
        # seen open at its limit is never an attempt still being checked.)
        lock_counter(session=session, counter=counter, values=lock)
        _refuse_locked(session, ip)
    client = None
    if token and token.startswith(_TOKEN_PREFIX) and len(token) <= 200:
        client = session.scalar(select(ApiClient).where(ApiClient.token_hash == hash_token(token)))
    if client is not None and client.revoked_at is None:
        session.commit()  # ends the reads: nothing was written
        return client
    counter = throttle_counter(session=session, key=key, limit=policy.max_failures, now=now)
    reserved = reserve_attempt(session=session, counter=counter)
    if reserved is None:  # locked by a parallel guess since the first read
        _refuse_locked(session, ip)
    if reserved >= policy.max_failures and lock_counter(
        session=session, counter=counter, values=lock
    ):
        record_event(
            session=session,
            action="api.lockout",
            actor=ip or "-",
            ip=ip,
            detail={"failures": reserved},
        )
    session.commit()
    raise _unauthorized()


def _refuse_locked(session: Session, ip: str | None) -> NoReturn:
    session.commit()
    record_event(session=session, action="api.locked", actor=ip or "-", ip=ip)
    session.commit()
    raise _unauthorized()


def require_scope(client: ApiClient, scope: str) -> None:
    """Raise ``auth.forbidden`` unless the client holds ``scope``."""
    if scope not in client.scopes:
        raise AuthError(
            "auth.forbidden",
            f"this token lacks the scope {scope}",
            "このAPIトークンにはこの操作の権限がありません。",
            details={"scope": scope},
        )


def record_ownership(
    *,
    session: Session,
    client_id: str,
    envelope_id: str,
    idempotency_key: str | None = None,
    request_sha256: str | None = None,
) -> ApiEnvelope:
    """Note that ``client_id`` created ``envelope_id`` (in the creating transaction)."""
    row = ApiEnvelope(
        envelope_id=envelope_id,
        client_id=client_id,
        idempotency_key=idempotency_key,
        request_sha256=request_sha256,
        created_at=utcnow(),
    )
    session.add(row)
    return row


def find_idempotent(*, session: Session, client_id: str, key: str) -> ApiEnvelope | None:
    """The envelope a client created earlier under ``key``, if any."""
    return session.scalar(
        select(ApiEnvelope).where(
            ApiEnvelope.client_id == client_id, ApiEnvelope.idempotency_key == key
        )
    )


def _not_found(envelope_id: str) -> NotFoundError:
    return NotFoundError(
        "not_found.envelope", f"no envelope {envelope_id}", "指定された封筒が見つかりません。"
    )


def get_client_envelope(*, session: Session, client_id: str, envelope_id: str) -> Envelope:
    """One of the client's own envelopes; another system's is ``not_found`` like a missing one."""
    owned = session.scalar(
        select(ApiEnvelope.envelope_id).where(
            ApiEnvelope.envelope_id == envelope_id, ApiEnvelope.client_id == client_id
        )
    )
    if owned is None:
        raise _not_found(envelope_id)
    return get_envelope(session=session, envelope_id=envelope_id)


def list_client_envelopes(
    *,
    session: Session,
    client_id: str,
    state: EnvelopeState | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[Sequence[Envelope], int]:
    """The client's envelopes, newest first, and how many there are in all."""
    condition = [ApiEnvelope.client_id == client_id]
    if state is not None:
        condition.append(Envelope.state == state.value)
    base = select(Envelope).join(ApiEnvelope, ApiEnvelope.envelope_id == Envelope.id)
    rows = session.scalars(
        base.where(*condition)
        .order_by(ApiEnvelope.created_at.desc(), Envelope.id)
        .limit(limit)
        .offset(offset)
    ).all()
    total = session.scalar(
        select(func.count())
        .select_from(Envelope)
        .join(ApiEnvelope, ApiEnvelope.envelope_id == Envelope.id)
        .where(*condition)
    )
    return rows, int(total or 0)


def _acting_staff(session: Session, client: ApiClient) -> Staff | None:
    if client.staff_id is None:
        return None
    staff = session.get(Staff, client.staff_id)
    if staff is None or staff.disabled:
        raise AuthError(
            "auth.staff_disabled",
            "the staff member this client acts for is disabled or gone",
            "このシステムが代理する職員のアカウントは無効です。",
        )
    return staff


def client_department(*, session: Session, client: ApiClient) -> str | None:
    """The department of an envelope created by ``client`` without one: the client's
    configured department, else that of the staff member it acts for."""
    if client.department:
        return client.department
    staff = _acting_staff(session, client)
    return staff.department if staff is not None else None


def client_search_scope(
    *, session: Session, client: ApiClient
) -> tuple[Staff | None, ColumnElement[bool] | None]:
    """What ``client`` may search: the staff member it acts for (their visibility, the same
    rows as on the staff pages), or else its own envelopes (a scope clause)."""
    staff = _acting_staff(session, client)
    if staff is not None:
        return staff, None
    own = select(ApiEnvelope.envelope_id).where(ApiEnvelope.client_id == client.id)
    return None, Envelope.id.in_(own)


def update_api_client(
    *,
    session: Session,
    name: str,
    department: str | None = None,
    staff_email: str | None = None,
) -> ApiClient:
    """Set a client's default department and/or the staff member it acts for ("" clears)."""
    client = session.scalar(select(ApiClient).where(ApiClient.name == name))
    if client is None:
        raise NotFoundError(
            "not_found.api_client", f"no API client {name!r}", "APIクライアントが見つかりません。"
        )
    if department is not None:
        client.department = department.strip() or None
    if staff_email is not None:
        if not staff_email.strip():
            client.staff_id = None
        else:
            staff = session.scalar(select(Staff).where(Staff.email == staff_email.strip().lower()))
            if staff is None:
                raise NotFoundError(
                    "not_found.staff",
                    f"no staff member {staff_email!r}",
                    "職員が見つかりません。",
                )
            client.staff_id = staff.id
    return client
