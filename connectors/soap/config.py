"""The admin's YAML settings of a SOAP sink and source (``kind: soap``), each opening the
connector it describes: :class:`SoapSinkConfig` makes a :class:`~connectors.soap.sink.SoapCall`,
:class:`SoapSourceConfig` a :class:`~connectors.soap.source.SoapQuery` (the runtime values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr

from connectors.base import ConnectorConfig, Resolve, verify_tls
from connectors.soap.sink import SoapCall, SoapSink
from connectors.soap.source import DocumentStore, SoapQuery, SoapSource

__all__ = ["SoapSinkConfig", "SoapSourceConfig"]


class SoapSinkConfig(ConnectorConfig):
    """A SOAP sink's settings (``sinks.NAME`` with ``kind: soap``): the admin's YAML shape of
    :class:`~connectors.soap.sink.SoapCall`."""

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
    named by path are read: that is another connector's settings, which the gateway adds. The
    admin's YAML shape of :class:`~connectors.soap.source.SoapQuery`."""

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
