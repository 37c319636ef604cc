"""The start-up checks of a sink's content: which record field sources, file-name templates,
encodings and XML names are known, and the record's XSD loads."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import xmlschema

from connectors.outbound.spec import ContentSpec
from core.errors import ConfigError
from core.model import GuaranteeKind
from core.outbound_types import FACT_NAMES

__all__ = ["check_source", "check_spec", "check_template", "record_schema"]

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
GUARANTEE_INDEX = re.compile(r"^guarantees\.([1-9][0-9]?)\.([a-z_]+)$")
GUARANTEE_KIND = re.compile(r"^guarantee\.([a-z_]+)\.([a-z_]+)$")
# An XML element name without a namespace prefix (letters of any script, digits, . - _).
_XML_NAME = re.compile(r"^[^\W\d][\w.\-]*$")


def _config_error(en: str, ja: str) -> ConfigError:
    return ConfigError("config.sink_content", en, ja)


def check_source(source: str) -> None:
    """Raise ``ValueError`` unless ``source`` names something a record can hold."""
    if source in FACT_NAMES or source in ("idempotency_key", "guarantees", "guarantees_with_keys"):
        return
    match = GUARANTEE_INDEX.match(source) or GUARANTEE_KIND.match(source)
    if match is None:
        raise ValueError(f"unknown record field source {source!r}")
    if match.re is GUARANTEE_KIND and match.group(1) not in {k.value for k in GuaranteeKind}:
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
                record_schema(record.xsd)
    except ValueError as exc:
        raise _config_error(
            f"sink content: {exc}", f"送信内容の設定に誤りがあります: {exc}"
        ) from exc


@functools.lru_cache(maxsize=16)
def record_schema(path: Path) -> xmlschema.XMLSchemaBase:
    """The record XSD at ``path``, loaded once; one that cannot be loaded is a config error."""
    try:
        # The schema may include files next to it, nothing else; no network, no entities.
        return xmlschema.XMLSchema(str(path), defuse="always", allow="sandbox")
    except (OSError, xmlschema.XMLSchemaException) as exc:
        raise _config_error(
            f"cannot load XSD {path}: {exc}", f"XMLスキーマ {path} を読み込めません。"
        ) from exc
