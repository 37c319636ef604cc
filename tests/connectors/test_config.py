"""Each connector owns its settings model, and opening it gives the connector those settings
describe (issue 18): paths resolved, secrets unwrapped, nothing else changed."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from connectors.base import ConnectorConfig
from connectors.csv import CsvFormat
from connectors.folder import FolderDocumentsConfig, FolderSinkConfig, FolderSourceConfig
from connectors.http import RestSinkConfig
from connectors.inbox import ReadLock
from connectors.outbound import ContentConfig
from connectors.sftp import SftpDocumentsConfig, SftpSinkConfig, SftpSourceConfig
from connectors.soap import SoapSinkConfig, SoapSourceConfig

HOME = Path("/site")


def _resolve(path: Path) -> Path:
    return path if path.is_absolute() else HOME / path


def test_a_folder_sink_and_source_resolve_their_folders() -> None:
    sink = FolderSinkConfig(kind="folder", path=Path("out"), trigger="{x}.end", fsync=False)
    opened = sink.open(name="dms", resolve=_resolve)
    assert (opened.name, opened.root, opened.trigger, opened.fsync) == (
        "dms", HOME / "out", "{x}.end", False,
    )  # fmt: skip
    source = FolderSourceConfig.model_validate(
        {"kind": "folder", "path": "in", "documents_dir": "docs", "read_lock": {"mode": "none"}}
    ).open(name="inbox", resolve=_resolve, csv_format=CsvFormat(), max_document_bytes=10)
    assert source.directory == str(HOME / "in")
    assert source.documents_dir == str(HOME / "docs")
    assert source.read_lock == ReadLock(mode="none")
    assert (source.pattern, source.processed_dir, source.max_document_bytes) == (
        "*.csv", "processed", 10,
    )  # fmt: skip
    documents = FolderDocumentsConfig(kind="folder", path=Path("d"))
    assert documents.open(name="s", resolve=_resolve, max_document_bytes=1).documents_dir == str(
        HOME / "d"
    )


def test_sftp_settings_give_one_endpoint_shape() -> None:
    common = {
        "host": "h", "username": "u", "key_path": "k", "known_hosts": "kh",
        "key_passphrase": "secret", "path": "/r",
    }  # fmt: skip
    sink = SftpSinkConfig.model_validate({"kind": "sftp", **common}).open(
        name="s", resolve=_resolve
    )
    source = SftpSourceConfig.model_validate({"kind": "sftp", **common}).open(
        name="s", resolve=_resolve, csv_format=CsvFormat(), max_document_bytes=1
    )
    documents = SftpDocumentsConfig.model_validate({"kind": "sftp", **common}).open(
        name="s", resolve=_resolve, max_document_bytes=1
    )
    for endpoint in (sink.endpoint, source.endpoint, documents.endpoint):
        assert endpoint.key_path == HOME / "k" and endpoint.known_hosts == HOME / "kh"
        assert (endpoint.port, endpoint.key_passphrase, endpoint.timeout) == (22, "secret", 15)
    assert "secret" not in repr(SftpSinkConfig.model_validate({"kind": "sftp", **common}))


def test_soap_and_rest_settings_resolve_local_files_only() -> None:
    sink = SoapSinkConfig(kind="soap", wsdl="svc.wsdl", operation="Op", ca_file=Path("ca.pem"))
    call = sink.open(name="s", resolve=_resolve).call
    assert (call.wsdl, call.verify_tls) == (str(HOME / "svc.wsdl"), str(HOME / "ca.pem"))
    remote = SoapSourceConfig(
        kind="soap", wsdl="https://e.example/x?wsdl", operation="Op", record_path="a.b"
    )
    query = remote.open(name="s", resolve=_resolve).query
    assert (query.wsdl, query.verify_tls, query.response_schema) == (
        "https://e.example/x?wsdl", True, None,
    )  # fmt: skip
    rest = RestSinkConfig.model_validate(
        {"kind": "rest", "url": "https://r.example/", "hmac_secret": "s" * 16}
    ).open(name="r", resolve=_resolve)
    assert rest.url == "https://r.example/"


def test_connector_settings_refuse_what_the_connector_cannot_use() -> None:
    with pytest.raises(ValidationError, match="url must start with http"):
        RestSinkConfig.model_validate({"kind": "rest", "url": "ftp://x", "hmac_secret": "s" * 16})
    with pytest.raises(ValidationError, match="at least 16"):
        RestSinkConfig.model_validate({"kind": "rest", "url": "https://x", "hmac_secret": "s"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        FolderSinkConfig.model_validate({"kind": "folder", "path": "p", "host": "h"})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        SftpSinkConfig.model_validate(
            {"kind": "sftp", "host": "h", "port": 0, "username": "u", "key_path": "k",
             "known_hosts": "kh", "path": "/"}
        )  # fmt: skip


def test_the_content_settings_give_the_content_spec() -> None:
    content = ContentConfig.model_validate(
        {"record": {"format": "xml", "xsd": "r.xsd", "fields": {"no": "management_number"}}}
    )
    assert content.spec(_resolve).record.xsd == HOME / "r.xsd"  # type: ignore[union-attr]
    assert content.spec(None).record.xsd is None  # type: ignore[union-attr]


def test_every_pulled_source_and_every_sink_is_a_connectors_settings() -> None:
    # The gateway adds only what is not the transport's (mapping, events, content): the keys
    # of each kind are defined once, in its connector.
    from gateway.settings import SinkSettings, SourceSettings

    for union in (SinkSettings, SourceSettings):
        for variant in typing.get_args(typing.get_args(union)[0]):
            if variant.__name__ == "ApiSourceSettings":  # pushed to the API: no connector
                continue
            assert any(
                issubclass(base, ConnectorConfig) and base.__module__.startswith("connectors.")
                for base in variant.__bases__
            ), variant.__name__
