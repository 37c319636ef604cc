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
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from core.states import DeliveryState, EnvelopeState, PartyRole, PartyState

__all__ = [
    "BIGRAMS",
    "AccessCode",
    "AddressBookEntry",
    "Amendment",
    "ApiClient",
    "ApiEnvelope",
    "ArchiveCheck",
    "AuditChainHead",
    "AuditEvent",
    "AuthThrottle",
    "Award",
    "AwardDocument",
    "AwardState",
    "Base",
    "Contractor",
    "ContractorConflict",
    "ContractorEmail",
    "ContractorIdentity",
    "DeadLetter",
    "Delivery",
    "Document",
    "DocumentRevision",
    "Envelope",
    "Field",
    "GuaranteeKind",
    "GuaranteeReference",
    "JobRun",
    "LinkPurpose",
    "Party",
    "SigningLink",
    "SourceCursor",
    "Staff",
    "StaffRole",
    "StaffSession",
    "StagedBlob",
    "SyncRun",
    "UTCDateTime",
    "UsageRequest",
    "VisibilityScope",
    "new_id",
    "schema_filter",
    "utcnow",
]

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
    # The name as a match key (core.intake.contractors.name_key): finds *candidates* for staff, never merges.
    name_key: Mapped[str | None] = mapped_column(String(200), index=True)
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
    # The buyer department that owns the contract (staff visibility scope "department").
    department: Mapped[str | None] = mapped_column(String(200))
    transaction_date: Mapped[dt.date | None] = mapped_column(Date())
    deadline: Mapped[dt.date | None] = mapped_column(Date())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    certificate_blob_id: Mapped[str | None] = mapped_column(String(64))
    # The last retriable failure while signing or sealing (e.g. TSA outage), for staff to see.
    last_error: Mapped[str | None] = mapped_column(Text())
    # When the documents' bytes were removed after the configured retention (the envelope's
    # facts and audit trail stay).
    documents_purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # 契約種別: "construction" (建設工事: 建設業法19条3項 needs the contractor's prior consent) or
    # "other"; None only on envelopes made before the type was recorded.
    contract_type: Mapped[str | None] = mapped_column(String(32))
    # The recorded consent (usage request) a construction contract was sent under.
    consent_id: Mapped[str | None] = mapped_column(ForeignKey("usage_requests.id"))

    contractor: Mapped[Contractor | None] = relationship()
    consent: Mapped[UsageRequest | None] = relationship()
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
    # When the newest document timestamp's TSA chain expires (set by seal and renewal); the
    # re-timestamping job renews documents before this moment. NULL: not sealed yet.
    timestamp_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)

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
    reason: Mapped[str] = mapped_column(String(32))  # prepared | signature | seal | archive
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    document: Mapped[Document] = relationship(back_populates="revisions")


class StagedBlob(Base):
    """A blob (an approval's signature revision) held in the database until its file in the
    store is durable: the approval's commit is then its one durable write. Written out right
    after the commit without waiting for the disk, made durable and deleted by
    :func:`core.staged_blobs.flush_staged`; read instead of a file a crash lost."""

    __tablename__ = "staged_blobs"

    blob_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary())  # the blob file's (encrypted) bytes
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


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
    # A buyer-side party bound to a staff account signs from the staff pages after logging in
    # (and re-authenticating); None: the party opens a mailed link and types its access code.
    staff_id: Mapped[str | None] = mapped_column(ForeignKey("staff.id"), index=True)
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
    # Hash chain (see core.records.audit): position in the chain and SHA-256 over the previous hash
    # plus this event's canonical content. NULL only for events older than the chain.
    chain_seq: Mapped[int | None] = mapped_column(BigInteger(), unique=True)
    chain_hash: Mapped[str | None] = mapped_column(String(64))

    # Lets the unit of work insert an envelope before the events that refer to it.
    envelope: Mapped[Envelope | None] = relationship()


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


