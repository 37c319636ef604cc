"""Guessing every secret in parallel against the served app (SQLite and PostgreSQL): staff
password, TOTP code, access code and API token. Each counts its attempts in one reserving UPDATE
(core.staff.attempts), so 20 parallel guesses get exactly the limit checked; a locked account answers
exactly like an unknown one; a right secret after the lock does not get in and does not clear it.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pyotp
import pytest
from sqlalchemy import select, update

from core.envelopes.links import issue_link
from core.model import AuditEvent, AuthThrottle, LinkPurpose, SigningLink, Staff
from core.staff.accounts import PasswordPolicy, add_staff, enable_totp, set_password
from tests.fixtures.gateway import envelope_request
from tests.gateway.conftest import LiveGateway

PASSWORD = "Kei-yaku-2026!"
PARALLEL = 20


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _in_parallel(count: int, attempt: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """Run ``attempt`` ``count`` times at once (each thread waits at a barrier first)."""
    barrier = threading.Barrier(count)

    def run(index: int) -> httpx.Response:
        barrier.wait(timeout=60)
        return attempt(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def _actions(live: LiveGateway, *names: str) -> dict[str, int]:
    with live.gateway.sessions() as session:
        actions = list(session.scalars(select(AuditEvent.action)))
    return {name: actions.count(name) for name in names}


def _staff(live: LiveGateway, email: str, *, totp: bool = False) -> str | None:
    with live.gateway.sessions() as session:
        staff = add_staff(
            session=session,
            name="田中 一郎",
            email=email,
            roles="sender",
            scope="own",
            department="契約課",
            actor="test",
        )
        set_password(
            session=session, staff=staff, password=PASSWORD, policy=PasswordPolicy(), actor="test"
        )
        uri = (
            enable_totp(session=session, staff=staff, issuer="開発市", actor="test")
            if totp
            else None
        )
        session.commit()
    return pyotp.parse_uri(uri).secret if uri else None


@pytest.fixture
def clients() -> Iterator[Callable[[LiveGateway, str | None], httpx.Client]]:
    """Clients of a served gateway, all closed at the end."""
    made: list[httpx.Client] = []

    def make(live: LiveGateway, token: str | None = None) -> httpx.Client:
        made.append(live.client(token))
        return made[-1]

    try:
        yield make
    finally:
        for client in made:
            client.close()


Clients = Callable[[LiveGateway, str | None], httpx.Client]


class _Login:
    """A browser-like client that fetched the login form (cookie + CSRF token) beforehand."""

    def __init__(self, live: LiveGateway, clients: Clients) -> None:
        self.client = clients(live, None)
        self.token = _csrf(self.client.get("/admin/login").text)

    def post(self, email: str, password: str, totp: str | None = None) -> httpx.Response:
        data = {"email": email, "password": password, "csrf_token": self.token}
        if totp is not None:
            data["totp"] = totp
        return self.client.post("/admin/login", data=data, follow_redirects=False)


def _message(answer: httpx.Response) -> str:
    match = re.search(r'id="error"[^>]*>([^<]*)<', answer.text)
    return match.group(1) if match else answer.text


def test_parallel_wrong_passwords_check_exactly_the_limit(
    live_gateway: Callable[..., LiveGateway], clients: Clients
) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp")
    logins = [_Login(live, clients) for _ in range(PARALLEL)]
    answers = _in_parallel(
        PARALLEL, lambda i: logins[i].post("tanaka@city.example.jp", f"Wrong-Password-{i}!")
    )
    assert [a.status_code for a in answers] == [401] * PARALLEL
    # 5 passwords were compared (login.failed), the other 15 refused unchecked (login.locked).
    counts = _actions(live, "login.failed", "login.locked", "login.lockout")
    assert counts == {"login.failed": 5, "login.locked": PARALLEL - 5, "login.lockout": 1}

    # Locked: the right password neither gets in nor clears the lock, and the answer is the
    # one an unknown account gets (status and message): no enumeration.
    with live.gateway.sessions() as session:
        locked_until = session.scalar(select(Staff.locked_until))
    right = _Login(live, clients).post("tanaka@city.example.jp", PASSWORD)
    unknown = _Login(live, clients).post("nobody@city.example.jp", PASSWORD)
    assert right.status_code == unknown.status_code == 401
    assert _message(right) == _message(unknown)
    assert "ロック" not in right.text
    with live.gateway.sessions() as session:
        assert session.scalar(select(Staff.locked_until)) == locked_until


def test_parallel_wrong_totp_codes_check_exactly_the_limit(
    live_gateway: Callable[..., LiveGateway], clients: Clients
) -> None:
    live = live_gateway()
    secret = _staff(live, "sato@city.example.jp", totp=True)
    assert secret is not None
    right_code = pyotp.TOTP(secret).now()
    wrong = [f"{(int(right_code) + 1000 + i) % 1_000_000:06d}" for i in range(PARALLEL)]
    logins = [_Login(live, clients) for _ in range(PARALLEL)]
    answers = _in_parallel(
        PARALLEL, lambda i: logins[i].post("sato@city.example.jp", PASSWORD, wrong[i])
    )
    assert [a.status_code for a in answers] == [401] * PARALLEL
    counts = _actions(live, "login.failed", "login.locked", "login.lockout")
    assert counts == {"login.failed": 5, "login.locked": PARALLEL - 5, "login.lockout": 1}
    assert (
        _Login(live, clients).post("sato@city.example.jp", PASSWORD, right_code).status_code == 401
    )


def test_parallel_wrong_access_codes_check_exactly_the_limit(
    live_gateway: Callable[..., LiveGateway], clients: Clients
) -> None:
    live = live_gateway()
    with live.client(live.token("e-bidding")) as api:
        created = api.post("/api/v1/envelopes", json=envelope_request(send=True))
        assert created.status_code == 201, created.text
        envelope = created.json()
    with live.gateway.sessions() as session:
        party = envelope["parties"][0]
        from core.envelopes.lifecycle import get_envelope

        row = get_envelope(session=session, envelope_id=envelope["id"])
        _link, token = issue_link(
            session=session,
            envelope_id=row.id,
            party_id=row.parties[0].id,
            email=party["email"],
            purpose=LinkPurpose.SIGN,
            valid_for=dt.timedelta(days=1),
            issued_for="test:parallel",
        )
        session.commit()
    browsers = [clients(live, None) for _ in range(PARALLEL)]
    tokens = [_csrf(c.get(f"/sign/{token}").text) for c in browsers]
    answers = _in_parallel(
        PARALLEL,
        lambda i: browsers[i].post(
            f"/sign/{token}",
            data={"access_code": f"{9000 + i}", "csrf_token": tokens[i]},
            follow_redirects=False,
        ),
    )
    assert {a.status_code for a in answers} <= {401, 423}
    assert _actions(live, "party.code_failed", "party.locked") == {
        "party.code_failed": 5,
        "party.locked": 1,
    }
    with live.gateway.sessions() as session:
        link = session.scalars(select(SigningLink).where(SigningLink.issued_for == "test:parallel"))
        assert next(iter(link)).failed_attempts == 5
    # The right code no longer opens the link.
    page = clients(live, None).get(f"/sign/{token}")
    assert page.status_code == 423


def test_parallel_wrong_api_tokens_check_exactly_the_limit(
    live_gateway: Callable[..., LiveGateway], clients: Clients
) -> None:
    live = live_gateway(extra="  max_failed_tokens: 5\n  token_lockout_minutes: 15\n")
    good = live.token("e-bidding")
    answers = _in_parallel(
        PARALLEL,
        lambda i: clients(live, f"kgw_{'x' * 40}{i:02d}").get("/api/v1/envelopes"),
    )
    assert [a.status_code for a in answers] == [401] * PARALLEL
    assert {a.json()["error"]["code"] for a in answers} == {"auth.invalid_token"}
    # 5 attempts reserved (the fifth locks), the other 15 refused as locked out.
    assert _actions(live, "api.lockout", "api.locked") == {
        "api.lockout": 1,
        "api.locked": PARALLEL - 5,
    }
    # While the address is locked out even a good token is refused, like a wrong one.
    refused = clients(live, good).get("/api/v1/envelopes")
    assert refused.status_code == 401
    assert refused.json() == answers[0].json()
    assert _actions(live, "api.locked")["api.locked"] == PARALLEL - 5 + 1


def test_a_right_token_is_answered_while_a_writer_holds_the_address_row(
    live_gateway: Callable[..., LiveGateway], clients: Clients
) -> None:
    """A right token writes nothing to authenticate: a call is answered while another
    transaction holds the caller address's counter row (a row lock on PostgreSQL, the one
    write lock on SQLite), where counting the call would have waited for that transaction."""
    live = live_gateway(extra="  max_failed_tokens: 5\n")
    good = live.token("e-bidding")
    wrong = clients(live, f"kgw_{'x' * 43}").get("/api/v1/envelopes")
    assert wrong.status_code == 401
    with live.gateway.sessions() as session:
        (key,) = session.scalars(select(AuthThrottle.key)).all()  # the caller's address
    writer = live.gateway.sessions()
    writer.execute(update(AuthThrottle).where(AuthThrottle.key == key).values(failures=1))
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            answer = pool.submit(clients(live, good).get, "/api/v1/envelopes")
            # The old path waited for the row until the writer ended (or SQLite's 30 s).
            assert answer.result(timeout=10).status_code == 200
    finally:
        writer.rollback()
        writer.close()
    # Nothing was counted for it, and a wrong token still is.
    with live.gateway.sessions() as session:
        assert session.scalar(select(AuthThrottle.failures)) == 1
    assert clients(live, f"kgw_{'y' * 43}").get("/api/v1/envelopes").status_code == 401
    with live.gateway.sessions() as session:
        assert session.scalar(select(AuthThrottle.failures)) == 2
