"""What the SOAP source does with a response: checks its payload against an XSD (a zeep
plugin), turns it into flat records, and says with a coded error why a call failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xmlschema
from zeep import Plugin
from zeep.exceptions import DTDForbidden, EntitiesForbidden, Fault, TransportError, XMLSyntaxError
from zeep.exceptions import Error as ZeepError
from zeep.helpers import serialize_object

from connectors.base import Provenance, RawRecord
from connectors.soap._client import http_error
from core.errors import Disposition, GatewayError, SourceError

__all__ = ["ValidateResponse", "call_error", "flatten", "response_items", "response_records"]

_UNSAFE_JA = "SOAP応答に安全でないXML(DTD・エンティティ)が含まれていたため拒否しました。"


class ValidateResponse(Plugin):
    """Checks each response payload (the first child of soap:Body) against an XSD."""

    def __init__(self, schema: xmlschema.XMLSchema, name: str) -> None:
        self.schema = schema
        self.name = name

    @classmethod
    def load(cls, path: Path, name: str) -> ValidateResponse:
        """The check against the XSD at ``path`` (which may include files next to it, nothing
        else); a schema that cannot be loaded is a fatal ``soap.bad_schema``."""
        try:
            schema = xmlschema.XMLSchema(
                str(Path(path).resolve()), defuse="always", allow="sandbox"
            )
        except (xmlschema.XMLSchemaException, OSError) as exc:
            raise SourceError(
                "soap.bad_schema",
                f"{name}: cannot load response schema {path}: {exc}",
                "SOAP応答の定義(XSD)を読み込めません。",
                disposition=Disposition.FATAL,
            ) from exc
        return cls(schema, name)

    def ingress(self, envelope: Any, http_headers: Any, operation: Any) -> tuple[Any, Any]:
        body = next((child for child in envelope if str(child.tag).endswith("}Body")), None)
        payload = body[0] if body is not None and len(body) else None
        if payload is not None and not str(payload.tag).endswith("}Fault"):
            # The payload is already parsed (by zeep, DTDs and entities forbidden); as a resource
            # it may load nothing.
            resource = xmlschema.XMLResource(payload, allow="none", defuse="always")
            errors = list(self.schema.iter_errors(resource))
            if errors:
                raise SourceError(
                    "soap.invalid_response",
                    f"{self.name}: the response does not match its schema: {errors[0].reason}",
                    "SOAP応答が定義(XSD)に適合しません。",
                    disposition=Disposition.FATAL,
                    details={"problems": [str(e.reason) for e in errors[:10]]},
                )
        return envelope, http_headers


def flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    """Put each value of a record's nested mappings in ``out`` under its dotted name
    (``contractor.name``; a list of mappings as ``guarantees.0.kind``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(node, list) and node and isinstance(node[0], dict):
        for index, value in enumerate(node):
            flatten(value, f"{prefix}.{index}", out)
    else:
        out[prefix] = node


def response_items(response: Any, record_path: str) -> list[Any]:
    """The repeated record elements at the dotted ``record_path`` of a zeep response."""
    node: Any = serialize_object(response, target_cls=dict)  # type: ignore[no-untyped-call]
    # zeep unwraps a response whose payload holds one element (``awards``), down to the
    # record list itself: follow the path only as far as the response still has it.
    for index, part in enumerate(p for p in record_path.split(".") if p):
        if isinstance(node, list):
            break
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif index > 0 or not isinstance(node, dict):
            node = None
    return node if isinstance(node, list) else ([] if node is None else [node])


def response_records(response: Any, *, source: str, record_path: str) -> list[RawRecord]:
    """The response's records, flattened, each with where it came from
    (``awards.award[1]``)."""
    records = []
    for index, item in enumerate(response_items(response, record_path)):
        fields: dict[str, Any] = {}
        flatten(item if isinstance(item, dict) else {"value": item}, "", fields)
        records.append(
            RawRecord(fields, Provenance(source=source, path=f"{record_path}[{index + 1}]"))
        )
    return records


def call_error(
    exc: ZeepError | TypeError | ValueError, *, name: str, operation: str
) -> GatewayError:
    """Why a call of the source's ``operation`` failed, as a coded SourceError: unsafe XML, a
    response that cannot be read or a SOAP fault (all fatal), or an HTTP error."""
    if isinstance(exc, DTDForbidden | EntitiesForbidden):
        return SourceError(
            "soap.unsafe_xml",
            f"{name}: the response carries a DTD or entities (refused): {exc}",
            _UNSAFE_JA,
            disposition=Disposition.FATAL,
        )
    if isinstance(exc, XMLSyntaxError):
        return SourceError(
            "soap.bad_response",
            f"{name}: the response is not well-formed XML: {exc}",
            "SOAP応答がXMLとして正しくありません。",
            disposition=Disposition.FATAL,
        )
    if isinstance(exc, Fault):
        return SourceError(
            "soap.fault",
            f"{name}: {exc.code or 'fault'}: {exc.message}",
            f"SOAP連携元がエラーを返しました: {exc.message}",
            disposition=Disposition.FATAL,
        )
    if isinstance(exc, TransportError):
        return _transport_error(exc, name=name)
    return SourceError(
        "soap.bad_response",
        f"{name}: cannot read the {operation} response: {exc}",
        "SOAP応答を読み取れません。",
        disposition=Disposition.FATAL,
    )


def _transport_error(exc: TransportError, *, name: str) -> GatewayError:
    status = int(exc.status_code or 0)
    content = exc.content if isinstance(exc.content, bytes) else b""
    if 200 <= status < 300 and (b"<!DOCTYPE" in content[:4096] or b"<!ENTITY" in content):
        # libxml2 stopped an entity bomb before zeep's own DTD check could.
        return SourceError(
            "soap.unsafe_xml",
            f"{name}: the response carries a DTD or entities (refused)",
            _UNSAFE_JA,
            disposition=Disposition.FATAL,
        )
    return http_error(exc, name=name, error=SourceError, peer_ja="連携元")
