"""The last step: validation data and a document timestamp on every document, then the
completion certificate (:func:`seal_envelope`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from io import SEEK_END

from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from core.envelopes.amendments import original_of
from core.envelopes.certificate_facts import DocumentCheck, check_document, issue_certificate
from core.envelopes.documents import (
    check_documents_kept,
    current_documents,
    new_revision,
    read_document_stream,
)
from core.envelopes.lifecycle import compare_and_set, get_envelope
from core.errors import StateError
from core.model import Document, DocumentRevision, Envelope, utcnow
from core.records.audit import record_event
from core.records.facts import fill_record_facts, record_facts
from core.runtime import Runtime
from core.signing.signatures import deferring_retriable
from core.signing.tasks import close_task, seal_key
from core.staged_blobs import Staged, commit_with, stage
from core.states import EnvelopeState, check_envelope_transition

__all__ = [
    "completion_certificate",
    "seal_envelope",
]


@dataclass
class _Sealed:
    """What sealing the documents made, before the envelope row changes."""

    revisions: list[tuple[Document, DocumentRevision]]
    expiries: dict[str, dt.datetime | None]
    certificate: Staged
    now: dt.datetime
    # the seals and the certificate, committed with the envelope's completion
    # (core.staged_blobs) and written to the store right after
    staged: list[Staged]


def _seal_document(
    runtime: Runtime, doc: Document, staged: list[Staged]
) -> tuple[DocumentRevision, bytes]:
    """Seal one document, staging the seal (added to ``staged``) as an append revision
    (unattached); returns it with the sealed document's bytes."""
    # Decrypted a chunk at a time into one buffer with room for the seal, sealed in place there,
    # and only the appended revisions stored: no second copy of the document is made.
    current = read_document_stream(runtime, doc, room=runtime.signing.seal_size_hint())
    increment = runtime.signing.seal_increment(current)
    size = current.seek(0, SEEK_END)
    blob = stage(runtime, increment)
    staged.append(blob)
    revision = new_revision(doc, blob.blob_id, size=size, reason="seal")
    # getvalue() hands over the buffer itself (trimmed to its bytes), not a copy, so the
    # expiry and the check read the sealed document where it was sealed; closing the stream
    # lets those bytes go with the caller's reference (pyHanko's reader keeps the stream in
    # reference cycles, alive until the next garbage collection).
    data = current.getvalue()
    current.close()
    return revision, data


def _seal_documents(session: Session, runtime: Runtime, envelope: Envelope) -> _Sealed:
    """Validation data and a document timestamp on every document, each stored as a new
    revision (not yet attached), and the signed certificate. A retriable failure is recorded
    on the envelope and re-raised."""
    sealed: list[tuple[Document, DocumentRevision]] = []
    expiries: dict[str, dt.datetime | None] = {}
    checks: list[DocumentCheck] = []
    staged: list[Staged] = []
    with deferring_retriable(session, envelope):
        for doc in envelope.documents:
            revision, data = _seal_document(runtime, doc, staged)
            sealed.append((doc, revision))
            expiries[doc.id] = runtime.signing.timestamp_expiry(data)
            # hashed and verified now, for the certificate's document list and status line
            checks.append(check_document(runtime.signing, name=doc.name, data=data))
            del data  # keep one document's bytes alive at a time
        now = utcnow()
        # Signed and timestamped like the documents, before the envelope row is written: the
        # TSA round trips hold no lock (on SQLite, the database's write lock).
        certificate = issue_certificate(
            session=session,
            runtime=runtime,
            envelope=envelope,
            now=now,
            checks=checks,
            completing=True,
        )
    staged.append(stage(runtime, certificate))
    return _Sealed(sealed, expiries, staged[-1], now, staged)


def _mark_completed(
    session: Session, runtime: Runtime, envelope: Envelope, sealed: _Sealed
) -> None:
    """``sealing`` to ``completed`` (refused when another node got there first), the sealed
    revisions attached, the record facts filled and the completion audited."""
    now = sealed.now
    compare_and_set(
        session,
        Envelope,
        envelope.id,
        frozenset({EnvelopeState.SEALING.value}),
        {
            "state": EnvelopeState.COMPLETED.value,
            "completed_at": now,
            "updated_at": now,
            "last_error": None,
        },
        StateError(
            "state.already_sealed",
            "this envelope was already sealed",
            "この封筒は既に締結済みです。",
        ),
    )
    for doc, revision in sealed.revisions:
        doc.revisions.append(revision)
        doc.size = revision.size
        doc.timestamp_expires_at = sealed.expiries[doc.id]
    # 電帳法: every concluded envelope carries its search keys, and they are chained
    filled = fill_record_facts(envelope=envelope, concluded_at=now, buyer_name=runtime.buyer_name)
    record_event(
        session=session,
        action="envelope.completed",
        actor="system",
        envelope_id=envelope.id,
        at=now,
        detail={"facts": record_facts(envelope), "facts_filled": filled},
    )
    close_task(session=session, key=seal_key(envelope.id), now=now)
    set_committed_value(envelope, "state", EnvelopeState.COMPLETED)
    set_committed_value(envelope, "completed_at", now)
    set_committed_value(envelope, "updated_at", now)
    set_committed_value(envelope, "last_error", None)
    session.flush()


def _reissue_original_certificate(
    session: Session, runtime: Runtime, envelope: Envelope, now: dt.datetime
) -> None:
    """When ``envelope`` amends a concluded original, issue the original's certificate again
    so that it names this amendment too (it lists concluded amendments only, so this runs
    after the state change; amendments are rare). A TSA outage here leaves the envelope
    sealing, as for the documents."""
    original = original_of(session=session, envelope_id=envelope.id)
    if (
        original is None
        or original.state is not EnvelopeState.COMPLETED
        or original.documents_purged_at is not None  # nothing of a purged original is kept
    ):
        return
    with deferring_retriable(session, envelope):
        original_checks = [
            check_document(runtime.signing, name=name, data=data)
            for name, data in current_documents(runtime=runtime, envelope=original)
        ]
        reissued = issue_certificate(
            session=session, runtime=runtime, envelope=original, now=now, checks=original_checks
        )
    original.certificate_blob_id = runtime.blobs.put(reissued)
    record_event(
        session=session,
        action="certificate.reissued",
        actor="system",
        envelope_id=original.id,
        at=now,
        detail={"amended_by": envelope.id},
    )


def seal_envelope(*, session: Session, runtime: Runtime, envelope_id: str) -> Envelope:
    """Add validation data and a document timestamp to every document; issue the certificate.

    Retriable failures are recorded and re-raised with the envelope left in ``sealing``.
    """
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    check_envelope_transition(envelope.state, EnvelopeState.COMPLETED)
    sealed = _seal_documents(session, runtime, envelope)
    _mark_completed(session, runtime, envelope, sealed)
    envelope.certificate_blob_id = sealed.certificate.blob_id
    _reissue_original_certificate(session, runtime, envelope, sealed.now)
    runtime.notify(session, envelope, "envelope.completed")
    # the seals and the certificate commit with the completion: its one durable write
    commit_with(session, runtime, sealed.staged)
    return envelope


def completion_certificate(*, runtime: Runtime, envelope: Envelope) -> bytes:
    """The completion certificate PDF of a completed envelope."""
    if envelope.state is not EnvelopeState.COMPLETED or envelope.certificate_blob_id is None:
        raise StateError(
            "state.not_completed",
            "the envelope is not completed yet",
            "締結が完了していないため、締結証明書はまだ発行できません。",
        )
    check_documents_kept(envelope)
    return runtime.blobs.get(envelope.certificate_blob_id)
