"""Applying a party's recorded approval: :func:`apply_pending_signature` signs every
document for that party and, in one transaction, points the documents at their new
revisions, completes the party, closes the task and hands the envelope to the next
party. When the TSA is down it records the error and leaves the party in
``signing``; the worker (:mod:`core.signing.worker`) tries again with backoff.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from io import SEEK_END

from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from core.envelopes.documents import new_revision, read_document_stream
from core.envelopes.lifecycle import advance_routing, compare_and_set, get_party
from core.errors import GatewayError, StateError
from core.model import Document, DocumentRevision, Envelope, Party, utcnow
from core.records.audit import record_event
from core.runtime import Runtime
from core.signing import approval_reason
from core.signing.tasks import close_task, signature_key
from core.staged_blobs import Staged, commit_with, stage
from core.states import PartyState, check_party_transition

__all__ = [
    "apply_pending_signature",
    "deferring_retriable",
    "record_retriable",
    "record_signature",
    "sign_documents",
]

log = logging.getLogger(__name__)


def _signature_field_name(party: Party) -> str:
    return f"kg_sig_{party.routing_order:02d}_{party.id[:8]}"


def apply_pending_signature(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str | None = None,
    party: Party | None = None,
) -> Party:
    """Sign every document for a party in ``signing``; commit the new revisions at once.

    ``party`` is one the caller just read with :func:`get_party` in this session (the worker
    checks its state first), so the envelope graph is not read again; else ``party_id`` is read.
    On a retriable failure (TSA down) the error is recorded on the envelope, committed, and
    re-raised; the party stays in ``signing`` with no document changed.
    """
    if party is None:
        if party_id is None:
            raise TypeError("apply_pending_signature needs party_id or party")
        party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    elif party.envelope_id != envelope_id:
        raise ValueError(f"party {party.id} is not of envelope {envelope_id}")
    return _sign_for_party(session, runtime, party)


def _sign_for_party(session: Session, runtime: Runtime, party: Party) -> Party:
    # The compare-and-set below and the unique (document, seq) of revisions make it safe to
    # work on objects loaded earlier in this session: a concurrent worker's success wins and
    # this one's work is dropped.
    envelope = party.envelope
    check_party_transition(party.state, PartyState.COMPLETED)
    assert party.approved_at is not None
    staged: list[Staged] = []
    with deferring_retriable(session, envelope, party_id=party.id):
        new_revisions = sign_documents(
            runtime,
            party,
            party.approved_at,
            {f.id: f.value or "" for f in party.fields},
            staged,
        )
    now = utcnow()
    # A concurrent retry of the same signature loses here; its blobs are never referenced.
    compare_and_set(
        session,
        Party,
        party.id,
        frozenset({PartyState.SIGNING.value}),
        {"state": PartyState.COMPLETED.value, "completed_at": now},
        StateError(
            "state.already_acted",
            "this signature was already applied",
            "この署名は既に適用されています。",
        ),
    )
    close_task(session=session, key=signature_key(party.id), now=now)
    record_signature(session, runtime, party, new_revisions, now)
    commit_with(session, runtime, staged)
    return party


def sign_documents(
    runtime: Runtime,
    party: Party,
    approved_at: dt.datetime,
    values: Mapping[str, str],
    staged: list[Staged],
) -> list[tuple[Document, DocumentRevision]]:
    """Sign every document for ``party`` with its fields' ``values`` (by field id); returns the
    revisions unattached. Each increment is encrypted and added to ``staged``, for the caller
    to commit with the revisions (:func:`core.staged_blobs.commit_with`). Writes nothing to the
    database or the store."""
    reason = approval_reason(name=party.name, email=party.email, at=approved_at)
    field_name = _signature_field_name(party)
    new_revisions: list[tuple[Document, DocumentRevision]] = []
    for doc in party.envelope.documents:
        by_name = {f.name: values.get(f.id, "") for f in party.fields if f.document_id == doc.id}
        # Decrypted a chunk at a time into one buffer, signed in place there, and only the
        # new revision stored: no copy of the whole document is made or compared.
        current = read_document_stream(runtime, doc, room=runtime.signing.increment_size_hint())
        increment = runtime.signing.sign_approval_increment(
            current, signature_field=field_name, reason=reason, values=by_name
        )
        size = current.seek(0, SEEK_END)
        # Freed now, not at the next garbage collection: pyHanko's reader and writer keep the
        # stream in reference cycles, so a plain del left it alive through the seal after a
        # last approval (two documents' bytes at once).
        current.close()
        blob = stage(runtime, increment)
        staged.append(blob)
        new_revisions.append((doc, new_revision(doc, blob.blob_id, size=size, reason="signature")))
    return new_revisions


def record_signature(
    session: Session,
    runtime: Runtime,
    party: Party,
    new_revisions: list[tuple[Document, DocumentRevision]],
    now: dt.datetime,
    *,
    stored: bool = False,
) -> None:
    """After the party's row was moved to ``completed``: attach the new revisions (unless
    ``stored`` already), record the signature and hand the envelope on (in the caller's
    transaction)."""
    envelope = party.envelope
    if not stored:
        for doc, revision in new_revisions:
            doc.revisions.append(revision)
            doc.size = revision.size
            doc.signature_count += 1
    envelope.last_error = None
    set_committed_value(party, "state", PartyState.COMPLETED)
    set_committed_value(party, "completed_at", now)
    record_event(
        session=session,
        action="party.signed",
        actor="system",
        envelope_id=envelope.id,
        party_id=party.id,
        at=now,
        detail={
            "signature_field": _signature_field_name(party),
            "documents": len(envelope.documents),
        },
    )
    advance_routing(session, runtime, envelope, now)


@contextmanager
def deferring_retriable(
    session: Session, envelope: Envelope, *, party_id: str | None = None
) -> Iterator[None]:
    """Run the block; a retriable failure in it (a TSA or store outage) is recorded with
    :func:`record_retriable` and re-raised, anything else is re-raised as it is."""
    try:
        yield
    except GatewayError as exc:
        if exc.retriable:
            record_retriable(session, envelope, exc, party_id=party_id)
        raise


def record_retriable(
    session: Session, envelope: Envelope, exc: GatewayError, *, party_id: str | None = None
) -> None:
    """Roll back what a transient signing fault interrupted and record, in a fresh
    transaction, that the work is deferred (``last_error`` and a ``signing.deferred`` event)."""
    session.rollback()
    envelope.last_error = f"{exc.code}: {exc.message_en}"
    record_event(
        session=session,
        action="signing.deferred",
        actor="system",
        envelope_id=envelope.id,
        party_id=party_id,
        detail={"code": exc.code, "message": exc.message_en},
    )
    session.commit()
    log.warning("envelope %s: signing deferred: %s", envelope.id, exc)
