"""An envelope's documents in the blob store: the current revisions, reading them, and
storing a new (incremental) revision.
"""

from __future__ import annotations

from io import BytesIO

from core.errors import Disposition, DocumentError, NotFoundError
from core.model import Document, DocumentRevision, Envelope
from core.runtime import Runtime
from core.timezone import JST

__all__ = [
    "check_documents_kept",
    "current_documents",
    "document_at",
    "new_revision",
    "read_document",
    "read_document_stream",
    "store_revision",
]


def document_at(envelope: Envelope, position: int) -> Document:
    """The envelope's document at ``position`` (1-based, as URLs number them)."""
    for document in envelope.documents:
        if document.position == position:
            return document
    raise NotFoundError(
        "not_found.document",
        f"no document {position} in {envelope.id}",
        "文書が見つかりません。",
    )


def current_documents(*, runtime: Runtime, envelope: Envelope) -> list[tuple[str, bytes]]:
    """(name, newest revision bytes) of every document, in order."""
    return [(doc.name, read_document(runtime=runtime, document=doc)) for doc in envelope.documents]


def check_documents_kept(envelope: Envelope) -> None:
    """Raise ``document.purged`` once the retention purge (:mod:`core.records.retention`) removed the
    envelope's documents: every reader answers that instead of a missing blob."""
    purged_at = envelope.documents_purged_at
    if purged_at is None:
        return
    when = purged_at.astimezone(JST).strftime("%Y年%m月%d日 %H:%M")
    raise DocumentError(
        "document.purged",
        f"the documents of envelope {envelope.id} were deleted at the end of their retention "
        f"period ({purged_at.isoformat()})",
        f"保存期間の満了により文書は削除されました（{when} JST）",
        disposition=Disposition.FATAL,
        details={"documents_purged_at": purged_at.astimezone(JST).isoformat()},
    )


def read_document(*, runtime: Runtime, document: Document) -> bytes:
    """The newest revision of a document: its last full revision plus every append after it."""
    check_documents_kept(document.envelope)
    revisions = document.revisions
    start = max(i for i, rev in enumerate(revisions) if rev.kind == "full")
    parts = [runtime.blobs.get(rev.blob_id) for rev in revisions[start:]]
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_document_stream(runtime: Runtime, document: Document, *, room: int = 0) -> BytesIO:
    """:func:`read_document` into one writable buffer, decrypted a chunk at a time; the buffer
    is allocated once, for the document and ``room`` bytes the caller will append."""
    check_documents_kept(document.envelope)
    revisions = document.revisions
    start = max(i for i, rev in enumerate(revisions) if rev.kind == "full")
    out = _allocated(revisions[-1].size + room)
    for rev in revisions[start:]:
        runtime.blobs.read_into(rev.blob_id, out)
    out.truncate()  # keeps the allocation (CPython shrinks a BytesIO only below half of it)
    return out


def _allocated(capacity: int) -> BytesIO:
    """A BytesIO at position 0 that already owns ``capacity`` (zero) bytes, so writes over them
    never reallocate. Grown write by write, a 10 MB document's buffer was reallocated about ten
    times, each time possibly copied, and the freed blocks left the heap at 2.9x the document."""
    out = BytesIO()
    if capacity > 0:
        out.seek(capacity - 1)
        out.write(b"\0")
        out.seek(0)
    return out


def new_revision(document: Document, blob_id: str, *, size: int, reason: str) -> DocumentRevision:
    """The ``append`` revision after ``document``'s newest one, for the blob ``blob_id``;
    returned unattached, for the caller's transaction."""
    seq = document.revisions[-1].seq + 1
    return DocumentRevision(seq=seq, kind="append", blob_id=blob_id, size=size, reason=reason)


def store_revision(
    *, runtime: Runtime, document: Document, previous: bytes, new: bytes, reason: str
) -> DocumentRevision:
    """Store ``new`` as an append to ``previous`` when it is one (an incremental update), else
    whole. The revision is returned unattached; the caller adds it in its transaction."""
    seq = document.revisions[-1].seq + 1
    if len(new) > len(previous) and new.startswith(previous):
        blob_id, kind = runtime.blobs.put(new[len(previous) :]), "append"
    else:
        blob_id, kind = runtime.blobs.put(new), "full"
    return DocumentRevision(seq=seq, kind=kind, blob_id=blob_id, size=len(new), reason=reason)
