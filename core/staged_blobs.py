"""Blobs whose one durable write is the database commit that refers to them.

An approval's signature revision is small (tens of KB). Stored the usual way, it was written
durably to the store and its mirror (a file and a folder fsynced in each) before the approval
committed, and the commit was a second durable write on the signer's click. Staged instead,
the encrypted blob is inserted in the approval's own transaction (``staged_blobs``), so the
commit is the one durable write; right after it the file is written to the store and mirror
without waiting for the disk (:func:`commit_with`), and :func:`flush_staged` (the signing
worker, on each pass) makes the files durable and deletes the rows. Until then, and after a
crash lost a file that was not yet durable, the store reads the blob from its row
(:func:`staged_reader`, wired as :attr:`core.blobs.BlobStore.fallback`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.model import StagedBlob, utcnow
from core.runtime import Runtime

__all__ = ["Staged", "commit_with", "flush_staged", "stage", "staged_reader"]

log = logging.getLogger(__name__)

_TABLE = cast(Table, StagedBlob.__table__)  # Core: one executemany, no ORM bulk bookkeeping
# rows made durable per flush transaction
_FLUSH_BATCH = 200


@dataclass(frozen=True)
class Staged:
    """One blob encrypted and named, not yet in the store: the file's bytes."""

    blob_id: str
    content: bytes


def stage(runtime: Runtime, data: bytes) -> Staged:
    """Encrypt ``data`` as a new blob without writing it anywhere yet."""
    blob_id, content = runtime.blobs.seal(data)
    return Staged(blob_id, content)


def commit_with(session: Session, runtime: Runtime, staged: Sequence[Staged]) -> None:
    """Commit the caller's transaction with ``staged`` in it (its one durable write), then
    write their files to the store and mirror without fsync.

    The rows go in with one statement and no autoflush: the session's pending audit events
    are flushed by the commit, chained (flushed here they would be inserted first and chained
    by extra UPDATEs). A failed file write (disk full) is logged, not raised: the transaction
    is committed, readers fall back to the row, and the next :func:`flush_staged` writes the
    file."""
    if staged:
        now = utcnow()
        with session.no_autoflush:
            session.execute(
                insert(_TABLE),
                [{"blob_id": s.blob_id, "content": s.content, "created_at": now} for s in staged],
            )
    session.commit()
    for s in staged:
        try:
            runtime.blobs.write_sealed(s.blob_id, s.content, durable=False)
        except Exception as exc:  # the row holds it: never fail a committed transaction
            log.warning("staged blob %s not written out yet: %s", s.blob_id, exc)


def flush_staged(*, sessions: sessionmaker[Session], runtime: Runtime) -> int:
    """Write every staged blob durably into the store (and mirror), then delete its row; the
    number flushed. Each file is written again from the row rather than trusted as the
    write after the commit left it. Idempotent, and safe on several nodes at once."""
    flushed = 0
    while True:
        with sessions() as session:
            rows = session.execute(
                select(StagedBlob.blob_id, StagedBlob.content)
                .order_by(StagedBlob.created_at, StagedBlob.blob_id)
                .limit(_FLUSH_BATCH)
            ).all()
            session.rollback()  # no read transaction held while the files are written
            if not rows:
                return flushed
            for blob_id, content in rows:
                runtime.blobs.write_sealed(blob_id, content, durable=True)
            session.execute(
                delete(StagedBlob).where(StagedBlob.blob_id.in_([row[0] for row in rows]))
            )
            session.commit()
            flushed += len(rows)
            if len(rows) < _FLUSH_BATCH:
                return flushed


def staged_reader(sessions: sessionmaker[Session]) -> Callable[[str], bytes | None]:
    """What the blob store reads a blob from when its file is missing or damaged: the staged
    row, if the blob is still staged."""

    def read(blob_id: str) -> bytes | None:
        with sessions() as session:
            content = session.scalar(
                select(StagedBlob.content).where(StagedBlob.blob_id == blob_id)
            )
            return bytes(content) if content is not None else None

    return read
