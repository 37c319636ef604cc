"""Request and response bodies of the envelope API (``/api/v1``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core.intake.consent import CONTRACT_TYPE_JA, consent_json
from core.model import Envelope, UsageRequest
from core.states import envelope_state_ja, party_state_ja
from core.text import multi_line
from core.text_boxes import LABEL_MAX, MAX_LENGTH

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Fields whose decoder refuses every character outside its alphabet, control characters
    #: included, so the scan above would only repeat it (over 1.3 MB for a 1 MB PDF).
    _decoded_strictly: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        # NUL and the other control characters are refused at the door of every request body
        # (PostgreSQL cannot store NUL; mail headers and file names break on the rest); line
        # breaks and tabs are the services' to normalise.
        if isinstance(value, str) and info.field_name not in cls._decoded_strictly:
            name = info.field_name or "value"
            multi_line(value, field=name, label_ja=name)
        return value


class DocumentIn(_In):
    """One PDF, base64-encoded (JSON requests)."""

    # decoded with validate=True: any byte outside the alphabet is document.bad_base64
    _decoded_strictly = frozenset({"content_base64"})

    name: str = Field(min_length=1, max_length=255, examples=["工事請負契約書.pdf"])
    content_base64: str = Field(min_length=4, description="The PDF, base64 (RFC 4648)")


class PartyIn(_In):
    """One party, in routing order."""

    role: Literal["approver", "signer", "cc"]
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
    company: str | None = Field(default=None, max_length=200)
    access_code: str | None = Field(
        default=None,
        min_length=4,
        max_length=64,
        json_schema_extra={"writeOnly": True},
        description="Required for approvers and signers not bound to staff: the code agreed "
        "with the party beforehand (4 digits by default). Stored hashed; never returned.",
    )
    staff: bool = Field(
        default=False,
        description="A buyer-side party bound to the staff account with this e-mail: it signs "
        "from the staff pages after logging in, and takes no access code.",
    )


class FieldIn(_In):
    """A text box the party fills (e.g. the signing date of a 請書)."""

    document: int = Field(ge=0, le=100, description="0-based document position")
    party: int = Field(ge=0, le=1000, description="0-based party position")
    label: str = Field(min_length=1, max_length=LABEL_MAX)
    page: int = Field(ge=1, le=100000)
    rect: tuple[float, float, float, float] = Field(
        description="x1, y1, x2, y2 in PDF points from the page's bottom left in user space "
        "(the page unrotated, whatever its /Rotate: the signed PDF turns the box with the page); "
        "the box must lie on the page's visible area, at least 2 mm on each side "
        "(else 422 envelope.bad_field)"
    )
    required: bool = True
    max_length: int = Field(default=200, ge=MAX_LENGTH[0], le=MAX_LENGTH[1])


class MetadataIn(_In):
    """What the e-book preservation law searches by, and the signing deadline."""

    amount: int | None = Field(default=None, ge=0, le=10**15 - 1, description="Yen")
    counterparty: str | None = Field(default=None, max_length=200)
    transaction_date: dt.date | None = None
    deadline: dt.date | None = None
    department: str | None = Field(
        default=None,
        max_length=200,
        description="Owning department (課所名); default: the API client's department",
    )


class ContractorIn(_In):
    """The contractor (a legal entity) by its corporate number or bidder-registry code."""

    corporate_number: str | None = Field(default=None, pattern=r"^[0-9]{13}$")
    registry_code: str | None = Field(default=None, min_length=1, max_length=200)


class EnvelopeCreate(_In):
    """A new envelope. In a multipart request the documents come as file parts instead."""

    title: str = Field(min_length=1, max_length=300)
    contract_type: Literal["construction", "other"] = Field(
        description="契約種別: construction (建設工事: needs the contractor's recorded prior "
        "consent, 建設業法19条3項) or other"
    )
    contractor: ContractorIn | None = Field(
        default=None,
        description="Who the contractor is; a construction contract is made on its consent "
        "in force (or name consent_id)",
    )
    consent_id: str | None = Field(
        default=None, min_length=1, max_length=32, description="The consent (usage request) id"
    )
    parties: list[PartyIn] = Field(min_length=1, max_length=200)
    documents: list[DocumentIn] = Field(default_factory=list, max_length=100)
    fields: list[FieldIn] = Field(default_factory=list, max_length=500)
    metadata: MetadataIn = MetadataIn()
    management_number: str | None = Field(default=None, min_length=1, max_length=64)
    creator: str | None = Field(
        default=None, max_length=200, description="Shown as 文書作成者; default: the system"
    )
    sender_email: str | None = Field(
        default=None,
        max_length=320,
        pattern=EMAIL_PATTERN,
        description="Receives decline, lockout and completion notices",
    )
    amends: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Id of the completed envelope this one amends (変更契約)",
    )
    send: bool = Field(default=False, description="Send at once after creating")


class CancelIn(_In):
    """Why an envelope is cancelled (told to the parties; required)."""

    reason: str = Field(default="", max_length=2000)


class AccessCodeIn(_In):
    """A new access code for a party that signs by link (told to it by another channel)."""

    access_code: str = Field(min_length=4, max_length=64, json_schema_extra={"writeOnly": True})


class ReaddressIn(_In):
    """Correct a party's name or e-mail before it acted, or replace the signer
    (``replace: true``, with a reason)."""

    name: str = Field(min_length=1, max_length=200)
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
    staff: bool | None = Field(
        default=None, description="Bind to the staff account with this e-mail (null: as before)"
    )
    access_code: str | None = Field(
        default=None, min_length=4, max_length=64, json_schema_extra={"writeOnly": True}
    )
    replace: bool = False
    reason: str = Field(default="", max_length=2000)


class DeadlineIn(_In):
    """A later signing deadline."""

    deadline: dt.date


class DocumentOut(BaseModel):
    position: int
    name: str
    page_count: int
    size: int
    signature_count: int


class PartyOut(BaseModel):
    routing_order: int
    role: str
    name: str
    email: str
    company: str | None
    state: str
    state_ja: str
    sent_at: dt.datetime | None
    viewed_at: dt.datetime | None
    approved_at: dt.datetime | None
    completed_at: dt.datetime | None
    decline_reason: str | None
    staff: bool = Field(default=False, description="Signs from the staff pages (staff login)")
    auth_method: str | None = Field(default=None, description="How the approval was authenticated")
    locked: bool = Field(
        default=False, description="The party's link is locked by wrong access codes (unlock it)"
    )


class MetadataOut(BaseModel):
    amount: int | None
    counterparty: str | None
    transaction_date: dt.date | None
    deadline: dt.date | None
    department: str | None = None


class ConsentOut(BaseModel):
    """The contractor's prior consent (電子契約利用申出書 / 承諾書, 建設業法19条3項)."""

    id: str
    contractor_id: str
    consented_on: dt.date
    measures: str
    signer_name: str
    signer_email: str
    withdrawn_at: dt.datetime | None
    withdrawn_by: str | None
    withdrawal_reason: str | None


