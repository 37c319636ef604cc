"""The admin's YAML settings of an SFTP sink, source and documents folder (``kind: sftp``),
each opening the connector it describes; the connection settings they share are
:class:`~connectors.sftp.transport.SftpEndpointConfig`."""

from __future__ import annotations

from typing import Literal

from connectors.base import Resolve
from connectors.csv import CsvFormat
from connectors.inbox import InboxConfig
from connectors.sftp.sink import SftpSink
from connectors.sftp.source import SftpSource
from connectors.sftp.transport import SftpEndpointConfig

__all__ = ["SftpDocumentsConfig", "SftpSinkConfig", "SftpSourceConfig"]


class SftpSinkConfig(SftpEndpointConfig):
    """An SFTP sink's settings (``sinks.NAME`` with ``kind: sftp``)."""

    kind: Literal["sftp"]
    path: str
    trigger: str | None = None

    def open(self, *, name: str, resolve: Resolve) -> SftpSink:
        """The sink these settings describe."""
        return SftpSink(
            name=name, endpoint=self.endpoint(resolve), root=self.path, trigger=self.trigger
        )


class SftpSourceConfig(InboxConfig, SftpEndpointConfig):
    """An SFTP source's settings (``sources.NAME`` with ``kind: sftp``)."""

    kind: Literal["sftp"]
    path: str
    documents_dir: str | None = None

    def open(
        self, *, name: str, resolve: Resolve, csv_format: CsvFormat, max_document_bytes: int
    ) -> SftpSource:
        """The source these settings describe, reading CSV files of ``csv_format``."""
        return SftpSource(
            endpoint=self.endpoint(resolve),
            name=name,
            directory=self.path,
            csv_format=csv_format,
            documents_dir=self.documents_dir,
            max_document_bytes=max_document_bytes,
            **self.inbox_options(),
        )


class SftpDocumentsConfig(SftpEndpointConfig):
    """An SFTP folder that documents named by path are read from (a SOAP source's
    ``documents`` with ``kind: sftp``)."""

    kind: Literal["sftp"]
    path: str

    def open(self, *, name: str, resolve: Resolve, max_document_bytes: int) -> SftpSource:
        """A source used only for :meth:`~connectors.inbox.InboxSource.fetch_document`."""
        return SftpSource(
            endpoint=self.endpoint(resolve), name=name, directory=self.path,
            csv_format=CsvFormat(), documents_dir=self.path, max_document_bytes=max_document_bytes,
        )  # fmt: skip
