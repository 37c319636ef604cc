"""What a sink sends: files named from templates, and a metadata record in JSON, XML or CSV.

A :class:`ContentSpec` (one per sink, from the YAML config) says which files go out (the signed
PDFs, the completion certificate), how they are named, and which metadata record goes with them:
output name → source field, rendered as JSON, as XML validated against a configured XSD, or as
CSV in UTF-8 or CP932. :func:`render_outbound` turns the core's
:class:`~core.outbound_types.PushContent` into an :class:`~core.outbound_types.Outbound`, which
is what :meth:`Sink.push <connectors.base.Sink.push>` takes.

Record fields name a fact (``management_number``, ``contractor_name``, ``amount``,
``concluded_on`` ...), ``idempotency_key``, ``guarantees`` (the whole list; JSON and XML), or one
guarantee value: ``guarantees.1.contract_number`` (the first reference) or
``guarantee.advance.authentication_key`` (the first 前払金保証). A record that cannot be
rendered (a character CP932 cannot hold, a value the XSD refuses) is a refusal of that one
delivery: it goes dead with the reason instead of being written with ``?`` in it.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import xmlschema
from pydantic import Field

from connectors.base import ConnectorConfig, Resolve
from core.csv_export import SafeCsvWriter, neutralise
from core.errors import ConfigError, Disposition, SinkError
from core.model import GuaranteeKind
from core.outbound_types import FACT_NAMES, Outbound, OutboundFile, PushContent, safe_name

__all__ = [
    "ContentConfig",
    "ContentSpec",
    "RecordConfig",
    "RecordSpec",
    "check_source",
    "check_spec",
    "check_template",
    "encode_cp932",
    "manifest",
    "record_values",
    "render_outbound",
    "render_record",
]

RecordFormat = Literal["json", "xml", "csv"]
ENCODINGS = ("utf-8", "utf-8-sig", "cp932")
GUARANTEE_ATTRS = ("kind", "kind_ja", "contract_number", "issuer", "authentication_key")
TEMPLATE_KEYS = (
    "management_number",
    "title",
    "envelope_id",
    "certificate_id",
    "event",
    "concluded_on",
    "contractor_name",
    "document",
    "index",
    "version",
)
# Characters outside CP932 that have a CP932 look-alike (the JIS X 0208 vs Microsoft mapping
# differences); anything else that does not encode refuses the record.
CP932_SUBSTITUTES = str.maketrans(
    {
        "\u301c": "\uff5e",  # 〜 WAVE DASH → ～ FULLWIDTH TILDE
        "\u2212": "\uff0d",  # − MINUS SIGN → － FULLWIDTH HYPHEN-MINUS
        "\u2014": "\u2015",  # — EM DASH → ― HORIZONTAL BAR
        "\u2016": "\u2225",  # ‖ DOUBLE VERTICAL LINE → ∥ PARALLEL TO
        "\u00a2": "\uffe0",  # ¢ → ￠
        "\u00a3": "\uffe1",  # £ → ￡
        "\u00ac": "\uffe2",  # ¬ → ￢
    }
)
_GUARANTEE_INDEX = re.compile(r"^guarantees\.([1-9][0-9]?)\.([a-z_]+)$")
_GUARANTEE_KIND = re.compile(r"^guarantee\.([a-z_]+)\.([a-z_]+)$")
# An XML element name without a namespace prefix (letters of any script, digits, . - _).
_XML_NAME = re.compile(r"^[^\W\d][\w.\-]*$")


@dataclass(frozen=True)
class RecordSpec:
    """The metadata record: format, file name template, and output name → source field."""

    format: RecordFormat
    fields: Mapping[str, str]
    name: str = "{management_number}.{ext}"
    encoding: str = "utf-8"
    attach: bool = True  # False: no file; the fields still go to structured sinks (SOAP, REST)
    header: bool = True  # CSV: a header row with the output names
    xml_root: str = "contract"
    xsd: Path | None = None
    date_format: str = "%Y-%m-%d"


@dataclass(frozen=True)
class ContentSpec:
    """Which files one sink receives and how they are named."""

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


class RecordConfig(ConnectorConfig):
    """The ``content.record`` settings of a sink (see :class:`RecordSpec`)."""

    format: RecordFormat = "json"
    name: str = "{management_number}.{ext}"
    encoding: Literal["utf-8", "utf-8-sig", "cp932"] = "utf-8"
    attach: bool = True
    header: bool = True
    xml_root: str = "contract"
    xsd: Path | None = None
    date_format: str = "%Y-%m-%d"
    fields: dict[str, str] = Field(min_length=1)


class ContentConfig(ConnectorConfig):
    """The ``content`` settings of a sink: what it is sent (see :class:`ContentSpec`)."""

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


def _refused(code: str, en: str, ja: str, **details: object) -> SinkError:
    return SinkError(code, en, ja, disposition=Disposition.FATAL, details=dict(details))


def _config_error(en: str, ja: str) -> ConfigError:
    return ConfigError("config.sink_content", en, ja)


def check_source(source: str) -> None:
    """Raise ``ValueError`` unless ``source`` names something a record can hold."""
    if source in FACT_NAMES or source in ("idempotency_key", "guarantees", "guarantees_with_keys"):
        return
    match = _GUARANTEE_INDEX.match(source) or _GUARANTEE_KIND.match(source)
    if match is None:
        raise ValueError(f"unknown record field source {source!r}")
    if match.re is _GUARANTEE_KIND and match.group(1) not in {k.value for k in GuaranteeKind}:
        raise ValueError(f"unknown guarantee kind in {source!r}")
    if match.group(2) not in GUARANTEE_ATTRS:
        raise ValueError(f"unknown guarantee value in {source!r}; one of {GUARANTEE_ATTRS}")


def check_template(template: str) -> None:
    """Raise ``ValueError`` unless ``template`` uses only known ``{names}``."""
    try:
        template.format_map({key: "x" for key in TEMPLATE_KEYS})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"bad file-name template {template!r}: {exc}; use {TEMPLATE_KEYS}"
        ) from exc


def check_spec(spec: ContentSpec) -> None:
    """Refuse a spec with unknown sources, templates, encodings or XML names (at start-up)."""
    try:
        for template in (
            spec.document_name,
            spec.certificate_name,
            spec.directory,
            spec.renewed_document_name,
        ):
            check_template(template)
        record = spec.record
        check_template(spec.update_record_name.replace("{ext}", "x"))
        if record is not None:
            check_template(record.name.replace("{ext}", "x"))
            if not record.fields:
                raise ValueError("a record needs at least one field")
            for source in record.fields.values():
                check_source(source)
            if record.encoding not in ENCODINGS:
                raise ValueError(f"encoding must be one of {ENCODINGS}")
            if record.format != "csv" and record.encoding == "cp932":
                raise ValueError("cp932 is for CSV records only; JSON and XML are UTF-8")
            if record.format == "csv" and any(
                s in ("guarantees", "guarantees_with_keys") for s in record.fields.values()
            ):
                raise ValueError("a CSV row holds single values: use guarantees.1.contract_number")
            if record.format == "xml":
                for name in (record.xml_root, *record.fields):
                    if not _XML_NAME.match(name) or name.lower().startswith("xml"):
                        raise ValueError(f"{name!r} is not a valid XML element name")
            if record.xsd is not None:
                _schema(record.xsd)
    except ValueError as exc:
        raise _config_error(
            f"sink content: {exc}", f"送信内容の設定に誤りがあります: {exc}"
        ) from exc


@functools.lru_cache(maxsize=16)
def _schema(path: Path) -> xmlschema.XMLSchemaBase:
    try:
        # The schema may include files next to it, nothing else; no network, no entities.
        return xmlschema.XMLSchema(str(path), defuse="always", allow="sandbox")
    except (OSError, xmlschema.XMLSchemaException) as exc:
        raise _config_error(
            f"cannot load XSD {path}: {exc}", f"XMLスキーマ {path} を読み込めません。"
        ) from exc


def _template_values(content: PushContent) -> dict[str, str]:
    facts = content.facts
    concluded = facts.get("concluded_on")
    return {
        "management_number": str(facts["management_number"]),
        "title": str(facts["title"]),
        "envelope_id": content.envelope_id,
        "certificate_id": str(facts["certificate_id"]),
        "event": content.event,
        "concluded_on": concluded.strftime("%Y%m%d") if concluded else "",
        "contractor_name": str(facts.get("contractor_name") or ""),
        "document": "",
        "index": "",
        "version": str(content.version) if content.version is not None else "",
    }


def _format(template: str, values: Mapping[str, str]) -> str:
    return template.format_map(values)


def _scalar(value: Any, date_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return value.strftime(date_format)
    return str(value)


def _source_value(content: PushContent, key: str, source: str) -> Any:
    if source == "idempotency_key":
        return key
    if source in ("guarantees", "guarantees_with_keys"):
        with_key = source == "guarantees_with_keys"
        return [g.as_dict(with_key=with_key) for g in content.guarantees]
    if source in content.facts:
        return content.facts[source]
    match = _GUARANTEE_INDEX.match(source)
    if match:
        index = int(match.group(1)) - 1
        if index >= len(content.guarantees):
            return None
        return getattr(content.guarantees[index], match.group(2))
    match = _GUARANTEE_KIND.match(source)
    if match:
        for guarantee in content.guarantees:
            if guarantee.kind == match.group(1):
                return getattr(guarantee, match.group(2))
        return None
    raise _refused("outbound.bad_source", f"unknown record source {source!r}", "送信項目の設定誤り")


def record_values(content: PushContent, key: str, spec: RecordSpec) -> dict[str, Any]:
    """Output name → value (scalars as text; ``guarantees`` as a list of mappings)."""
    values: dict[str, Any] = {}
    for name, source in spec.fields.items():
        value = _source_value(content, key, source)
        values[name] = value if isinstance(value, list) else _scalar(value, spec.date_format)
    return values


def encode_cp932(text: str, *, field_name: str) -> bytes:
    """``text`` in CP932 after the look-alike substitutions; a character with no CP932 form
    refuses the record (``outbound.unencodable``) rather than turning into ``?``."""
    mapped = text.translate(CP932_SUBSTITUTES)
    try:
        return mapped.encode("cp932")
    except UnicodeEncodeError as exc:
        bad = mapped[exc.start]
        raise _refused(
            "outbound.unencodable",
            f"field {field_name!r}: {bad!r} (U+{ord(bad):04X}) has no CP932 form",
            f"項目「{field_name}」の文字「{bad}」(U+{ord(bad):04X})はShift_JIS(CP932)で"
            "表せないため、送信できません。",
            field=field_name,
            character=f"U+{ord(bad):04X}",
        ) from exc


def _render_csv(values: Mapping[str, Any], spec: RecordSpec) -> bytes:
    buffer = io.StringIO()
    # Finance staff open these files in Excel too: formula cells are neutralised.
    writer = SafeCsvWriter(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    if spec.header:
        writer.writerow(list(values))
    writer.writerow([values[name] for name in values])
    text = buffer.getvalue()
    if spec.encoding == "cp932":
        # Per field, so the error names the field that cannot be written.
        for name, value in values.items():
            encode_cp932(neutralise(value), field_name=name)
        return encode_cp932(text, field_name="(header)")
    return text.encode(spec.encoding)


def _render_xml(values: Mapping[str, Any], spec: RecordSpec) -> bytes:
    root = ET.Element(spec.xml_root)
    for name, value in values.items():
        element = ET.SubElement(root, name)
        if isinstance(value, list):
            for item in value:
                child = ET.SubElement(element, "guarantee")
                for attr, text in item.items():
                    ET.SubElement(child, attr).text = text
        else:
            element.text = value
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    if spec.xsd is not None:
        schema = _schema(spec.xsd)
        resource = xmlschema.XMLResource(io.BytesIO(data), defuse="always", allow="none")
        errors = [f"{e.path}: {e.reason}" for e in schema.iter_errors(resource)]
        if errors:
            raise _refused(
                "outbound.invalid_record",
                f"the XML record does not match {spec.xsd.name}: " + "; ".join(errors[:5]),
                "送信データがXMLスキーマに適合しません: " + "; ".join(errors[:5]),
                errors=errors[:20],
            )
    return data + b"\n"


def render_record(values: Mapping[str, Any], spec: RecordSpec) -> tuple[bytes, str, str]:
    """(bytes, media type, extension) of one record."""
    if spec.format == "json":
        data = json.dumps(values, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
        return data, "application/json", "json"
    if spec.format == "xml":
        return _render_xml(values, spec), "application/xml", "xml"
    charset = "Shift_JIS" if spec.encoding == "cp932" else "utf-8"
    return _render_csv(values, spec), f"text/csv; charset={charset}", "csv"


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, dot + ext) if dot else (name, "")
    counter = 2
    while f"{stem}_{counter}{ext}" in taken:
        counter += 1
    return f"{stem}_{counter}{ext}"


def render_outbound(
    content: PushContent, spec: ContentSpec, idempotency_key: str, *, first_attempt: bool = False
) -> Outbound:
    """The files and record one sink receives for one delivery."""
    values = _template_values(content)
    try:
        directory = "/".join(
            safe_name(part) for part in _format(spec.directory, values).split("/") if part
        )
        files: list[OutboundFile] = []
        taken: set[str] = set()

        def add(name: str, data: bytes, media_type: str, role: str) -> None:
            unique = _unique(safe_name(name), taken)
            taken.add(unique)
            files.append(OutboundFile(name=unique, data=data, media_type=media_type, role=role))

        if spec.documents:
            for index, doc in enumerate(content.documents, start=1):
                stem = doc.name[:-4] if doc.name.lower().endswith(".pdf") else doc.name
                name = _format(
                    spec.document_name, {**values, "document": stem, "index": str(index)}
                )
                add(name, doc.data, "application/pdf", "document")
        if spec.certificate and content.certificate is not None:
            add(
                _format(spec.certificate_name, values),
                content.certificate,
                "application/pdf",
                "certificate",
            )
        record: dict[str, Any] = {}
        if spec.record is not None:
            record = record_values(content, idempotency_key, spec.record)
            if spec.record.attach:
                data, media_type, ext = render_record(record, spec.record)
                add(_format(spec.record.name, {**values, "ext": ext}), data, media_type, "record")
    except (KeyError, IndexError, ValueError) as exc:
        raise _refused(
            "outbound.bad_template",
            f"a file-name template cannot be filled: {exc}",
            "ファイル名の設定に誤りがあります。",
        ) from exc
    return Outbound(
        idempotency_key=idempotency_key,
        directory=directory,
        files=tuple(files),
        record=record,
        names=values,
        first_attempt=first_attempt,
    )


def manifest(outbound: Outbound, files: Sequence[OutboundFile] | None = None) -> bytes:
    """The trigger (control) file's content: the idempotency key and each file with its size
    and SHA-256, as JSON. A reader that sees it knows every listed file is complete."""
    listed = outbound.files if files is None else files
    body = {
        "idempotency_key": outbound.idempotency_key,
        "files": [
            {"name": f.name, "size": len(f.data), "sha256": hashlib.sha256(f.data).hexdigest()}
            for f in listed
        ],
    }
    return json.dumps(body, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
