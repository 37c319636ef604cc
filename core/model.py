"""The domain model, mapped with SQLAlchemy 2 (``Mapped[...]`` columns).

Schema changes go through Alembic (``core/migrations``); a test checks that the migrations
produce exactly these tables.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from core.states import EnvelopeState, PartyRole, PartyState

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """Now, timezone-aware in UTC (how every timestamp is stored)."""
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    """A random object id (UUID4, hex): ids are never sequential, so they cannot be walked."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; store aware datetimes only")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base with a stable constraint naming convention for Alembic."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(cls: type[Any], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Contractor(Base):
    """The counterparty company (事業者 / 受注者)."""

    __tablename__ = "contractors"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    corporate_number: Mapped[str | None] = mapped_column(String(13), index=True)
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Envelope(Base):
    """One signing case: ordered parties over one or more documents."""

    __tablename__ = "envelopes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    management_number: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    state: Mapped[EnvelopeState] = mapped_column(
        _enum(EnvelopeState, "envelope_state"), default=EnvelopeState.DRAFT, index=True
    )
    # Printed bottom-left on page 1 of every document and on the completion certificate.
    certificate_id: Mapped[str] = mapped_column(String(32), unique=True)
    creator: Mapped[str] = mapped_column(String(200))
    creator_email: Mapped[str | None] = mapped_column(String(320))
    contractor_id: Mapped[str | None] = mapped_column(ForeignKey("contractors.id"))
    counterparty: Mapped[str | None] = mapped_column(String(200))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(15, 0))
    transaction_date: Mapped[dt.date | None] = mapped_column(Date())
    deadline: Mapped[dt.date | None] = mapped_column(Date())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    certificate_blob_id: Mapped[str | None] = mapped_column(String(64))
    # The last retriable failure while signing or sealing (e.g. TSA outage), for staff to see.
    last_error: Mapped[str | None] = mapped_column(Text())

    contractor: Mapped[Contractor | None] = relationship()
    documents: Mapped[list[Document]] = relationship(
        back_populates="envelope", order_by="Document.position", cascade="all, delete-orphan"
    )
    parties: Mapped[list[Party]] = relationship(
        back_populates="envelope", order_by="Party.routing_order", cascade="all, delete-orphan"
    )
    fields: Mapped[list[Field]] = relationship(
        back_populates="envelope", cascade="all, delete-orphan"
    )


class Document(Base):
    """One PDF of an envelope, stored as a chain of revisions (see :class:`DocumentRevision`)."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("envelope_id", "position"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    envelope_id: Mapped[str] = mapped_column(ForeignKey("envelopes.id"), index=True)
    position: Mapped[int] = mapped_column(Integer())
    name: Mapped[str] = mapped_column(String(255))
    original_blob_id: Mapped[str] = mapped_column(String(64))
    original_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger())  # of the newest revision, whole
    page_count: Mapped[int] = mapped_column(Integer())
    signature_count: Mapped[int] = mapped_column(Integer(), default=0)

    envelope: Mapped[Envelope] = relationship(back_populates="documents")
    revisions: Mapped[list[DocumentRevision]] = relationship(
        back_populates="document", order_by="DocumentRevision.seq", cascade="all, delete-orphan"
    )


class DocumentRevision(Base):
    """One stored step of a document: the whole file (``full``) or the bytes one incremental
    update appended to the previous revision (``append``).

    Signing appends an incremental update, so a 10 MB contract signed by 17 parties is stored as
    10 MB plus 17 small appends instead of 17 copies. The newest revision is the concatenation of
    the last ``full`` revision and every ``append`` after it. ``(document_id, seq)`` is unique, so
    two workers can never both append the same step.
    """

    __tablename__ = "document_revisions"
    __table_args__ = (UniqueConstraint("document_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer())
    kind: Mapped[str] = mapped_column(String(8))  # "full" | "append"
    blob_id: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger())  # of the whole document at this revision
    reason: Mapped[str] = mapped_column(String(32))  # prepared | signature | seal
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    document: Mapped[Document] = relationship(back_populates="revisions")


class Party(Base):
    """One step of the routing order."""

    __tablename__ = "parties"
    __table_args__ = (UniqueConstraint("envelope_id", "routing_order"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    envelope_id: Mapped[str] = mapped_column(ForeignKey("envelopes.id"), index=True)
    routing_order: Mapped[int] = mapped_column(Integer())
    role: Mapped[PartyRole] = mapped_column(_enum(PartyRole, "party_role"))
    state: Mapped[PartyState] = mapped_column(
        _enum(PartyState, "party_state"), default=PartyState.WAITING
    )
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    company: Mapped[str | None] = mapped_column(String(200))
    # Set when the party gives its instruction (電子署名法 2条1項: who, how authenticated, when).
    approved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    approved_ip: Mapped[str | None] = mapped_column(String(45))
    auth_method: Mapped[str | None] = mapped_column(String(100))
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    decline_reason: Mapped[str | None] = mapped_column(Text())
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    viewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    envelope: Mapped[Envelope] = relationship(back_populates="parties")
    fields: Mapped[list[Field]] = relationship(back_populates="party")


class Field(Base):
    """A text box on a page, filled by one party (e.g. the signing date on a 請書)."""

    __tablename__ = "fields"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    envelope_id: Mapped[str] = mapped_column(ForeignKey("envelopes.id"), index=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id"))
    party_id: Mapped[str] = mapped_column(ForeignKey("parties.id"))
    # The AcroForm field name in the PDF, unique per document.
    name: Mapped[str] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(200))
    page: Mapped[int] = mapped_column(Integer())  # 1-based
    x1: Mapped[float] = mapped_column(Float())
    y1: Mapped[float] = mapped_column(Float())
    x2: Mapped[float] = mapped_column(Float())
    y2: Mapped[float] = mapped_column(Float())
    required: Mapped[bool] = mapped_column(Boolean(), default=True)
    max_length: Mapped[int] = mapped_column(Integer(), default=200)
    value: Mapped[str | None] = mapped_column(Text())

    envelope: Mapped[Envelope] = relationship(back_populates="fields")
    party: Mapped[Party] = relationship(back_populates="fields")
    document: Mapped[Document] = relationship()


class AuditEvent(Base):
    """One recorded operation; rows are only ever inserted."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    envelope_id: Mapped[str | None] = mapped_column(ForeignKey("envelopes.id"), index=True)
    party_id: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(45))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON(), default=dict)

    # Lets the unit of work insert an envelope before the events that refer to it.
    envelope: Mapped[Envelope | None] = relationship()


class DeliveryState(enum.StrEnum):
    """Where one outbox row stands."""

    PENDING = "pending"  # due at next_attempt_at
    LEASED = "leased"  # claimed by a worker until lease_expires_at
    DELIVERED = "delivered"
    DEAD = "dead"  # gave up: the bound was reached or the error is permanent


class Delivery(Base):
    """One outbox row: push one thing (a finished envelope, a mail) to one target, exactly once
    as far as the target can tell (``idempotency_key``)."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(64), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    envelope_id: Mapped[str | None] = mapped_column(ForeignKey("envelopes.id"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON(), default=dict)
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState, "delivery_state"), default=DeliveryState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer(), default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    envelope: Mapped[Envelope | None] = relationship()

    __table_args__ = (Index("ix_deliveries_due", "state", "next_attempt_at"),)
