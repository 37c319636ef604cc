"""The zeep client both SOAP connectors open, which HTTP answers are outages, and the coded
errors for the two call failures both connectors mean the same by (an HTTP error, no answer).

Untrusted XML: DTDs, entities and external references are refused (``forbid_dtd``,
``forbid_entities``, ``forbid_external``). ``timeout`` bounds loading the WSDL,
``operation_timeout`` each call (zeep's ``timeout`` alone does not apply to calls). The WSDL is
cached in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests
from zeep import Client, Plugin, Settings
from zeep.cache import InMemoryCache
from zeep.exceptions import DTDForbidden, EntitiesForbidden, TransportError, XMLSyntaxError
from zeep.exceptions import Error as ZeepError
from zeep.transports import Transport

from core.errors import Disposition, GatewayError, SinkError, SourceError

__all__ = ["http_error", "open_client", "status_retriable", "unreachable"]


def status_retriable(status: int) -> bool:
    """Whether an HTTP status from a SOAP peer is an outage worth retrying (no answer, timeout,
    too early, throttled, or a server error) rather than a refusal."""
    return status in (0, 408, 425, 429) or status >= 500


def http_error(
    exc: TransportError, *, name: str, error: type[GatewayError], peer_ja: str
) -> GatewayError:
    """``soap.http_error`` for a call the peer answered with an HTTP error: retriable when an
    outage (:func:`status_retriable`), else fatal. ``error`` is SourceError or SinkError."""
    status = int(exc.status_code or 0)
    retriable = status_retriable(status)
    return error(
        "soap.http_error",
        f"{name}: HTTP {status}: {str(exc.message)[:300]}",
        f"SOAP{peer_ja}がエラーを返しました(HTTP {status})。",
        disposition=Disposition.RETRIABLE if retriable else Disposition.FATAL,
    )


def unreachable(
    exc: requests.RequestException, *, name: str, error: type[GatewayError], peer_ja: str
) -> GatewayError:
    """``soap.unreachable`` (retriable) for a call that got no answer: refused, reset or timed
    out. ``error`` is SourceError or SinkError."""
    return error(
        "soap.unreachable",
        f"{name}: {type(exc).__name__}: {exc}",
        f"SOAP{peer_ja}に接続できません。",
        disposition=Disposition.RETRIABLE,  # SourceError's and SinkError's default, said here
    )


def open_client(
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
