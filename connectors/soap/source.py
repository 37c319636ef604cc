"""The SOAP source: awards from a procurement system's SOAP service, with a bookmark, retries
of the records that failed, and documents named by path read through another connector.

The client is made on first use and kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from zeep import Client
from zeep.exceptions import Error as ZeepError
from zeep.wsse.username import UsernameToken

from connectors.base import Batch, RawRecord, Source
from connectors.soap._client import open_client, unreachable
from connectors.soap._response import ValidateResponse, call_error, response_records
from core.errors import Disposition, GatewayError, RecordError, SourceError

__all__ = ["MAX_RECORD_RETRIES", "DocumentStore", "SoapQuery", "SoapSource"]

log = logging.getLogger(__name__)

# Runs in a row a failing record keeps the bookmark back before it no longer does.
MAX_RECORD_RETRIES = 3


@dataclass(frozen=True)
class SoapQuery:
    """Which operation returns awards, with which arguments, and where the records are (the
    runtime value; the admin's YAML shape is :class:`~connectors.soap.config.SoapSourceConfig`).

    ``record_path`` is the dotted path from the response to the repeated record element (e.g.
    ``awards.award``). With ``cursor_argument`` the previous run's bookmark is passed as that
    argument (e.g. ``since``) and the largest ``cursor_field`` value among the records becomes
    the next one. ``response_schema`` (an XSD file) validates the response payload before zeep
    reads it; the schema is loaded with entities defused and no network access.
    """

    wsdl: str
    operation: str
    record_path: str
    arguments: Mapping[str, Any] | None = None
    service: str | None = None
    port: str | None = None
    username: str | None = None
    password: str | None = None
    password_digest: bool = False
    timeout: float = 30.0
    operation_timeout: float = 60.0
    attempts: int = 3
    response_schema: Path | None = None
    cursor_argument: str | None = None
    cursor_field: str | None = None
    verify_tls: bool | str = True


class DocumentStore(Protocol):
    """Where a SOAP source's documents named by path are read (a folder or SFTP source's
    ``fetch_document``, confined to its documents folder)."""

    def fetch_document(self, path: str) -> bytes:
        """The document's bytes, or a :class:`~core.errors.RecordError` saying why not."""

    def close(self) -> None:
        """Release connections."""


def _source_retriable(exc: BaseException) -> bool:
    return isinstance(exc, SourceError) and exc.retriable


class SoapSource(Source):
    """Awards from one SOAP operation, called through zeep with WS-Security UsernameToken,
    bounded timeouts and retries (tenacity). Unsafe XML (DTDs, entities, external references)
    and responses that fail the configured XSD are refused, not retried."""

    def __init__(
        self, *, name: str, query: SoapQuery, documents: DocumentStore | None = None
    ) -> None:
        self.name = name
        self.query = query
        self.documents = documents
        self._client: Client | None = None
        self._session: requests.Session | None = None
        self._pulled: tuple[Mapping[str, Any], list[str]] = ({}, [])

    def _bind(self) -> Client:
        if self._client is None:
            self._client, self._session = _open_client(self.name, self.query)
        return self._client

    def close(self) -> None:
        """Drop the client and its HTTP connections (and the document transport's)."""
        if self._session is not None:
            self._session.close()
        self._client, self._session = None, None
        if self.documents is not None:
            self.documents.close()

    def _call(self, arguments: Mapping[str, Any]) -> Any:
        operation = _operation(self._bind(), self.name, self.query)
        try:
            return operation(**arguments)
        except GatewayError:
            raise
        except requests.RequestException as exc:  # refused, reset, timed out
            self.close()
            raise unreachable(exc, name=self.name, error=SourceError, peer_ja="連携元") from exc
        except (ZeepError, TypeError, ValueError) as exc:
            raise call_error(exc, name=self.name, operation=self.query.operation) from exc

    def pull(self, cursor: Mapping[str, Any]) -> Batch:
        """Call the operation (retrying outages) and return its records."""
        q = self.query
        arguments = dict(q.arguments or {})
        if q.cursor_argument and cursor.get("value") is not None:
            arguments[q.cursor_argument] = cursor["value"]
        response: Any = None
        for attempt in Retrying(
            stop=stop_after_attempt(max(1, q.attempts)),
            wait=wait_exponential(multiplier=0.5, max=5) + wait_random(0, 0.5),
            retry=retry_if_exception(_source_retriable),
            reraise=True,
        ):
            with attempt:
                response = self._call(arguments)
        records = response_records(response, source=self.name, record_path=q.record_path)
        values = _cursor_values(records, q.cursor_field)
        self._pulled = (cursor, values)
        return Batch(records=iter(records), cursor=_next_cursor(cursor, values, q.cursor_field))

    def retry(self, cursor: Mapping[str, Any], failed: Sequence[RawRecord]) -> Mapping[str, Any]:
        """Keep the bookmark before the earliest record that failed, so the next run fetches it
        again (intake is idempotent: the records after it are simply unchanged). A record that
        fails :data:`MAX_RECORD_RETRIES` runs in a row no longer holds the bookmark back; it stays
        in the dead-letter store for ``keiyaku sync replay``."""
        field = self.query.cursor_field
        if not field:
            return cursor
        failed_values = sorted(_cursor_values(failed, field))
        return _held_bookmark(cursor, failed_values, self._pulled, source=self.name, field=field)

    def fetch_document(self, path: str) -> bytes:
        """A document a record names by path, through the configured transport (folder or
        SFTP); which document and why it cannot be had is said in the error."""
        if self.documents is None:
            raise _no_documents_transport(self.name, path)
        try:
            return self.documents.fetch_document(path)
        except RecordError:
            raise
        except GatewayError as exc:
            # The transport is down or refused us: this award waits for its document (with
            # the reason), the next run tries again.
            raise _document_unavailable(exc, self.name, path) from exc


