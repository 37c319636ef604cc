"""The metadata record a sink is sent: each output name's value from its source field, rendered
as JSON, as XML checked against the configured XSD, or as CSV in UTF-8 or CP932. A record that
cannot be rendered refuses its delivery."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import xmlschema

from connectors.outbound.check import GUARANTEE_INDEX, GUARANTEE_KIND, record_schema
from connectors.outbound.spec import RecordSpec
from core.csv_export import SafeCsvWriter, neutralise
from core.errors import Disposition, SinkError
from core.outbound_types import PushContent

__all__ = ["encode_cp932", "record_values", "render_record"]

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


def _refused(code: str, en: str, ja: str, **details: object) -> SinkError:
    return SinkError(code, en, ja, disposition=Disposition.FATAL, details=dict(details))


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
    match = GUARANTEE_INDEX.match(source)
    if match:
        index = int(match.group(1)) - 1
        if index >= len(content.guarantees):
            return None
        return getattr(content.guarantees[index], match.group(2))
    match = GUARANTEE_KIND.match(source)
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
        schema = record_schema(spec.xsd)
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
