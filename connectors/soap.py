"""SOAP transport (zeep): a source of awards (:class:`SoapSource`) and a push-back sink.

:class:`SoapSink` calls one operation of the receiving system's WSDL per delivery. Files travel
inline as ``xsd:base64Binary``: zeep cannot send MTOM/XOP attachments (it can only receive
them), so a WSDL that requires MTOM on input is not supported — ask the receiver for its
base64 variant, or use the REST sink.

Untrusted XML: DTDs, entities and external references are refused (``forbid_dtd``,
``forbid_entities``, ``forbid_external``). ``timeout`` bounds loading the WSDL,
``operation_timeout`` each call (zeep's ``timeout`` alone does not apply to calls). The client is
made on first use and kept, with the WSDL cached in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import requests
import xmlschema
from pydantic import Field, SecretStr
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
    wait_random_exponential,
)
from zeep import Client, Plugin, Settings
from zeep.cache import InMemoryCache
from zeep.exceptions import DTDForbidden, EntitiesForbidden, Fault, TransportError, XMLSyntaxError
from zeep.exceptions import Error as ZeepError
from zeep.helpers import serialize_object
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

from connectors.base import (
    Batch,
    ConnectorConfig,
    Provenance,
    RawRecord,
    Resolve,
    Sink,
    Source,
    verify_tls,
)
from core.errors import Disposition, GatewayError, RecordError, SinkError, SourceError
from core.outbound_types import Outbound

__all__ = [
    "MAX_RECORD_RETRIES",
    "DocumentStore",
    "SoapCall",
    "SoapQuery",
    "SoapSink",
    "SoapSinkConfig",
    "SoapSource",
    "SoapSourceConfig",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoapCall:
    """Where and how to call: the WSDL, the operation and the names of its input elements.

    The operation's input holds ``key_element`` (the idempotency key, a string),
    ``record_element`` (one child per record field; a list such as ``guarantees`` as repeated
    ``item_element`` children) and, unless ``files_element`` is None, ``files_element`` with
    repeated ``file`` children of ``name``, ``mediaType`` and ``content`` (base64Binary).
    """

    wsdl: str
    operation: str
    service: str | None = None
    port: str | None = None
    key_element: str = "idempotencyKey"
    record_element: str = "record"
    files_element: str | None = "files"
    item_element: str = "guarantee"
    timeout: float = 30.0
    operation_timeout: float = 60.0
    attempts: int = 3
    verify_tls: bool | str = True


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, SinkError) and exc.retriable


def _status_retriable(status: int) -> bool:
    """Whether an HTTP status from a SOAP peer is an outage worth retrying (no answer, timeout,
    too early, throttled, or a server error) rather than a refusal."""
    return status in (0, 408, 425, 429) or status >= 500


def _open_client(
    *,
    name: str,
    wsdl: str,
    verify_tls: bool | str,
    timeout: float,
    operation_timeout: float,
    error: type[SinkError] | type[SourceError],
    peer_ja: str,
    wsse: Any = None,
    plugins: Sequence[Plugin] = (),
) -> tuple[Client, requests.Session]:
    """A zeep client for ``wsdl`` with the safe XML settings and both timeouts, and the HTTP
    session it owns (the caller closes it). Unreachable WSDLs are retriable; unsafe or unusable
    ones are not. ``peer_ja`` names the other side in Japanese messages (連携先 / 連携元)."""
    session = requests.Session()
    session.verify = verify_tls
    transport = Transport(  # type: ignore[no-untyped-call]
        session=session,
        cache=InMemoryCache(),  # type: ignore[no-untyped-call]
        timeout=timeout,
        operation_timeout=operation_timeout,
    )
    settings = Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        client = Client(  # type: ignore[no-untyped-call]
            wsdl, settings=settings, transport=transport, wsse=wsse, plugins=list(plugins)
        )
    except (DTDForbidden, EntitiesForbidden) as exc:
        session.close()
        raise error(
            "soap.unsafe_xml",
            f"{name}: the WSDL {wsdl} carries a DTD or entities: {exc}",
            "WSDLに安全でないXML(DTD・エンティティ)が含まれています。",
            disposition=Disposition.FATAL,
        ) from exc
    except (requests.RequestException, TransportError, OSError) as exc:
        session.close()
        raise error(
            "soap.unreachable",
            f"{name}: cannot load WSDL {wsdl}: {exc}",
            f"SOAP{peer_ja}のWSDLを取得できません。",
            disposition=Disposition.RETRIABLE,
        ) from exc
    except (ZeepError, XMLSyntaxError) as exc:
        session.close()
        raise error(
            "soap.bad_wsdl",
            f"{name}: cannot read WSDL {wsdl}: {exc}",
            f"SOAP{peer_ja}のWSDLを読み込めません。",
            disposition=Disposition.FATAL,
        ) from exc
    return client, session


class SoapSink(Sink):
    """Delivers each delivery as one SOAP call; a SOAP Client fault refuses that delivery."""

    def __init__(self, *, name: str, call: SoapCall) -> None:
        self.name = name
        self.call = call
        self._operation: Callable[..., Any] | None = None
        self._session: requests.Session | None = None

    def _bind(self) -> Callable[..., Any]:
        if self._operation is not None:
            return self._operation
        client, session = _open_client(
            name=self.name,
            wsdl=self.call.wsdl,
            verify_tls=self.call.verify_tls,
            timeout=self.call.timeout,
            operation_timeout=self.call.operation_timeout,
            error=SinkError,
            peer_ja="連携先",
        )
        try:
            if self.call.service and self.call.port:
                service = client.bind(self.call.service, self.call.port)
            else:
                service = client.service
            operation: Callable[..., Any] = getattr(service, self.call.operation)
        except (ZeepError, AttributeError) as exc:
            session.close()
            raise SinkError(
                "soap.bad_wsdl",
                f"{self.name}: WSDL {self.call.wsdl} has no usable {self.call.operation}: {exc}",
                "SOAP連携先のWSDLに指定の操作がありません。",
                disposition=Disposition.FATAL,
            ) from exc
        self._session, self._operation = session, operation
        return operation

    def close(self) -> None:
        """Drop the client and its HTTP connections."""
        if self._session is not None:
            self._session.close()
        self._session, self._operation = None, None

    def request(self, outbound: Outbound) -> dict[str, Any]:
        """The operation's input for one delivery."""
        record = {
            name: ({self.call.item_element: value} if isinstance(value, list) else value)
            for name, value in outbound.record.items()
        }
        body: dict[str, Any] = {
            self.call.key_element: outbound.idempotency_key,
            self.call.record_element: record,
        }
        if self.call.files_element:
            body[self.call.files_element] = {
                "file": [
                    {"name": f.name, "mediaType": f.media_type, "content": f.data}
                    for f in outbound.files
                ]
            }
        return body

    def push(self, outbound: Outbound) -> None:
        """Call the operation, retrying outages a bounded number of times (tenacity)."""
        body = self.request(outbound)
        for attempt in Retrying(
            stop=stop_after_attempt(max(1, self.call.attempts)),
            wait=wait_random_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception(_is_retriable),
            reraise=True,
        ):
            with attempt:
                self._call(body)

    def _call(self, body: Mapping[str, Any]) -> None:
        operation = self._bind()
        try:
            operation(**body)
        except Fault as exc:
            code = str(exc.code or "")
            refused = code.lower().rsplit(":", 1)[-1].rsplit("}", 1)[-1] in ("client", "sender")
            raise SinkError(
                "soap.rejected" if refused else "soap.server_fault",
                f"{self.name}: {code or 'fault'}: {exc.message}",
                f"SOAP連携先がデータを受け付けませんでした: {exc.message}",
                disposition=Disposition.FATAL if refused else Disposition.RETRIABLE,
                details={"fault_code": code},
            ) from exc
        except TransportError as exc:
            status = int(exc.status_code or 0)
            retriable = _status_retriable(status)
            raise SinkError(
                "soap.http_error",
                f"{self.name}: HTTP {status}: {str(exc.message)[:300]}",
                f"SOAP連携先がエラーを返しました(HTTP {status})。",
                disposition=Disposition.RETRIABLE if retriable else Disposition.FATAL,
            ) from exc
        except requests.RequestException as exc:  # refused, reset, timed out
            self.close()
            raise SinkError(
                "soap.unreachable",
                f"{self.name}: {type(exc).__name__}: {exc}",
                "SOAP連携先に接続できません。",
            ) from exc
        except (ZeepError, TypeError, ValueError) as exc:
            # The record does not fit the WSDL (unknown element, wrong type): not retriable.
            raise SinkError(
                "soap.bad_request",
                f"{self.name}: the record does not fit {self.call.operation}: {exc}",
                "送信データがSOAP連携先の形式に合いません。",
                disposition=Disposition.FATAL,
            ) from exc


