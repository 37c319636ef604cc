"""The SOAP source through zeep against a real SOAP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from zeep.exceptions import Error as ZeepError
from zeep.exceptions import TransportError

from connectors.soap import SoapQuery, SoapSource
from core.errors import GatewayError
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.soap_awards import PASSWORD, USERNAME, XSD, AwardServer, soap_award_server

__all__ = ["soap_award_server"]

PDF = make_pdf(pages=1)


def _query(server: AwardServer, **overrides: object) -> SoapQuery:
    query = SoapQuery(
        wsdl=server.wsdl_url,
        operation="GetAwards",
        record_path="awards.award",
        arguments={"office": "0001"},
        username=USERNAME,
        password=PASSWORD,
        timeout=5,
        operation_timeout=5,
        attempts=2,
        response_schema=XSD,
        cursor_argument="since",
        cursor_field="updatedAt",
    )
    return dataclasses.replace(query, **overrides)  # type: ignore[arg-type]


def _awards() -> list[dict[str, object]]:
    return [
        {"id": "R7-001", "title": "市道１号線舗装工事", "amount": "１２，３４５，０００円",
         "date": "令和7年10月1日", "contractor": "㈱テスト建設", "cn": "7000012050002",
         "pdf": PDF, "updated": "2025-10-01T09:00:00"},
        {"id": "R7-002", "title": "庁舎清掃業務", "amount": "980000", "date": "R7.10.2",
         "contractor": "有限会社サンプル", "updated": "2025-10-02T09:00:00"},
    ]  # fmt: skip


def test_records_with_attachments_and_cursor(soap_award_server: AwardServer) -> None:
    soap_award_server.awards = _awards()
    source = SoapSource(name="ebid", query=_query(soap_award_server))
    try:
        batch = source.pull({})
        records = list(batch.records)
    finally:
        source.close()
    assert [r.fields["awardId"] for r in records] == ["R7-001", "R7-002"]
    first = records[0]
    assert first.fields["contractor.name"] == "㈱テスト建設"
    assert first.fields["contractPdf"] == PDF  # base64Binary decoded by zeep
    assert first.provenance.path == "awards.award[1]" and first.provenance.source == "ebid"
    assert batch.cursor == {"value": "2025-10-02T09:00:00"}
    # The WS-Security header went out, and the next pull passes the bookmark.
    assert b"UsernameToken" in soap_award_server.requests[-1]
    source = SoapSource(name="ebid", query=_query(soap_award_server))
    try:
        source.pull(batch.cursor)
    finally:
        source.close()
    assert b"2025-10-02T09:00:00</" in soap_award_server.requests[-1]


def test_wsdl_from_a_file(soap_award_server: AwardServer, tmp_path: Path) -> None:
    wsdl = tmp_path / "awards.wsdl"
    wsdl.write_text(soap_award_server.wsdl_text(), encoding="utf-8")
    soap_award_server.awards = _awards()[1:]
    source = SoapSource(name="ebid", query=_query(soap_award_server, wsdl=str(wsdl)))
    try:
        assert len(list(source.pull({}).records)) == 1
    finally:
        source.close()


@pytest.mark.parametrize("mode", ["bomb", "xxe"])
def test_entity_payloads_are_refused(soap_award_server: AwardServer, mode: str) -> None:
    soap_award_server.awards = _awards()
    soap_award_server.mode = mode
    source = SoapSource(name="ebid", query=_query(soap_award_server, response_schema=None))
    with pytest.raises(GatewayError) as info:
        source.pull({})
    source.close()
    assert info.value.code == "soap.unsafe_xml" and not info.value.retriable
    assert len(soap_award_server.requests) == 1  # refused, not retried


def test_response_failing_the_xsd_is_refused(soap_award_server: AwardServer) -> None:
    soap_award_server.awards = _awards()
    soap_award_server.mode = "invalid"
    source = SoapSource(name="ebid", query=_query(soap_award_server))
    with pytest.raises(GatewayError) as info:
        source.pull({})
    source.close()
    assert info.value.code == "soap.invalid_response"


def test_outage_is_retried_then_succeeds(soap_award_server: AwardServer) -> None:
    soap_award_server.awards = _awards()
    soap_award_server.mode = "unavailable_once"
    source = SoapSource(name="ebid", query=_query(soap_award_server))
    try:
        assert len(list(source.pull({}).records)) == 2
    finally:
        source.close()
    assert len(soap_award_server.requests) == 2


def test_fault_and_wrong_password_are_not_retried(soap_award_server: AwardServer) -> None:
    source = SoapSource(name="ebid", query=_query(soap_award_server, password="wrong"))
    with pytest.raises(GatewayError) as info:
        source.pull({})
    source.close()
    assert info.value.code == "soap.fault" and not info.value.retriable
    assert len(soap_award_server.requests) == 1


def test_unreachable_is_retriable(soap_award_server: AwardServer) -> None:
    wsdl = soap_award_server.wsdl_text().replace(soap_award_server.url, "http://127.0.0.1:9")
    source = SoapSource(
        name="ebid", query=_query(soap_award_server, wsdl="http://127.0.0.1:9/awards?wsdl")
    )
    with pytest.raises(GatewayError) as info:
        source.pull({})
    assert info.value.code == "soap.unreachable" and info.value.retriable
    assert wsdl  # the address in the WSDL is not what failed: loading it did


def _refusal(server: AwardServer, mode: str, **overrides: object) -> GatewayError:
    """The error one pull raises while the server misbehaves in ``mode``."""
    server.awards = _awards()
    server.mode = mode
    source = SoapSource(name="ebid", query=_query(server, **overrides))
    try:
        with pytest.raises(GatewayError) as info:
            source.pull({})
    finally:
        source.close()
    return info.value


def test_an_http_error_is_retried_only_when_an_outage(soap_award_server: AwardServer) -> None:
    error = _refusal(soap_award_server, "unavailable")
    assert error.code == "soap.http_error" and error.retriable
    assert "HTTP 503" in error.message_en and "HTTP 503" in error.message_ja
    assert isinstance(error.__cause__, TransportError)
    assert len(soap_award_server.requests) == 2  # attempts=2, both used
    soap_award_server.requests.clear()
    error = _refusal(soap_award_server, "not_found")
    assert error.code == "soap.http_error" and not error.retriable
    assert len(soap_award_server.requests) == 1


def test_a_dtd_in_a_broken_2xx_answer_is_unsafe_not_an_http_error(
    soap_award_server: AwardServer,
) -> None:
    error = _refusal(soap_award_server, "doctype", response_schema=None)
    assert error.code == "soap.unsafe_xml" and not error.retriable
    assert error.message_ja.startswith("SOAP応答に安全でないXML")
    # libxml2 gave up on the document, so zeep reports an HTTP 200 with invalid XML
    assert isinstance(error.__cause__, TransportError) and error.__cause__.status_code == 200
    assert len(soap_award_server.requests) == 1


def test_an_answer_that_is_not_the_operation_s_response_is_refused(
    soap_award_server: AwardServer,
) -> None:
    error = _refusal(soap_award_server, "unexpected", response_schema=None)
    assert error.code == "soap.bad_response" and not error.retriable
    assert "GetAwards" in error.message_en and error.message_ja == "SOAP応答を読み取れません。"
    assert isinstance(error.__cause__, ZeepError)
    assert len(soap_award_server.requests) == 1