class ConsentIn(_In):
    """A consent received outside the gateway's sources (e.g. from the e-bidding system)."""

    contractor_name: str = Field(min_length=1, max_length=200)
    contractor: ContractorIn
    signer_name: str = Field(min_length=1, max_length=200)
    signer_title: str | None = Field(default=None, max_length=200)
    signer_email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
    consented_on: dt.date = Field(description="承諾日")
    measures: str | None = Field(
        default=None, max_length=300, description="電磁的措置 agreed to; default: this gateway's"
    )
    access_code: str | None = Field(
        default=None, min_length=4, max_length=64, json_schema_extra={"writeOnly": True}
    )


class WithdrawIn(_In):
    """Why the consent is withdrawn."""

    reason: str = Field(min_length=1, max_length=2000)


class EnvelopeOut(BaseModel):
    """An envelope's status, per party."""

    id: str
    management_number: str
    title: str
    state: str
    state_ja: str
    creator: str
    sender_email: str | None
    certificate_id: str
    created_at: dt.datetime
    sent_at: dt.datetime | None
    completed_at: dt.datetime | None
    metadata: MetadataOut
    amends: str | None
    amended_by: list[str]
    last_error: str | None
    # When the documents were deleted at the end of their retention (downloads answer 410).
    documents_purged_at: dt.datetime | None = None
    contract_type: str | None = None
    contract_type_ja: str | None = None
    consent: ConsentOut | None = None
    documents: list[DocumentOut]
    parties: list[PartyOut]