# --- the source: awards from a procurement system's SOAP service ---------------------------


@dataclass(frozen=True)
class SoapQuery:
    """Which operation returns awards, with which arguments, and where the records are.

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


class _ValidateResponse(Plugin):
    """Checks each response payload (the first child of soap:Body) against an XSD."""

    def __init__(self, schema: xmlschema.XMLSchema, name: str) -> None:
        self.schema = schema
        self.name = name

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


def _source_retriable(exc: BaseException) -> bool:
    return isinstance(exc, SourceError) and exc.retriable


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(node, list) and node and isinstance(node[0], dict):
        for index, value in enumerate(node):
            _flatten(value, f"{prefix}.{index}", out)
    else:
        out[prefix] = node


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
        if self._client is not None:
            return self._client
        q = self.query
        plugins = []
        if q.response_schema is not None:
            try:
                schema = xmlschema.XMLSchema(
                    str(Path(q.response_schema).resolve()), defuse="always", allow="sandbox"
                )
            except (xmlschema.XMLSchemaException, OSError) as exc:
                raise SourceError(
                    "soap.bad_schema",
                    f"{self.name}: cannot load response schema {q.response_schema}: {exc}",
                    "SOAP応答の定義(XSD)を読み込めません。",
                    disposition=Disposition.FATAL,
                ) from exc
            plugins.append(_ValidateResponse(schema, self.name))
        wsse = (
            UsernameToken(q.username, q.password, use_digest=q.password_digest)  # type: ignore[no-untyped-call]
            if q.username is not None
            else None
        )
        client, session = _open_client(
            name=self.name,
            wsdl=q.wsdl,
            verify_tls=q.verify_tls,
            timeout=q.timeout,
            operation_timeout=q.operation_timeout,
            error=SourceError,
            peer_ja="連携元",
            wsse=wsse,
            plugins=plugins,
        )
        self._client, self._session = client, session
        return client

    def close(self) -> None:
        """Drop the client and its HTTP connections (and the document transport's)."""
        if self._session is not None:
            self._session.close()
        self._client, self._session = None, None
        if self.documents is not None:
            self.documents.close()

    def _call(self, arguments: Mapping[str, Any]) -> Any:
        client = self._bind()
        q = self.query
        try:
            service = client.bind(q.service, q.port) if q.service and q.port else client.service
            operation = getattr(service, q.operation)
        except (ZeepError, AttributeError, ValueError) as exc:
            raise SourceError(
                "soap.bad_wsdl",
                f"{self.name}: the WSDL has no operation {q.operation}: {exc}",
                "SOAP連携元のWSDLに指定の操作がありません。",
                disposition=Disposition.FATAL,
            ) from exc
        try:
            return operation(**arguments)
        except GatewayError:
            raise
        except (DTDForbidden, EntitiesForbidden) as exc:
            raise SourceError(
                "soap.unsafe_xml",
                f"{self.name}: the response carries a DTD or entities (refused): {exc}",
                "SOAP応答に安全でないXML(DTD・エンティティ)が含まれていたため拒否しました。",
                disposition=Disposition.FATAL,
            ) from exc
        except XMLSyntaxError as exc:
            raise SourceError(
                "soap.bad_response",
                f"{self.name}: the response is not well-formed XML: {exc}",
                "SOAP応答がXMLとして正しくありません。",
                disposition=Disposition.FATAL,
            ) from exc
        except Fault as exc:
            raise SourceError(
                "soap.fault",
                f"{self.name}: {exc.code or 'fault'}: {exc.message}",
                f"SOAP連携元がエラーを返しました: {exc.message}",
                disposition=Disposition.FATAL,
            ) from exc
        except TransportError as exc:
            status = int(exc.status_code or 0)
            content = exc.content if isinstance(exc.content, bytes) else b""
            if 200 <= status < 300 and (b"<!DOCTYPE" in content[:4096] or b"<!ENTITY" in content):
                # libxml2 stopped an entity bomb before zeep's own DTD check could.
                raise SourceError(
                    "soap.unsafe_xml",
                    f"{self.name}: the response carries a DTD or entities (refused)",
                    "SOAP応答に安全でないXML(DTD・エンティティ)が含まれていたため拒否しました。",
                    disposition=Disposition.FATAL,
                ) from exc
            retriable = _status_retriable(status)
            raise SourceError(
                "soap.http_error",
                f"{self.name}: HTTP {status}: {str(exc.message)[:300]}",
                f"SOAP連携元がエラーを返しました(HTTP {status})。",
                disposition=Disposition.RETRIABLE if retriable else Disposition.FATAL,
            ) from exc
        except requests.RequestException as exc:  # refused, reset, timed out
            self.close()
            raise SourceError(
                "soap.unreachable",
                f"{self.name}: {type(exc).__name__}: {exc}",
                "SOAP連携元に接続できません。",
            ) from exc
        except (ZeepError, TypeError, ValueError) as exc:
            raise SourceError(
                "soap.bad_response",
                f"{self.name}: cannot read the {q.operation} response: {exc}",
                "SOAP応答を読み取れません。",
                disposition=Disposition.FATAL,
            ) from exc

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
        node: Any = serialize_object(response, target_cls=dict)  # type: ignore[no-untyped-call]
        # zeep unwraps a response whose payload holds one element (``awards``), down to the
        # record list itself: follow the path only as far as the response still has it.
        for index, part in enumerate(p for p in q.record_path.split(".") if p):
            if isinstance(node, list):
                break
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif index > 0 or not isinstance(node, dict):
                node = None
        items = node if isinstance(node, list) else ([] if node is None else [node])
        records = []
        best = cursor.get("value")
        values: list[str] = []
        for index, item in enumerate(items):
            fields: dict[str, Any] = {}
            _flatten(item if isinstance(item, dict) else {"value": item}, "", fields)
            records.append(
                RawRecord(
                    fields, Provenance(source=self.name, path=f"{q.record_path}[{index + 1}]")
                )
            )
            if q.cursor_field and fields.get(q.cursor_field) is not None:
                value = str(fields[q.cursor_field])
                values.append(value)
                best = value if best is None or value > str(best) else best
        self._pulled = (cursor, values)
        next_cursor: dict[str, Any] = {"value": best} if q.cursor_field else {}
        if q.cursor_field and cursor.get("retry"):
            next_cursor["retry"] = cursor["retry"]
        return Batch(records=iter(records), cursor=next_cursor)

    def retry(self, cursor: Mapping[str, Any], failed: Sequence[RawRecord]) -> Mapping[str, Any]:
        """Keep the bookmark before the earliest record that failed, so the next run fetches it
        again (intake is idempotent: the records after it are simply unchanged). A record that
        fails :data:`MAX_RECORD_RETRIES` runs in a row no longer holds the bookmark back; it stays
        in the dead-letter store for ``keiyaku sync replay``."""
        q = self.query
        if not q.cursor_field:
            return cursor
        failed_values = sorted(
            str(r.fields[q.cursor_field])
            for r in failed
            if r.fields.get(q.cursor_field) is not None
        )
        moved = {k: v for k, v in cursor.items() if k != "retry"}
        if not failed_values:
            return moved
        earliest = failed_values[0]
        previous, values = self._pulled
        retry = previous.get("retry") or {}
        attempts = int(retry.get("attempts", 0)) + 1 if retry.get("at") == earliest else 1
        if attempts > MAX_RECORD_RETRIES:
            log.warning(
                "%s: the record at %s=%s failed %d runs; moving on (sync replay takes it again)",
                self.name, q.cursor_field, earliest, attempts - 1,
            )  # fmt: skip
            return moved
        before = [v for v in values if v < earliest]
        held = max(before) if before else previous.get("value")
        return {"value": held, "retry": {"at": earliest, "attempts": attempts}}

    def fetch_document(self, path: str) -> bytes:
        """A document a record names by path, through the configured transport (folder or
        SFTP); which document and why it cannot be had is said in the error."""
        if self.documents is None:
            raise RecordError(
                "intake.document_transport",
                f"{self.name}: document {path} is named by path but the source has no "
                f"documents transport (sources.{self.name}.documents: folder or sftp)",
                f"文書「{path}」はパスで指定されていますが、この取込元には文書の取得先"
                "(documents: フォルダまたはSFTP)が設定されていません。",
                details={"path": path},
            )
        try:
            return self.documents.fetch_document(path)
        except RecordError:
            raise
        except GatewayError as exc:
            # The transport is down or refused us: this award waits for its document (with
            # the reason), the next run tries again.
            raise RecordError(
                "intake.document_unavailable",
                f"{self.name}: cannot fetch document {path}: {exc.code}: {exc.message_en}",
                f"文書「{path}」を取得できません: {exc.message_ja}",
                details={"path": path, "cause": exc.code},
            ) from exc


class DocumentStore(Protocol):
    """Where a SOAP source's documents named by path are read (a folder or SFTP source's
    ``fetch_document``, confined to its documents folder)."""

    def fetch_document(self, path: str) -> bytes:
        """The document's bytes, or a :class:`~core.errors.RecordError` saying why not."""

    def close(self) -> None:
        """Release connections."""


# Runs in a row a failing record keeps the bookmark back before it no longer does.
MAX_RECORD_RETRIES = 3


class SoapSinkConfig(ConnectorConfig):
    """A SOAP sink's settings (``sinks.NAME`` with ``kind: soap``)."""

    kind: Literal["soap"]
    wsdl: str
    operation: str
    service: str | None = None
    port: str | None = None
    key_element: str = "idempotencyKey"
    record_element: str = "record"
    files_element: str | None = "files"
    item_element: str = "guarantee"
    timeout_seconds: float = Field(default=30, gt=0)
    operation_timeout_seconds: float = Field(default=60, gt=0)
    attempts: int = Field(default=3, ge=1, le=10)
    ca_file: Path | None = None

    def open(self, *, name: str, resolve: Resolve) -> SoapSink:
        """The sink these settings describe (a WSDL given without a scheme is a local file)."""
        wsdl = self.wsdl if "://" in self.wsdl else str(resolve(Path(self.wsdl)))
        call = SoapCall(
            wsdl=wsdl,
            operation=self.operation,
            service=self.service,
            port=self.port,
            key_element=self.key_element,
            record_element=self.record_element,
            files_element=self.files_element,
            item_element=self.item_element,
            timeout=self.timeout_seconds,
            operation_timeout=self.operation_timeout_seconds,
            attempts=self.attempts,
            verify_tls=verify_tls(self.ca_file, resolve),
        )
        return SoapSink(name=name, call=call)


class SoapSourceConfig(ConnectorConfig):
    """A SOAP source's settings (``sources.NAME`` with ``kind: soap``), without where documents
    named by path are read: that is another connector's settings, which the gateway adds."""

    kind: Literal["soap"]
    wsdl: str
    operation: str
    record_path: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    service: str | None = None
    port: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_digest: bool = False
    timeout_seconds: float = Field(default=30, gt=0)
    operation_timeout_seconds: float = Field(default=60, gt=0)
    attempts: int = Field(default=3, ge=1, le=10)
    response_schema: Path | None = None
    cursor_argument: str | None = None
    cursor_field: str | None = None
    ca_file: Path | None = None

    def open(
        self, *, name: str, resolve: Resolve, documents: DocumentStore | None = None
    ) -> SoapSource:
        """The source these settings describe (a WSDL not given by http(s) URL is a local
        file), reading documents named by path through ``documents``."""
        wsdl = self.wsdl
        if not wsdl.startswith(("http://", "https://")):
            wsdl = str(resolve(Path(wsdl)))
        query = SoapQuery(
            wsdl=wsdl,
            operation=self.operation,
            record_path=self.record_path,
            arguments=dict(self.arguments),
            service=self.service,
            port=self.port,
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            password_digest=self.password_digest,
            timeout=self.timeout_seconds,
            operation_timeout=self.operation_timeout_seconds,
            attempts=self.attempts,
            response_schema=resolve(self.response_schema) if self.response_schema else None,
            cursor_argument=self.cursor_argument,
            cursor_field=self.cursor_field,
            verify_tls=verify_tls(self.ca_file, resolve),
        )
        return SoapSource(name=name, query=query, documents=documents)
