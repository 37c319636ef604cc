"""The signing worker: applies the queued signatures and seals (:mod:`core.signing.tasks`).

``keiyaku serve`` runs it in a background thread (woken at once after each approval) and
``keiyaku signing run [--loop]`` runs it on its own; any number of nodes may, since tasks are
leases. A task whose signature fails for a transient reason (TSA down, disk full, database
dropped) is tried again with backoff until it succeeds; the error is kept on the task and on the
envelope for staff to see.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.envelopes.lifecycle import get_envelope, get_party
from core.envelopes.sealing import seal_envelope
from core.errors import StateError
from core.model import Delivery, Envelope, Party, utcnow
from core.pushback.outbox import DispatchResult, RetryPolicy, dispatch
from core.runtime import Runtime
from core.signing.signatures import apply_pending_signature as _apply
from core.signing.tasks import SIGNING_RETRY, SIGNING_TARGET, enqueue_missing
from core.staged_blobs import flush_staged
from core.states import DeliveryState, EnvelopeState, PartyState

__all__ = [
    "WaitingSignature",
    "list_waiting",
    "process",
    "process_until_idle",
    "run_task",
    "waiting_ages",
]

log = logging.getLogger(__name__)


def run_task(*, session: Session, runtime: Runtime, payload: Mapping[str, Any]) -> None:
    """Apply one task: sign for the party (then seal when it was the last), or seal.

    Idempotent: a party already signed, an envelope already sealed or closed meanwhile (a
    cancel) is a no-op. Errors propagate (retriable ones are recorded on the envelope first).
    """
    try:
        _run_task(session=session, runtime=runtime, payload=payload)
    except StateError as exc:
        if exc.code not in ("state.already_acted", "state.already_sealed"):
            raise
        # another worker (or an inline caller) applied it first: done


def _run_task(*, session: Session, runtime: Runtime, payload: Mapping[str, Any]) -> None:
    envelope_id = str(payload["envelope_id"])
    party_id = payload.get("party_id")
    if party_id is not None:
        party = get_party(session=session, envelope_id=envelope_id, party_id=str(party_id))
        if party.state is not PartyState.SIGNING or party.envelope.state is not EnvelopeState.SENT:
            return
        # The graph just loaded is the one signed: it is not read a second time.
        party = _apply(session=session, runtime=runtime, envelope_id=envelope_id, party=party)
        if party.envelope.state is EnvelopeState.SEALING:
            # The last signature: seal at once rather than wait for the next claim (the seal
            # task queued with this state change is closed by the seal, or tried again if it
            # fails). seal_envelope reads the envelope itself.
            seal_envelope(session=session, runtime=runtime, envelope_id=envelope_id)
        return
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    if envelope.state is EnvelopeState.SEALING:
        seal_envelope(session=session, runtime=runtime, envelope_id=envelope_id)


def process(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    worker: str,
    lease: dt.timedelta = dt.timedelta(minutes=2),
    limit: int = 10,
    stop: Callable[[], bool] | None = None,
    policy: RetryPolicy = SIGNING_RETRY,
) -> DispatchResult:
    """One pass: claim due signing tasks as leases and apply each."""

    def handle(delivery: Delivery) -> None:
        with sessions() as session:
            run_task(session=session, runtime=runtime, payload=delivery.payload)

    result = dispatch(
        sessions=sessions,
        handlers={SIGNING_TARGET: handle},
        worker=worker,
        policy=policy,
        limit=limit,
        lease=lease,
        stop=stop,
    )
    if result.lost:
        # A signature or seal closes its own task in the transaction that records it, so the
        # dispatcher finds the row already done: that is this worker's success, not a lost lease.
        with sessions() as session:
            done = set(
                session.scalars(
                    select(Delivery.id).where(
                        Delivery.id.in_(result.lost),
                        Delivery.state == DeliveryState.DELIVERED.value,
                    )
                )
            )
        result.delivered.extend(i for i in result.lost if i in done)
        result.lost = [i for i in result.lost if i not in done]
    return result


def process_until_idle(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    worker: str,
    lease: dt.timedelta = dt.timedelta(minutes=2),
    stop: Callable[[], bool] | None = None,
    policy: RetryPolicy = SIGNING_RETRY,
) -> DispatchResult:
    """Make the staged signature blobs durable in the store (:mod:`core.staged_blobs`), queue
    what has no task yet, then run passes until no task is due now."""
    try:
        flush_staged(sessions=sessions, runtime=runtime)
    except Exception:  # the rows keep them readable: a full disk must not stop the signing
        log.exception("staged blobs not flushed; trying again on the next pass")
    with sessions() as session:
        queued = enqueue_missing(session=session)
    if queued:
        log.warning("queued %d signing task(s) that had none", queued)
    total = DispatchResult()
    while not (stop is not None and stop()):
        result = process(
            sessions=sessions, runtime=runtime, worker=worker, lease=lease, stop=stop, policy=policy
        )
        for name in ("delivered", "retrying", "dead", "lost", "released"):
            getattr(total, name).extend(getattr(result, name))
        if not (result.delivered or result.retrying or result.dead or result.lost):
            break
        if result.retrying and not result.delivered:
            break  # everything due failed again: its backoff decides when to try next
    return total


@dataclass(frozen=True)
class WaitingSignature:
    """A committed approval or a seal not applied yet, for staff and metrics."""

    envelope_id: str
    management_number: str
    title: str
    kind: str  # "signature" or "seal"
    party_name: str | None
    since: dt.datetime  # when the approval was committed (or sealing began)
    attempts: int
    last_error: str | None
    state: DeliveryState


def list_waiting(*, session: Session, envelope_id: str | None = None) -> list[WaitingSignature]:
    """Every signing task not done yet (oldest first), with its attempts and last error."""
    query = (
        select(Delivery, Envelope)
        .join(Envelope, Envelope.id == Delivery.envelope_id)
        .where(
            Delivery.target == SIGNING_TARGET,
            Delivery.state != DeliveryState.DELIVERED.value,
        )
        .order_by(Delivery.created_at, Delivery.id)
    )
    if envelope_id is not None:
        query = query.where(Delivery.envelope_id == envelope_id)
    rows: Sequence[Any] = session.execute(query).all()
    party_ids = [d.payload.get("party_id") for d, _e in rows if d.payload.get("party_id")]
    parties = {p.id: p for p in session.scalars(select(Party).where(Party.id.in_(party_ids))).all()}
    waiting = []
    for delivery, envelope in rows:
        party = parties.get(delivery.payload.get("party_id") or "")
        waiting.append(
            WaitingSignature(
                envelope_id=envelope.id,
                management_number=envelope.management_number,
                title=envelope.title,
                kind=str(delivery.payload.get("kind") or ("signature" if party else "seal")),
                party_name=party.name if party is not None else None,
                since=(party.approved_at if party and party.approved_at else delivery.created_at),
                attempts=delivery.attempts,
                last_error=delivery.last_error or envelope.last_error,
                state=delivery.state,
            )
        )
    return waiting


def waiting_ages(*, session: Session, now: dt.datetime | None = None) -> list[float]:
    """Seconds each not-yet-applied signing task has waited (for /metrics and /healthz)."""
    now = now or utcnow()
    return [(now - w.since).total_seconds() for w in list_waiting(session=session)]
