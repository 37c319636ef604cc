"""What a sink is given: the content of one delivery and the files and record rendered from it.

Plain frozen dataclasses with no service behind them, so a connector can import them without
loading the signing stack (pyHanko) or the HTTP clients: :func:`core.pushback.deliveries.assemble_content`
builds a :class:`PushContent`, ``connectors.outbound.render_outbound`` turns it into an
:class:`Outbound`, and :meth:`Sink.push <connectors.base.Sink.push>` takes that.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import Disposition, SinkError

__all__ = [
    "FACT_NAMES",
    "GuaranteeRecord",
    "Outbound",
    "OutboundFile",
    "PushContent",
    "PushDocument",
    "safe_name",
]

_UNSAFE_NAME = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


@dataclass(frozen=True)
class GuaranteeRecord:
    """One guarantee reference as it is pushed; the key is clear text here, so never logged."""

    kind: str
    kind_ja: str
    contract_number: str
    issuer: str
    authentication_key: str = field(repr=False)

    def as_dict(self, *, with_key: bool) -> dict[str, str]:
        """The reference as a mapping; the key only when ``with_key``."""
        data = {
            "kind": self.kind,
            "kind_ja": self.kind_ja,
            "contract_number": self.contract_number,
            "issuer": self.issuer,
        }
        if with_key:
            data["authentication_key"] = self.authentication_key
        return data


@dataclass(frozen=True)
class PushDocument:
    """One signed PDF."""

    name: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class PushContent:
    """Everything a sink may be sent for one delivery."""

    envelope_id: str
    event: str
    # Flat facts: str, Decimal, date, datetime (JST) or None.
    facts: dict[str, Any]
    guarantees: tuple[GuaranteeRecord, ...] = ()
    documents: tuple[PushDocument, ...] = ()
    certificate: bytes | None = field(default=None, repr=False)
    # The archive-timestamp version of a renewed copy (event "renewed"); None otherwise.
    version: int | None = None


FACT_NAMES = (
    "envelope_id",
    "event",
    "state",
    "management_number",
    "title",
    "contractor_name",
    "corporate_number",
    "amount",
    "transaction_date",
    "concluded_at",
    "concluded_on",
    "department",
    "buyer",
    "creator",
    "certificate_id",
    "document_names",
    "contract_type",
    "contract_type_ja",
    "consent_on",
    "consent_measures",
)


@dataclass(frozen=True)
class OutboundFile:
    """One file as it is sent."""

    name: str
    data: bytes = field(repr=False)
    media_type: str
    role: str  # document | certificate | record


@dataclass(frozen=True)
class Outbound:
    """One delivery, rendered: a sub-folder, files in write order, and the record's fields."""

    idempotency_key: str
    directory: str
    files: tuple[OutboundFile, ...]
    record: Mapping[str, Any]
    # The values file-name templates are filled with (for a sink's own trigger-file name).
    names: Mapping[str, str] = field(default_factory=dict)
    # True when no earlier attempt of this delivery can have reached the sink (its first
    # claim, never failed): a drop-folder sink may then skip looking for an earlier result.
    first_attempt: bool = False

    def fill(self, template: str) -> str:
        """``template`` filled like the file names of this delivery, made safe as a name."""
        try:
            return safe_name(template.format_map({**self.names, "ext": ""}))
        except (KeyError, IndexError, ValueError) as exc:
            raise _bad_template(template, exc) from exc


def safe_name(name: str) -> str:
    """A file name that stays in its folder: no separators, control characters or leading
    dots, NFC-normalised, at most 200 characters."""
    cleaned = _UNSAFE_NAME.sub("_", unicodedata.normalize("NFC", name)).strip().lstrip(".")
    return (cleaned or "_")[:200]


def _bad_template(template: str, exc: Exception) -> SinkError:
    return SinkError(
        "outbound.bad_template",
        f"template {template!r} cannot be filled: {exc}",
        "ファイル名の設定に誤りがあります。",
        disposition=Disposition.FATAL,
        details={},
    )
