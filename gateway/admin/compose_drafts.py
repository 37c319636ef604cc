"""Compose drafts: what a sender entered in step 1 of create-and-send (the facts, the parties with
their access codes already hashed, the uploaded PDFs), kept until step 2 turns it into an
envelope.

A draft lives in the blob store's ``compose-drafts`` folder, encrypted like every document (its
own key, derived from the master key), so every node sees it and no table is needed: one blob
holds the draft's JSON, one blob each PDF. The JSON names the staff member who made it and only
they can open it; a draft older than :data:`LIFETIME` is gone, and storing a new draft removes
the old files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from core.blobs import BlobStore
from core.errors import BlobError, NotFoundError
from core.model import Staff, utcnow

log = logging.getLogger(__name__)

LIFETIME = dt.timedelta(days=1)
FOLDER = "compose-drafts"


@dataclass
class DraftDocument:
    """One uploaded PDF, checked by the signing engine."""

    name: str
    blob_id: str
    size: int
    page_count: int


@dataclass
class DraftParty:
    """One party in routing order; ``code_hash`` as made by the access-code policy."""

    role: str
    company: str
    name: str
    email: str
    code_hash: str | None = None
    # Signs as staff (staff login) instead of link + access code.
    staff: bool = False


@dataclass
class ComposeDraft:
    """Step 1 as entered (text as typed, so a form can show it again) and, once ``ready``, as
    checked."""

    staff_id: str
    title: str = ""
    management_number: str = ""
    counterparty: str = ""
    amount: str = ""
    transaction_date: str = ""
    deadline: str = ""
    department: str = ""
    contract_type: str = ""  # construction | other: chosen by the sender, never defaulted
    contractor_number: str = ""  # 法人番号 or 業者番号: whose consent a construction contract uses
    documents: list[DraftDocument] = field(default_factory=list)
    parties: list[DraftParty] = field(default_factory=list)
    ready: bool = False
    created_at: str = field(default_factory=lambda: utcnow().isoformat())

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ComposeDraft:
        """A draft from its stored JSON."""
        values = dict(raw)
        values["documents"] = [DraftDocument(**d) for d in raw.get("documents", [])]
        values["parties"] = [DraftParty(**p) for p in raw.get("parties", [])]
        return cls(**values)


def _not_found() -> NotFoundError:
    return NotFoundError(
        "not_found.compose_draft",
        "no such compose draft (expired, sent, or another staff member's)",
        "作成中の内容が見つかりません（1日以上経過したか、送信済みです）。"
        "お手数ですが、最初から作成してください。",
    )


class DraftStore:
    """Drafts in ``<blob root>/compose-drafts``, encrypted under a key derived for them."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = BlobStore(blobs.root / FOLDER, blobs.derive_key(FOLDER))

    def put_document(self, data: bytes) -> str:
        """Store one uploaded PDF; returns its id for :class:`DraftDocument`."""
        return self._blobs.put(data)

    def document(self, blob_id: str) -> bytes:
        """The bytes of one of a draft's PDFs."""
        try:
            return self._blobs.get(blob_id)
        except BlobError as exc:
            raise _not_found() from exc

    def save(self, draft: ComposeDraft, *, replaces: str | None = None) -> str:
        """Store ``draft`` (removing the draft it replaces and every expired file); returns the
        new draft id."""
        self.remove_expired()
        draft_id = self._blobs.put(json.dumps(asdict(draft), ensure_ascii=False).encode())
        if replaces is not None:
            self._delete(replaces)
        return draft_id

    def load(self, draft_id: str, staff: Staff) -> ComposeDraft:
        """The draft ``draft_id`` of ``staff``; anyone else's, an expired or a missing one is
        ``not_found.compose_draft``."""
        try:
            raw = json.loads(self._blobs.get(draft_id))
        except BlobError as exc:
            raise _not_found() from exc
        draft = ComposeDraft.from_json(raw)
        created = dt.datetime.fromisoformat(draft.created_at)
        if draft.staff_id != staff.id or utcnow() - created > LIFETIME:
            raise _not_found()
        return draft

    def discard(self, draft_id: str, draft: ComposeDraft) -> None:
        """Remove a draft and its PDFs (once its envelope is created)."""
        self.discard_documents(draft.documents)
        self._delete(draft_id)

    def discard_documents(self, documents: list[DraftDocument]) -> None:
        """Remove PDFs a new upload replaced."""
        for document in documents:
            self._delete(document.blob_id)

    def _delete(self, blob_id: str) -> None:
        try:
            self._blobs.delete(blob_id)
        except OSError:
            # Left for remove_expired: the request that got here has done its work.
            log.warning("compose draft file %s not removed", blob_id, exc_info=True)

    def remove_expired(self) -> int:
        """Delete every file older than :data:`LIFETIME`; returns how many."""
        root = self._blobs.root
        if not root.exists():
            return 0
        cutoff = time.time() - LIFETIME.total_seconds()
        removed = 0
        for path in root.glob("*/*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # another node removed it first
        return removed
