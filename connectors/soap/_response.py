"""What the SOAP source does with a response: checks its payload against an XSD (a zeep
plugin) and turns it into flat records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xmlschema
from zeep import Plugin
from zeep.helpers import serialize_object

from core.errors import Disposition, SourceError

__all__ = ["ValidateResponse", "flatten", "response_items"]


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
