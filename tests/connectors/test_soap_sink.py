"""The SOAP sink through zeep against the test SOAP server: faults, outages, unsafe XML."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from connectors.outbound import ContentSpec, RecordSpec, render_outbound
from connectors.soap import SoapCall, SoapSink
from core.errors import GatewayError
from tests.contract.test_sinks import content
from tests.fixtures.soap_sink import RECORD_FIELDS, SoapSinkServer

SPEC = ContentSpec(record=RecordSpec(format="json", fields=RECORD_FIELDS, attach=False))


def _sink(server: SoapSinkServer, **kw: object) -> SoapSink:
    call = SoapCall(wsdl=server.wsdl, operation="DeliverContract", timeout=5, **kw)  # type: ignore[arg-type]
    return SoapSink(name="finance", call=call)


def test_files_travel_as_base64_with_the_record(soap_sink_server: SoapSinkServer) -> None:
    sink = _sink(soap_sink_server)
    out = render_outbound(content(1), SPEC, "finance:1")
    try:
        sink.push(out)
    finally:
        sink.close()
    got = soap_sink_server.applied["finance:1"]
    assert got.files == {f.name: f.data for f in out.files}
    assert got.record["department"] == "土木課"
    assert got.record["guarantees"] == [
        {
            "kind": "advance",
            "kind_ja": "前払金保証",
            "contract_number": "2070004426",
            "issuer": "西日本建設業保証株式会社",
            "authentication_key": "Q7xK2mP9aZ",
        }
    ]


def test_a_client_fault_refuses_the_delivery_a_server_outage_is_retried(
    soap_sink_server: SoapSinkServer,
) -> None:
    soap_sink_server.reject = lambda record: (
        "契約番号が未登録です" if record["contractNumber"].endswith("0002") else None
    )
    sink = _sink(soap_sink_server, attempts=3)
    try:
        with pytest.raises(GatewayError) as info:
            sink.push(render_outbound(content(2), SPEC, "f:2"))
        assert info.value.code == "soap.rejected" and not info.value.retriable
        assert "契約番号が未登録です" in info.value.message_en
        calls = soap_sink_server.calls
        soap_sink_server.down = True
        with pytest.raises(GatewayError) as info:
            sink.push(render_outbound(content(3), SPEC, "f:3"))
        assert info.value.code == "soap.http_error" and info.value.retriable
        assert soap_sink_server.calls - calls == 3  # tenacity: bounded attempts within one push
    finally:
        sink.close()


def test_nothing_listening_and_a_record_that_does_not_fit(
    soap_sink_server: SoapSinkServer, tmp_path: Path
) -> None:
    wsdl = tmp_path / "sink.wsdl"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    import urllib.request

    text = urllib.request.urlopen(soap_sink_server.wsdl, timeout=5).read().decode()
    wsdl.write_text(text.replace(soap_sink_server.url, f"http://127.0.0.1:{port}"))
    sink = SoapSink(
        name="f", call=SoapCall(wsdl=str(wsdl), operation="DeliverContract", attempts=1)
    )
    out = render_outbound(content(4), SPEC, "f:4")
    with pytest.raises(GatewayError) as info:
        sink.push(out)
    assert info.value.code == "soap.unreachable" and info.value.retriable
    odd = ContentSpec(record=RecordSpec(format="json", fields={"nickname": "title"}))
    sink = _sink(soap_sink_server)
    with pytest.raises(GatewayError) as info:
        sink.push(render_outbound(content(5), odd, "f:5"))
    assert info.value.code == "soap.bad_request" and not info.value.retriable
    sink.close()


def test_a_wsdl_with_a_dtd_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.wsdl"
    evil.write_text(
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<definitions xmlns="http://schemas.xmlsoap.org/wsdl/">&x;</definitions>'
    )
    sink = SoapSink(name="f", call=SoapCall(wsdl=str(evil), operation="DeliverContract"))
    with pytest.raises(GatewayError) as info:
        sink.push(render_outbound(content(6), SPEC, "f:6"))
    assert not info.value.retriable