def _open_client(name: str, q: SoapQuery) -> tuple[Client, requests.Session]:
    """The query's zeep client (with its XSD check and WS-Security token) and its session."""
    plugins = []
    if q.response_schema is not None:
        plugins.append(ValidateResponse.load(q.response_schema, name))
    wsse = (
        UsernameToken(q.username, q.password, use_digest=q.password_digest)  # type: ignore[no-untyped-call]
        if q.username is not None
        else None
    )
    return open_client(
        name=name,
        wsdl=q.wsdl,
        verify_tls=q.verify_tls,
        timeout=q.timeout,
        operation_timeout=q.operation_timeout,
        error=SourceError,
        peer_ja="連携元",
        wsse=wsse,
        plugins=plugins,
    )


def _operation(client: Client, name: str, q: SoapQuery) -> Any:
    """The query's operation, bound to its service and port when they are named."""
    try:
        service = client.bind(q.service, q.port) if q.service and q.port else client.service
        return getattr(service, q.operation)
    except (ZeepError, AttributeError, ValueError) as exc:
        raise SourceError(
            "soap.bad_wsdl",
            f"{name}: the WSDL has no operation {q.operation}: {exc}",
            "SOAP連携元のWSDLに指定の操作がありません。",
            disposition=Disposition.FATAL,
        ) from exc


def _cursor_values(records: Sequence[RawRecord], field: str | None) -> list[str]:
    """The records' bookmark values, in record order (none without a cursor field)."""
    if not field:
        return []
    return [str(r.fields[field]) for r in records if r.fields.get(field) is not None]


def _next_cursor(
    cursor: Mapping[str, Any], values: Sequence[str], field: str | None
) -> dict[str, Any]:
    """The bookmark after a pull: the largest value seen (or the old one), the old retry
    count kept for :meth:`SoapSource.retry` to judge."""
    if not field:
        return {}
    best = cursor.get("value")
    for value in values:
        best = value if best is None or value > str(best) else best
    next_cursor: dict[str, Any] = {"value": best}
    if cursor.get("retry"):
        next_cursor["retry"] = cursor["retry"]
    return next_cursor


def _held_bookmark(
    cursor: Mapping[str, Any],
    failed_values: Sequence[str],
    pulled: tuple[Mapping[str, Any], list[str]],
    *,
    source: str,
    field: str,
) -> Mapping[str, Any]:
    """The bookmark after a run whose records at ``failed_values`` (sorted) failed, given the
    last pull's starting cursor and its records' values (see :meth:`SoapSource.retry`)."""
    moved = {k: v for k, v in cursor.items() if k != "retry"}
    if not failed_values:
        return moved
    earliest = failed_values[0]
    previous, values = pulled
    retry = previous.get("retry") or {}
    attempts = int(retry.get("attempts", 0)) + 1 if retry.get("at") == earliest else 1
    if attempts > MAX_RECORD_RETRIES:
        log.warning(
            "%s: the record at %s=%s failed %d runs; moving on (sync replay takes it again)",
            source, field, earliest, attempts - 1,
        )  # fmt: skip
        return moved
    before = [v for v in values if v < earliest]
    held = max(before) if before else previous.get("value")
    return {"value": held, "retry": {"at": earliest, "attempts": attempts}}


def _no_documents_transport(source: str, path: str) -> RecordError:
    return RecordError(
        "intake.document_transport",
        f"{source}: document {path} is named by path but the source has no "
        f"documents transport (sources.{source}.documents: folder or sftp)",
        f"文書「{path}」はパスで指定されていますが、この取込元には文書の取得先"
        "(documents: フォルダまたはSFTP)が設定されていません。",
        details={"path": path},
    )


def _document_unavailable(exc: GatewayError, source: str, path: str) -> RecordError:
    return RecordError(
        "intake.document_unavailable",
        f"{source}: cannot fetch document {path}: {exc.code}: {exc.message_en}",
        f"文書「{path}」を取得できません: {exc.message_ja}",
        details={"path": path, "cause": exc.code},
    )
