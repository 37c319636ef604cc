"""What the services need besides the session: the :class:`Runtime` container (blob
store, signing engine, renderer, observers), size :class:`Limits` and the
:class:`EnvelopeObserver` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session

from core.blobs import BlobStore
from core.envelopes.active_content import ActiveContentMode
from core.model import Envelope, Party
from core.rendering import RenderPool
from core.signing import SigningEngine

__all__ = [
    "MB",
    "EnvelopeObserver",
    "Limits",
    "Runtime",
]

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Size limits from the buyers' specifications (Sapporo: 20 MB/file, 50 MB/contract, 5+ files)."""

    max_file_bytes: int = 20 * MB
    max_envelope_bytes: int = 50 * MB
    max_files: int = 20
    max_parties: int = 50
    # A PDF that runs JavaScript or launches something when opened: refuse it, or strip that.
    pdf_active_content: ActiveContentMode = "refuse"


class EnvelopeObserver(Protocol):
    """Told of each envelope event inside the transaction that makes it, so what it writes
    (outbox rows for mail or sinks) commits or rolls back with the state change.

    Events: ``party.requested`` and ``party.notified`` (with the party), ``envelope.declined``
    (with the declining party), ``envelope.cancelled``, ``envelope.expired``,
    ``envelope.completed``; from :mod:`core.envelopes.links`: ``party.forwarded`` (with the party under
    its new name and address), ``party.resent`` and ``party.locked`` (with the party).
    """

    def envelope_event(
        self, *, session: Session, envelope: Envelope, event: str, party: Party | None
    ) -> None:
        """React to one event; raise to abort the state change."""


@dataclass(frozen=True)
class Runtime:
    """What the services need besides the session: blob store, signing engine, observers."""

    blobs: BlobStore
    signing: SigningEngine
    buyer_name: str
    limits: Limits = field(default_factory=Limits)
    observers: tuple[EnvelopeObserver, ...] = ()
    # Renders pages in bounded processes; an upload is refused when its pages cannot all be
    # rendered within the caps (None: not checked, for callers that never show pages).
    renderer: RenderPool | None = None

    def notify(
        self, session: Session, envelope: Envelope, event: str, party: Party | None = None
    ) -> None:
        """Tell every observer of one event (inside the caller's transaction)."""
        for observer in self.observers:
            observer.envelope_event(session=session, envelope=envelope, event=event, party=party)
