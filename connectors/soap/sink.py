"""The SOAP push-back sink: one call of the receiving system's WSDL operation per delivery.

Files travel inline as ``xsd:base64Binary``: zeep cannot send MTOM/XOP attachments (it can only
receive them), so a WSDL that requires MTOM on input is not supported — ask the receiver for its
base64 variant, or use the REST sink. The client is made on first use and kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from zeep.exceptions import Error as ZeepError
from zeep.exceptions import Fault, TransportError

from connectors.base import Sink
from connectors.soap._client import http_error, open_client, unreachable
from core.errors import Disposition, GatewayError, SinkError
from core.outbound_types import Outbound

__all__ = ["SoapCall", "SoapSink"]


@dataclass(frozen=True)
class SoapCall:
    """Where and how to call: the WSDL, the operation and the names of its input elements (the
    runtime value; the admin's YAML shape is :class:`~connectors.soap.config.SoapSinkConfig`).

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
        client, session = open_client(
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
        except requests.RequestException as exc:  # refused, reset, timed out
            self.close()
            raise unreachable(exc, name=self.name, error=SinkError, peer_ja="連携先") from exc
        except (ZeepError, TypeError, ValueError) as exc:
            raise _call_error(exc, name=self.name, operation=self.call.operation) from exc


def _call_error(
    exc: ZeepError | TypeError | ValueError, *, name: str, operation: str
) -> GatewayError:
    """Why the receiver did not take a delivery, as a coded SinkError: a SOAP Client fault
    refuses it, a Server fault or an HTTP outage is retried, a record that does not fit the
    WSDL (unknown element, wrong type) is not."""
    if isinstance(exc, Fault):
        code = str(exc.code or "")
        refused = code.lower().rsplit(":", 1)[-1].rsplit("}", 1)[-1] in ("client", "sender")
        return SinkError(
            "soap.rejected" if refused else "soap.server_fault",
            f"{name}: {code or 'fault'}: {exc.message}",
            f"SOAP連携先がデータを受け付けませんでした: {exc.message}",
            disposition=Disposition.FATAL if refused else Disposition.RETRIABLE,
            details={"fault_code": code},
        )
    if isinstance(exc, TransportError):
        return http_error(exc, name=name, error=SinkError, peer_ja="連携先")
    return SinkError(
        "soap.bad_request",
        f"{name}: the record does not fit {operation}: {exc}",
        "送信データがSOAP連携先の形式に合いません。",
        disposition=Disposition.FATAL,
    )
