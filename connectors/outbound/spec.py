"""What one sink is sent: each admin's YAML shape (``content``, ``content.record``) beside the
runtime spec it makes (:meth:`ContentConfig.spec`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from connectors.base import ConnectorConfig, Resolve

__all__ = ["ContentConfig", "ContentSpec", "RecordConfig", "RecordSpec"]

RecordFormat = Literal["json", "xml", "csv"]


@dataclass(frozen=True)
class RecordSpec:
    """The metadata record: format, file name template, and output name → source field (the
    runtime value; the admin's YAML shape is :class:`RecordConfig`)."""

    format: RecordFormat
    fields: Mapping[str, str]
    name: str = "{management_number}.{ext}"
    encoding: str = "utf-8"
    attach: bool = True  # False: no file; the fields still go to structured sinks (SOAP, REST)
    header: bool = True  # CSV: a header row with the output names
    xml_root: str = "contract"
    xsd: Path | None = None
    date_format: str = "%Y-%m-%d"


class RecordConfig(ConnectorConfig):
    """The ``content.record`` settings of a sink: the admin's YAML shape of :class:`RecordSpec`."""

    format: RecordFormat = "json"
    name: str = "{management_number}.{ext}"
    encoding: Literal["utf-8", "utf-8-sig", "cp932"] = "utf-8"
    attach: bool = True
    header: bool = True
    xml_root: str = "contract"
    xsd: Path | None = None
    date_format: str = "%Y-%m-%d"
    fields: dict[str, str] = Field(min_length=1)


@dataclass(frozen=True)
class ContentSpec:
    """Which files one sink receives and how they are named (the runtime value; the admin's
    YAML shape is :class:`ContentConfig`)."""

    documents: bool = True
    document_name: str = "{management_number}_{document}.pdf"
    certificate: bool = True
    certificate_name: str = "{management_number}_締結証明書.pdf"
    directory: str = ""
    record: RecordSpec | None = None
    # A renewed copy (new archive timestamp) must not overwrite the copy taken at completion.
    renewed_document_name: str = "{management_number}_{document}_r{version}.pdf"
    # The record of a guarantee change after completion (an update, not the first record).
    update_record_name: str = "{management_number}_update{version}.{ext}"

    @property
    def guarantee_keys(self) -> bool:
        """True when the record sends any authentication key (so it must be decrypted)."""
        if self.record is None:
            return False
        return any(
            source.endswith(".authentication_key") or source == "guarantees_with_keys"
            for source in self.record.fields.values()
        )


class ContentConfig(ConnectorConfig):
    """The ``content`` settings of a sink, what it is sent: the admin's YAML shape of
    :class:`ContentSpec`, the runtime value :meth:`spec` makes."""

    documents: bool = True
    document_name: str = "{management_number}_{document}.pdf"
    certificate: bool = True
    certificate_name: str = "{management_number}_締結証明書.pdf"
    directory: str = ""
    record: RecordConfig | None = None
    renewed_document_name: str = "{management_number}_{document}_r{version}.pdf"
    update_record_name: str = "{management_number}_update{version}.{ext}"

    def spec(self, resolve: Resolve | None) -> ContentSpec:
        """The content these settings describe, the record's XSD resolved with ``resolve``
        (None: left out, for checking the templates and fields before the config folder is
        known)."""
        record = self.record
        xsd = None
        if record is not None and record.xsd is not None and resolve is not None:
            xsd = resolve(record.xsd)
        return ContentSpec(
            documents=self.documents,
            document_name=self.document_name,
            certificate=self.certificate,
            certificate_name=self.certificate_name,
            directory=self.directory,
            renewed_document_name=self.renewed_document_name,
            update_record_name=self.update_record_name,
            record=None
            if record is None
            else RecordSpec(
                format=record.format,
                fields=dict(record.fields),
                name=record.name,
                encoding=record.encoding,
                attach=record.attach,
                header=record.header,
                xml_root=record.xml_root,
                xsd=xsd,
                date_format=record.date_format,
            ),
        )
