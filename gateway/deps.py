"""FastAPI dependencies, as ``Annotated`` aliases: the app context, a database session, the
caller's IP address and the calling API client."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from core.model import ApiClient
from core.staff.access import check_client_network
from core.staff.api_clients import TokenPolicy, authenticate
from gateway.context import AppContext

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def get_context(request: Request) -> AppContext:
    """The app's context, set up by :func:`gateway.app.create_app`."""
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    """One session per request, closed (and rolled back if uncommitted) afterwards."""
    with context.gateway.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def resolve_client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IpNetwork]
) -> str | None:
    """The client's address: the peer's, unless the peer is a trusted proxy, in which case the
    right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy.

    Entries left of an untrusted one are never believed (anyone can write them), and a
    malformed entry stops the walk there.
    """
    peer_ip = _parse_ip(peer) if peer else None
    if peer_ip is None or not any(peer_ip in net for net in trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    current = peer
    for hop in reversed(hops):
        hop_ip = _parse_ip(hop)
        if hop_ip is None:
            return current
        current = str(hop_ip)
        if not any(hop_ip in net for net in trusted):
            return current
    return current


def get_client_ip(request: Request, context: ContextDep) -> str | None:
    """The caller's IP address, for audit events (X-Forwarded-For only from trusted proxies)."""
    peer = request.client.host if request.client else None
    return resolve_client_ip(
        peer, request.headers.getlist("x-forwarded-for"), context.trusted_proxies
    )


ClientIpDep = Annotated[str | None, Depends(get_client_ip)]


# No auto_error: a missing or malformed header is one more failed attempt of the caller's
# address, answered auth.invalid_token in the one error shape, like a wrong token.
bearer_token = HTTPBearer(
    scheme_name="bearer", description="`Bearer <token>` of the calling system", auto_error=False
)


def get_api_client(
    session: SessionDep,
    context: ContextDep,
    ip: ClientIpDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_token)],
) -> ApiClient:
    """The system calling the API, from its bearer token (``auth.invalid_token`` otherwise)."""
    token = credentials.credentials if credentials else None
    server = context.gateway.settings.server
    policy = TokenPolicy(
        max_failures=server.max_failed_tokens,
        lockout=dt.timedelta(minutes=server.token_lockout_minutes),
    )
    client = authenticate(session=session, token=token, ip=ip, policy=policy)
    check_client_network(client, ip)
    return client


ApiClientDep = Annotated[ApiClient, Depends(get_api_client)]
