"""The files one sink receives for one delivery, named from the spec's templates, and the
manifest its trigger (control) file carries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from connectors.outbound.record import record_values, render_record
from connectors.outbound.spec import ContentSpec
from core.errors import Disposition, SinkError
from core.outbound_types import Outbound, OutboundFile, PushContent, safe_name

__all__ = ["manifest", "render_outbound"]


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
        raise SinkError(
            "outbound.bad_template",
            f"a file-name template cannot be filled: {exc}",
            "ファイル名の設定に誤りがあります。",
            disposition=Disposition.FATAL,
            details={},
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