class AccessCode(Base):
    """The salted, peppered hash of one party's access code (アクセスコード); never the code."""

    __tablename__ = "access_codes"

    party_id: Mapped[str] = mapped_column(ForeignKey("parties.id"), primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(200))
    set_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LinkPurpose(enum.StrEnum):
    """What a mailed link opens."""

    SIGN = "sign"  # the signing pages of one party (with its access code)
    DOWNLOAD = "download"  # the signed documents of a completed envelope, for 14 days


class SigningLink(Base):
    """One mailed link. Only the SHA-256 of its random token is stored; the token itself exists
    only in the mail that carried it."""

    __tablename__ = "signing_links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[LinkPurpose] = mapped_column(_enum(LinkPurpose, "link_purpose"))
    envelope_id: Mapped[str] = mapped_column(ForeignKey("envelopes.id"), index=True)
    # None for a download link mailed to the sender, who is not a party.
    party_id: Mapped[str | None] = mapped_column(ForeignKey("parties.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    # The mail delivery the link was made for: a retried delivery replaces its link.
    issued_for: Mapped[str] = mapped_column(String(200), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_reason: Mapped[str | None] = mapped_column(String(32))
    # Wrong access codes so far (reserved before each check, so parallel guesses count too).
    failed_attempts: Mapped[int] = mapped_column(Integer(), default=0)
    locked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ApiClient(Base):
    """One system allowed to use the envelope API (e-bidding, document management)."""

    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # SHA-256 of the bearer token; the token is shown once, when the client is created.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_hint: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSON(), default=list)
    # CIDR networks this client may call from (staff.allowed_networks applies too); None: any.
    allowed_networks: Mapped[list[str] | None] = mapped_column(JSON())
    # The buyer department its envelopes belong to when a request names none (staff of that
    # department see them; the monthly report files them there).
    department: Mapped[str | None] = mapped_column(String(200))
    # A client acting for one staff member (a clerk's tool, a tax-office export): its searches
    # see exactly what that member sees on the staff pages. None: its own envelopes only.
    staff_id: Mapped[str | None] = mapped_column(ForeignKey("staff.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class AuthThrottle(Base):
    """Failed attempts at a secret that names no row of its own (an unknown API token names no
    client), per key such as ``api_token:<client address>``; see :mod:`core.staff.attempts`."""

    __tablename__ = "auth_throttles"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer(), default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ApiEnvelope(Base):
    """Which system created an envelope (it sees only its own), and under which idempotency key."""

    __tablename__ = "api_envelopes"
    __table_args__ = (UniqueConstraint("client_id", "idempotency_key"),)

    envelope_id: Mapped[str] = mapped_column(ForeignKey("envelopes.id"), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("api_clients.id"), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Amendment(Base):
    """変更契約: an envelope that amends an earlier envelope concluded electronically."""

    __tablename__ = "amendments"

    envelope_id: Mapped[str] = mapped_column(ForeignKey("envelopes.id"), primary_key=True)
    original_id: Mapped[str] = mapped_column(ForeignKey("envelopes.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- Intake: awards, contractors' addresses and usage requests, sync runs, dead letters, jobs ---


class AwardState(enum.StrEnum):
    """Where one award (落札) stands on its way to an envelope."""

    WAITING_USAGE_REQUEST = "waiting_usage_request"  # the contractor has not consented yet
    WAITING_DOCUMENTS = "waiting_documents"  # a contract PDF is not there yet
    DRAFTED = "drafted"  # a draft envelope exists
    SENT = "sent"  # its envelope was sent (auto_send)
    CHANGED_AFTER_SEND = "changed_after_send"  # the source changed it after sending; reported
    WAITING_CONTRACTOR = "waiting_contractor"  # no corporate number or code: who is it?
    CONTRACTOR_CONFLICT = "contractor_conflict"  # its contractor's identity is in doubt
    DISMISSED = "dismissed"  # staff decided it never becomes an envelope here
    WAITING_SIGNER = "waiting_signer"  # the signer's address (registry) is not there yet
    WAITING_AMOUNT = "waiting_amount"  # the record gives no amount (取引金額): nothing is sent
    # Its draft envelope exists, but the contractor's signer (registry address or mapping) has
    # no access code: staff set one, and the envelope is sent.
    WAITING_ACCESS_CODE = "waiting_access_code"


def _wide_enum(cls: type[Any], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class ContractorIdentity(Base):
    """One key a contractor is known by: corporate number, bidder-registry code, or name key."""

    __tablename__ = "contractor_identities"
    __table_args__ = (UniqueConstraint("kind", "value"),)

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    contractor_id: Mapped[str] = mapped_column(ForeignKey("contractors.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # corporate_number | registry_code | name_key
    value: Mapped[str] = mapped_column(String(200))

    # Orders the inserts (contractor first) when both are new in one flush.
    contractor: Mapped[Contractor] = relationship()


class ContractorEmail(Base):
    """A registered e-mail address of a contractor (bidder registry: 入札参加資格)."""

    __tablename__ = "contractor_emails"
    __table_args__ = (UniqueConstraint("contractor_id", "email"),)

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    contractor_id: Mapped[str] = mapped_column(ForeignKey("contractors.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    contractor: Mapped[Contractor] = relationship()


class UsageRequest(Base):
    """電子契約利用申出書 / 承諾書: the contractor's prior consent and its signer.

    ``award_ref`` names the one award it covers (per-case forms); None covers every award of the
    contractor. The access code is stored only as a salted hash.
    """

    __tablename__ = "usage_requests"
    __table_args__ = (UniqueConstraint("source", "request_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    source: Mapped[str] = mapped_column(String(64))
    request_key: Mapped[str] = mapped_column(String(200))
    contractor_id: Mapped[str] = mapped_column(ForeignKey("contractors.id"), index=True)
    award_ref: Mapped[str | None] = mapped_column(String(100))
    signer_name: Mapped[str] = mapped_column(String(200))
    signer_title: Mapped[str | None] = mapped_column(String(200))
    signer_email: Mapped[str] = mapped_column(String(320))
    access_code_hash: Mapped[str | None] = mapped_column(String(200))
    contact_department: Mapped[str | None] = mapped_column(String(200))
    contact_name: Mapped[str | None] = mapped_column(String(200))
    contact_phone: Mapped[str | None] = mapped_column(String(50))
    contact_email: Mapped[str | None] = mapped_column(String(320))
    consented_on: Mapped[dt.date | None] = mapped_column(Date())
    # 電磁的措置: what the contractor agreed to (e.g. 電子契約サービスによる電子署名), 建設業法施行規則13条の4.
    measures: Mapped[str | None] = mapped_column(String(300))
    withdrawn_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    withdrawn_by: Mapped[str | None] = mapped_column(String(200))
    withdrawal_reason: Mapped[str | None] = mapped_column(Text())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    contractor: Mapped[Contractor] = relationship()


class SyncRun(Base):
    """One sync of one source: what it read, made, skipped and refused, and how long it took."""

    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64), index=True)
    trigger: Mapped[str] = mapped_column(String(16))  # cli | schedule | api | demo
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int | None] = mapped_column(Integer())
    records: Mapped[int] = mapped_column(Integer(), default=0)
    created: Mapped[int] = mapped_column(Integer(), default=0)
    updated: Mapped[int] = mapped_column(Integer(), default=0)
    unchanged: Mapped[int] = mapped_column(Integer(), default=0)
    skipped: Mapped[int] = mapped_column(Integer(), default=0)
    waiting: Mapped[int] = mapped_column(Integer(), default=0)
    released: Mapped[int] = mapped_column(Integer(), default=0)
    conflicts: Mapped[int] = mapped_column(Integer(), default=0)
    errors: Mapped[int] = mapped_column(Integer(), default=0)
    message: Mapped[str | None] = mapped_column(Text())


class Award(Base):
    """One award taken in from a source; unique on (source, award_id), so re-reading is harmless."""

    __tablename__ = "awards"
    __table_args__ = (UniqueConstraint("source", "award_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    source: Mapped[str] = mapped_column(String(64))
    award_id: Mapped[str] = mapped_column(String(100))
    state: Mapped[AwardState] = mapped_column(_wide_enum(AwardState, "award_state"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(15, 0))
    award_date: Mapped[dt.date | None] = mapped_column(Date())
    transaction_date: Mapped[dt.date | None] = mapped_column(Date())
    department: Mapped[str | None] = mapped_column(String(200))
    counterparty: Mapped[str | None] = mapped_column(String(200))
    corporate_number: Mapped[str | None] = mapped_column(String(13))
    contractor_id: Mapped[str | None] = mapped_column(ForeignKey("contractors.id"), index=True)
    usage_request_id: Mapped[str | None] = mapped_column(ForeignKey("usage_requests.id"))
    envelope_id: Mapped[str | None] = mapped_column(ForeignKey("envelopes.id"), index=True)
    # The mapped draft (JSON) and its SHA-256: an unchanged record is recognised without work.
    draft: Mapped[dict[str, Any]] = mapped_column(JSON(), default=dict)
    fingerprint: Mapped[str] = mapped_column(String(64))
    # The source record it was mapped from (secrets masked, attachments by SHA-256), so staff
    # can re-map it after the mapping was fixed; None for awards taken in before 0017a.
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON())
    # A change that arrived after the envelope was sent: kept for staff, never applied.
    rejected_change: Mapped[dict[str, Any] | None] = mapped_column(JSON())
    usage_request_due: Mapped[dt.date | None] = mapped_column(Date())
    signing_due: Mapped[dt.date | None] = mapped_column(Date())
    file: Mapped[str | None] = mapped_column(String(500))
    line: Mapped[int | None] = mapped_column(Integer())
    note: Mapped[str | None] = mapped_column(Text())
    last_run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    documents: Mapped[list[AwardDocument]] = relationship(
        order_by="AwardDocument.position", cascade="all, delete-orphan"
    )
    contractor: Mapped[Contractor | None] = relationship()


class AwardDocument(Base):
    """A contract PDF fetched for an award and kept (encrypted) until its envelope is made."""

    __tablename__ = "award_documents"
    __table_args__ = (UniqueConstraint("award_id", "position"),)

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    award_id: Mapped[str] = mapped_column(ForeignKey("awards.id"), index=True)
    position: Mapped[int] = mapped_column(Integer())
    name: Mapped[str] = mapped_column(String(255))
    origin: Mapped[str] = mapped_column(String(500))  # the path it came from, or "attachment"
    blob_id: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger())


class SourceCursor(Base):
    """A source's bookmark, stored in the transaction that commits the records it covers."""

    __tablename__ = "source_cursors"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[dict[str, Any]] = mapped_column(JSON(), default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeadLetter(Base):
    """One refused record (a line error): where it was, which field, why, and the record itself
    (secrets redacted) so it can be fixed and replayed."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id"), index=True)
    source: Mapped[str] = mapped_column(String(64), index=True)
    file: Mapped[str | None] = mapped_column(String(500))
    line: Mapped[int | None] = mapped_column(Integer())
    path: Mapped[str | None] = mapped_column(String(500))
    field: Mapped[str | None] = mapped_column(String(100))
    code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text())
    reason_ja: Mapped[str] = mapped_column(Text())
    mapping_line: Mapped[int | None] = mapped_column(Integer())
    record: Mapped[dict[str, Any]] = mapped_column(JSON(), default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set when the record was taken in again (``keiyaku sync replay``) or came right later.
    replayed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ContractorConflict(Base):
    """A doubt about who a contractor is, for staff to decide; intake never merges on a guess.

    ``kind``: ``name_candidate`` (a record names a company only by name, and that name matches
    known contractors), ``code_name_mismatch`` (a registry code's record carries another
    company's name), ``code_corporate_mismatch`` (a registry code or corporate number already
    belongs to another contractor), ``merged_before`` (found by migration 0014: one contractor
    row holding several legal entities). ``key`` makes reporting the same doubt twice a no-op.
    """

    __tablename__ = "contractor_conflicts"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    contractor_id: Mapped[str | None] = mapped_column(ForeignKey("contractors.id"), index=True)
    other_contractor_id: Mapped[str | None] = mapped_column(ForeignKey("contractors.id"))
    source: Mapped[str | None] = mapped_column(String(64))
    award_id: Mapped[str | None] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text())
    message_ja: Mapped[str] = mapped_column(Text())
    detail: Mapped[dict[str, Any]] = mapped_column(JSON(), default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    resolution: Mapped[str | None] = mapped_column(Text())


class JobRun(Base):
    """One execution of a scheduled job. Unique per (job, fire time): of several nodes firing
    the same tick, only the one whose insert wins runs it."""

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job_id", "fire_time"),)

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64))
    fire_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    node: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    message: Mapped[str | None] = mapped_column(Text())


class ArchiveCheck(Base):
    """One re-timestamping run's findings, for ``/healthz``, ``/metrics`` and the next run's
    operator: how long a timestamp made now would stay valid, what was due, renewed, left
    alone because a renewal would extend nothing, or failed; and the alert, if any (the TSA
    certificate is near its end and no newer one is served)."""

    __tablename__ = "archive_checks"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    tsa_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    due: Mapped[int] = mapped_column(Integer(), default=0)
    renewed: Mapped[int] = mapped_column(Integer(), default=0)
    nothing_to_extend: Mapped[int] = mapped_column(Integer(), default=0)
    failed: Mapped[int] = mapped_column(Integer(), default=0)
    alert: Mapped[str | None] = mapped_column(Text())


# --- Push-back: guarantee references (電子保証) ---


class GuaranteeKind(enum.StrEnum):
    """Which guarantee certificate a reference stands for."""

    CONTRACT = "contract"  # 契約保証
    ADVANCE = "advance"  # 前払金保証
    INTERIM_ADVANCE = "interim_advance"  # 中間前払金保証


class GuaranteeReference(Base):
    """One electronic guarantee certificate (電子保証) handed over for an envelope: the guarantee
    contract number (保証契約番号) and the authentication key (認証キー) with which the buyer
    views it at the issuer. The key is a secret: only its AES-GCM ciphertext and its last two
    characters are stored (see :mod:`core.envelopes.guarantees`)."""

    __tablename__ = "guarantee_references"
    __table_args__ = (UniqueConstraint("envelope_id", "contract_number"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    envelope_id: Mapped[str] = mapped_column(ForeignKey("envelopes.id"), index=True)
    kind: Mapped[GuaranteeKind] = mapped_column(_enum(GuaranteeKind, "guarantee_kind"))
    contract_number: Mapped[str] = mapped_column(String(32), index=True)
    issuer: Mapped[str] = mapped_column(String(200))
    key_ciphertext: Mapped[str] = mapped_column(Text())
    key_hint: Mapped[str] = mapped_column(String(8))
    # As printed on the issuer's notice (工事名, 発注者), when the reference came from one.
    project_name: Mapped[str | None] = mapped_column(String(300))
    buyer: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16))  # api | cli | notice | mapping | signing_page
    notice_blob_id: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Who confirmed the certificate at the issuer with the number and key, and when.
    verified_by: Mapped[str | None] = mapped_column(String(320))
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class StaffRole(enum.StrEnum):
    """What a staff member may do (a staff member holds one or more)."""

    ADMIN = "admin"  # manage staff, see everything
    SENDER = "sender"  # create, send and cancel envelopes
    SIGNER = "signer"  # sign on the buyer's side


class VisibilityScope(enum.StrEnum):
    """Which envelopes a staff member sees."""

    OWN = "own"  # the envelopes they created
    DEPARTMENT = "department"  # their department's envelopes
    ALL = "all"


class Staff(Base):
    """One member of the buyer's staff who logs in to the staff pages."""

    __tablename__ = "staff"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    department: Mapped[str | None] = mapped_column(String(200))
    # Comma-separated StaffRole values, sorted (e.g. "admin,sender").
    roles: Mapped[str] = mapped_column(String(64), default="")
    scope: Mapped[VisibilityScope] = mapped_column(
        _enum(VisibilityScope, "visibility_scope"), default=VisibilityScope.OWN
    )
    disabled: Mapped[bool] = mapped_column(Boolean(), default=False)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    failed_logins: Mapped[int] = mapped_column(Integer(), default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # The newest TOTP time step accepted: a code is good once (RFC 6238 section 5.2).
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class StaffSession(Base):
    """One login of a staff member. The cookie carries the random id (signed); the row is what
    makes it valid, so logout, disabling or a password change ends it on the server."""

    __tablename__ = "staff_sessions"

    # SHA-256 of the random session token (the token itself is only in the cookie).
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ip: Mapped[str | None] = mapped_column(String(64))
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class AddressBookEntry(Base):
    """One contact the staff pick parties from when they create an envelope by hand
    (会社名, 氏名, メールアドレス); shared by the buyer's staff."""

    __tablename__ = "address_book"
    __table_args__ = (UniqueConstraint("email", "company", name="uq_address_book_email_company"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    company: Mapped[str] = mapped_column(String(200), default="")
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), index=True)
    department: Mapped[str | None] = mapped_column(String(200))  # 部署・役職 (optional)
    note: Mapped[str | None] = mapped_column(Text())
    created_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class AuditChainHead(Base):
    """The single row holding the newest link of the audit hash chain; each committing
    transaction that recorded events updates it, so its row lock puts the chain in commit order
    (see :mod:`core.records.audit`)."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger(), default=0)
    hash: Mapped[str] = mapped_column(String(64))


# Search (core.records.search): the 電子帳簿保存法 keys and the scope filters, each with an index.
Index("ix_envelopes_transaction_date", Envelope.transaction_date, Envelope.id)
Index("ix_envelopes_counterparty", Envelope.counterparty)
Index("ix_envelopes_amount", Envelope.amount)
Index("ix_envelopes_department", Envelope.department, Envelope.transaction_date)
Index("ix_envelopes_creator_email", Envelope.creator_email)
Index("ix_envelopes_completed_at", Envelope.completed_at)
Index("ix_parties_email", Party.email)  # the "as a party" part of every scope

# Substring search (keyword, counterparty) on PostgreSQL, two GIN indexes per column:
# - trigrams (pg_trgm, migration 0010) serve LIKE '%...%' for three characters or more, Japanese
#   included (the database's LC_CTYPE must classify it, as C.UTF-8 does);
# - two-character words (道路, 工事: most Japanese words are two kanji) are below what trigrams
#   serve: ``keiyaku_bigrams(text)`` (migration 0011, an immutable SQL function giving the text's
#   distinct two-character substrings) is indexed, and ``@> ARRAY[word]`` finds the rows
#   containing a two-character word (core.records.search).
BIGRAMS = "keiyaku_bigrams"
for _column in (Document.name, Envelope.title, Envelope.counterparty):
    _prefix = f"ix_{_column.class_.__tablename__}_{_column.key}"
    Index(
        f"{_prefix}_trgm",
        _column,
        postgresql_using="gin",
        postgresql_ops={_column.key: "gin_trgm_ops"},
        info={"dialect": "postgresql"},
    ).ddl_if(dialect="postgresql")
    Index(
        f"{_prefix}_bigram",
        getattr(func, BIGRAMS)(_column),
        postgresql_using="gin",
        info={"dialect": "postgresql"},
    ).ddl_if(dialect="postgresql")
# 管理番号 search: part of the number in any case (ILIKE), trigrams only (migration 0017c);
# the unique constraint's B-tree serves the whole number.
Index(
    "ix_envelopes_management_number_trgm",
    Envelope.management_number,
    postgresql_using="gin",
    postgresql_ops={"management_number": "gin_trgm_ops"},
    info={"dialect": "postgresql"},
).ddl_if(dialect="postgresql")


def schema_filter(dialect: str) -> Any:
    """Alembic's ``include_object`` for a database of ``dialect``: leave out the model objects
    made for another dialect (the trigram and bigram indexes exist on PostgreSQL only; Alembic
    does not read ``ddl_if`` itself)."""

    def include(obj: Any, name: Any, type_: str, reflected: bool, compare_to: Any) -> bool:
        del name, type_, compare_to
        only_on = getattr(obj, "info", {}).get("dialect")
        return reflected or only_on in (None, dialect)

    return include
