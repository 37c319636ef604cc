"""schemathesis against the served /openapi.json: no answer is a server error (5xx) or breaks
the schema (status codes, content types, bodies, the Allow header of a 405 such as TRACE's).
Bounded so it finishes in about a minute per database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from core.staff.api_clients import SCOPES
from tests.fixtures.gateway import envelope_request
from tests.gateway.conftest import LiveGateway

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def test_no_server_error_for_generated_requests(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    # The fuzzer also tries requests without the token; they must not lock the token out.
    live = live_gateway(extra="  max_failed_tokens: 1000\n")
    token = live.token("fuzz", list(SCOPES))  # every scope, so the fuzzer gets past 403
    with live.client(token) as client:  # something to find, so the lookups go past 404
        client.post("/api/v1/envelopes", json=envelope_request(send=True))
        spec = client.get("/openapi.json").json()
    assert "/api/v1/envelopes" in spec["paths"]
    assert set(spec["paths"]["/api/v1/envelopes"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "multipart/form-data",
    }
    assert set(spec["paths"]["/api/v1/staff/import"]["post"]["requestBody"]["content"]) == {
        "text/csv",
        "multipart/form-data",
    }
    schema = f"{live.url}/openapi.json"
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            schema,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,unsupported_method,allow_header_conformance",
            "--max-examples",
            "25",
            "--seed",
            "20251001",
            "--header",
            f"Authorization: Bearer {token}",
            "--request-timeout",
            "60",
            "--generation-database",
            "none",
            "--phases",
            "examples,coverage,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = output.split("SUMMARY")[-1]
    assert " passed" in summary and " failed" not in summary, summary
