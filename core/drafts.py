"""What a mapping makes of one source record, before anything is stored.

``mapping/`` produces these (pure, no I/O); :mod:`core.intake` stores them. An
:class:`EnvelopeDraft` is one award on its way to an envelope; a :class:`ContractorDraft` is one
row of a bidder registry (registered e-mail addresses); a :class:`UsageRequestDraft` is one
電子契約利用申出書 / 承諾書. A :class:`LineError` is one refused record or field.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "ContractorDraft",
    "ContractorRef",
    "DocumentRef",
    "Draft",
    "EnvelopeDraft",
    "FieldDraft",
    "LineError",
    "PartyDraft",
    "SigningAuthority",
    "UsageRequestDraft",
]

PartySource = Literal["fixed", "contractor", "signing_authority"]


@dataclass(frozen=True)
class SigningAuthority:
    """One line of the signing-authority register (契約締結権限, 地方自治法 234条5項 and the
    buyer's delegation rules): who signs for the buyer up to which amount, for which department.

    ``department`` ``"*"`` applies to every department; ``max_amount`` None means no ceiling.
    """

    department: str
    max_amount: Decimal | None
    name: str
    email: str
    title: str | None = None


@dataclass(frozen=True)
class ContractorRef:
    """How a record names its contractor; matched by corporate number, then registry code, then
    name."""

    name: str | None = None
    corporate_number: str | None = None
    registry_code: str | None = None

    def describe(self) -> str:
        """A short text for messages."""
        return self.name or self.corporate_number or self.registry_code or "?"


@dataclass(frozen=True)
class DocumentRef:
    """Where one contract PDF comes from: a path on the source's own server or folder, or bytes
    attached to the record (SOAP)."""

    name: str
    path: str | None = None
    data: bytes | None = field(default=None, repr=False)
    required: bool = True

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, with attached bytes replaced by their SHA-256."""
        out: dict[str, Any] = {"name": self.name, "required": self.required}
        if self.path is not None:
            out["path"] = self.path
        if self.data is not None:
            out["sha256"] = hashlib.sha256(self.data).hexdigest()
            out["size"] = len(self.data)
        return out


@dataclass(frozen=True)
class PartyDraft:
    """One party in routing order. ``contractor`` parties are completed from the usage request
    at intake; ``signing_authority`` and ``fixed`` ones carry their name and e-mail already."""

    role: str  # approver | signer | cc
    source: PartySource = "fixed"
    name: str | None = None
    email: str | None = None
    company: str | None = None
    title: str | None = None
    # A ``fixed`` party bound to the staff account with its e-mail (signs after logging in);
    # ``signing_authority`` parties are always staff. None (not False) keeps drafts made
    # before this key existed at the same fingerprint.
    staff: bool | None = None


@dataclass(frozen=True)
class FieldDraft:
    """A text box: document and party are 0-based positions in the draft's lists."""

    document: int
    party: int
    label: str
    page: int
    rect: tuple[float, float, float, float]
    required: bool = True
    max_length: int = 200


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class EnvelopeDraft:
    """One award as an envelope to be: the mapping's whole output for an ``awards`` record."""

    award_id: str
    title: str
    contractor: ContractorRef
    amount: Decimal | None = None
    award_date: dt.date | None = None
    transaction_date: dt.date | None = None
    department: str | None = None
    deadline: dt.date | None = None
    management_number: str | None = None
    documents: tuple[DocumentRef, ...] = ()
    parties: tuple[PartyDraft, ...] = ()
    fields: tuple[FieldDraft, ...] = ()
    # 契約種別: construction | other; None when the mapping does not say (taken as construction).
    contract_type: str | None = None
    # Where the contractor's signer comes from when not the usage request: registry | mapping.
    signer_from: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The draft as JSON-ready data (what is stored on the award and printed by
        ``mapping check``). Keys added later appear only when set, so older drafts keep their
        fingerprints."""
        extra: dict[str, Any] = {}
        if self.contract_type is not None:
            extra["contract_type"] = self.contract_type
        if self.signer_from is not None:
            extra["signer_from"] = self.signer_from
        return extra | {
            "award_id": self.award_id,
            "title": self.title,
            "amount": _jsonable(self.amount),
            "award_date": _jsonable(self.award_date),
            "transaction_date": _jsonable(self.transaction_date),
            "department": self.department,
            "deadline": _jsonable(self.deadline),
            "management_number": self.management_number,
            "contractor": {
                "name": self.contractor.name,
                "corporate_number": self.contractor.corporate_number,
                "registry_code": self.contractor.registry_code,
            },
            "documents": [d.as_json() for d in self.documents],
            "parties": [{k: v for k, v in vars(p).items() if v is not None} for p in self.parties],
            "fields": [{k: _jsonable(v) for k, v in vars(f).items()} for f in self.fields],
        }

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON: equal drafts, equal fingerprints."""
        text = json.dumps(self.as_json(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ContractorDraft:
    """One row of a bidder registry: a contractor and its registered e-mail addresses."""

    contractor: ContractorRef
    emails: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"contractor": vars(self.contractor), "emails": list(self.emails)}


@dataclass(frozen=True)
class UsageRequestDraft:
    """One usage request (電子契約利用申出書 / 承諾書). The access code is never printed."""

    contractor: ContractorRef
    signer_name: str
    signer_email: str
    signer_title: str | None = None
    access_code: str | None = field(default=None, repr=False)
    award_id: str | None = None  # the one award it covers; None: all of the contractor's
    contact_department: str | None = None
    contact_name: str | None = None
    contact_phone: str | None = None
    contact_email: str | None = None
    consented_on: dt.date | None = None
    request_id: str | None = None  # the form's own number, when the source has one
    measures: str | None = None  # 電磁的措置 the contractor agreed to

    def key(self) -> str:
        """What makes two rows the same request: its own id, else contractor and award."""
        if self.request_id:
            return self.request_id
        who = (
            self.contractor.corporate_number
            or self.contractor.registry_code
            or self.contractor.name
            or ""
        )
        return f"{who}|{self.award_id or '*'}"

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, with the access code masked."""
        out = {k: _jsonable(v) for k, v in vars(self).items() if k != "contractor"}
        out["contractor"] = vars(self.contractor)
        out["access_code"] = "****" if self.access_code else None
        return out


Draft = EnvelopeDraft | ContractorDraft | UsageRequestDraft


@dataclass(frozen=True)
class LineError:
    """One refused record or field: where (source, file, line or element path), which field,
    why (English and Japanese), and which line of the mapping YAML made the decision."""

    source: str
    code: str
    reason: str
    reason_ja: str
    file: str | None = None
    line: int | None = None
    path: str | None = None
    field: str | None = None
    mapping_line: int | None = None

    def describe(self) -> str:
        """``file:line: field: reason (mapping line N)`` for terminals and logs."""
        where = ":".join(
            str(p) for p in (self.source, self.file, self.line, self.path) if p is not None
        )
        what = f"{self.field}: " if self.field else ""
        rule = f" (mapping line {self.mapping_line})" if self.mapping_line else ""
        return f"{where}: {what}{self.reason} [{self.code}]{rule}"

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {k: v for k, v in vars(self).items() if v is not None}