class EnvelopeSummary(BaseModel):
    id: str
    management_number: str
    title: str
    state: str
    state_ja: str
    created_at: dt.datetime
    completed_at: dt.datetime | None
    # The records-law keys (電子帳簿保存法): 取引年月日, 取引金額, 取引先; and the department.
    transaction_date: dt.date | None = None
    amount: int | None = None
    counterparty: str | None = None
    department: str | None = None


class EnvelopeList(BaseModel):
    items: list[EnvelopeSummary]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


def envelope_out(
    envelope: Envelope,
    *,
    amends: str | None,
    amended_by: list[str],
    locked: frozenset[str] | set[str] = frozenset(),
) -> EnvelopeOut:
    """The API view of an envelope; never a link token or an access code. ``locked``: the ids
    of the parties whose link is locked."""
    return EnvelopeOut(
        id=envelope.id,
        management_number=envelope.management_number,
        title=envelope.title,
        state=envelope.state.value,
        state_ja=envelope_state_ja(envelope.state),
        creator=envelope.creator,
        sender_email=envelope.creator_email,
        certificate_id=envelope.certificate_id,
        created_at=envelope.created_at,
        sent_at=envelope.sent_at,
        completed_at=envelope.completed_at,
        metadata=MetadataOut(
            amount=int(envelope.amount) if envelope.amount is not None else None,
            counterparty=envelope.counterparty,
            transaction_date=envelope.transaction_date,
            deadline=envelope.deadline,
            department=envelope.department,
        ),
        amends=amends,
        amended_by=amended_by,
        last_error=envelope.last_error,
        documents_purged_at=envelope.documents_purged_at,
        contract_type=envelope.contract_type,
        contract_type_ja=CONTRACT_TYPE_JA.get(envelope.contract_type or ""),
        consent=consent_out(envelope.consent),
        documents=[
            DocumentOut(
                position=d.position,
                name=d.name,
                page_count=d.page_count,
                size=d.size,
                signature_count=d.signature_count,
            )
            for d in envelope.documents
        ],
        parties=[
            PartyOut(
                routing_order=p.routing_order,
                role=p.role.value,
                name=p.name,
                email=p.email,
                company=p.company,
                state=p.state.value,
                state_ja=party_state_ja(p.state),
                sent_at=p.sent_at,
                viewed_at=p.viewed_at,
                approved_at=p.approved_at,
                completed_at=p.completed_at,
                decline_reason=p.decline_reason,
                staff=p.staff_id is not None,
                auth_method=p.auth_method,
                locked=p.id in locked,
            )
            for p in envelope.parties
        ],
    )


def consent_out(consent: UsageRequest | None) -> ConsentOut | None:
    """The API view of a consent (never its access code)."""
    data = consent_json(consent)
    return None if data is None else ConsentOut.model_validate(data)


def envelope_summary(envelope: Envelope) -> EnvelopeSummary:
    """One line of the list."""
    return EnvelopeSummary(
        id=envelope.id,
        management_number=envelope.management_number,
        title=envelope.title,
        state=envelope.state.value,
        state_ja=envelope_state_ja(envelope.state),
        created_at=envelope.created_at,
        completed_at=envelope.completed_at,
        transaction_date=envelope.transaction_date,
        amount=int(envelope.amount) if envelope.amount is not None else None,
        counterparty=envelope.counterparty,
        department=envelope.department,
    )
