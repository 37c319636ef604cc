"""Staff pages over HTTP (uvicorn on loopback, SQLite and PostgreSQL): login and lockout, CSRF,
server-side sessions (logout, idle timeout, disabling and an admin end them), scope (out of
scope is 404 for detail, download and certificate), search, download, cancel, the report, and
the IP allow-list on /admin and /api."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable

import httpx
from sqlalchemy import select, update

from core.model import AuditEvent, Envelope, StaffSession, VisibilityScope, utcnow
from core.staff.accounts import PasswordPolicy, add_staff, set_password
from tests.fixtures.gateway import envelope_request
from tests.gateway.conftest import LiveGateway

PASSWORD = "Kei-yaku-2026!"


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _staff(
    live: LiveGateway,
    email: str,
    department: str,
    roles: str = "sender",
    scope: VisibilityScope = VisibilityScope.DEPARTMENT,
) -> None:
    with live.gateway.sessions() as session:
        staff = add_staff(
            session=session,
            name="職員 " + email[0],
            email=email,
            roles=roles,
            scope=scope,
            department=department,
            actor="test",
        )
        set_password(
            session=session,
            staff=staff,
            password=PASSWORD,
            policy=PasswordPolicy(),
            actor="admin@city.example.jp",
        )
        session.commit()


def _envelope(live: LiveGateway, department: str, counterparty: str) -> str:
    with live.client(live.token(f"intake-{department}")) as api:
        envelope_id: str = api.post("/api/v1/envelopes", json=envelope_request()).json()["id"]
    with live.gateway.sessions() as session:
        session.execute(
            update(Envelope)
            .where(Envelope.id == envelope_id)
            .values(department=department, counterparty=counterparty)
        )
        session.commit()
    return envelope_id


def _login(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    token = _csrf(client.get("/admin/login").text)
    return client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": token},
        follow_redirects=False,
    )


def test_login_lockout_and_csrf(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp", "契約課")
    with live.client() as client:
        assert (
            client.get("/admin/envelopes", follow_redirects=False)
            .headers["location"]
            .startswith("/admin/login")
        )
        no_csrf = client.post(
            "/admin/login", data={"email": "tanaka@city.example.jp", "password": PASSWORD}
        )
        assert no_csrf.status_code == 403
        for _attempt in range(5):
            answer = _login(client, "tanaka@city.example.jp", "wrong-Password-1")
            assert answer.status_code == 401
        # Locked: the right password is refused like a wrong one (no 423 to enumerate by).
        assert "ロック" not in answer.text
        assert _login(client, "tanaka@city.example.jp").status_code == 401
    with live.client() as client:
        unknown = _login(client, "nobody@city.example.jp")
        assert unknown.status_code == 401


def test_scope_search_download_cancel(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp", "契約課")
    _staff(live, "sato@city.example.jp", "土木課", roles="signer")
    mine = _envelope(live, "契約課", "株式会社札幌建設")
    theirs = _envelope(live, "土木課", "有限会社旭川設備")
    with live.client() as client:
        login = _login(client, "tanaka@city.example.jp")
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/admin" in cookie
        listing = client.get("/admin/envelopes").text
        assert mine in listing and theirs not in listing
        assert "1 件中" in listing
        # Out of scope answers like a missing envelope, everywhere.
        for path in ("", "/documents/1", "/certificate"):
            assert client.get(f"/admin/envelopes/{theirs}{path}").status_code == 404
            assert client.get(f"/admin/envelopes/{'0' * 32}{path}").status_code == 404
        assert theirs not in client.get("/admin/envelopes", params={"department": "土木課"}).text
        searched = client.get("/admin/envelopes", params={"counterparty": "札幌"}).text
        assert mine in searched
        assert mine not in client.get("/admin/envelopes", params={"counterparty": "旭川"}).text
        bad = client.get("/admin/envelopes", params={"date_from": "2026/04/01"})
        assert bad.status_code == 200 and "形式が正しくありません" in bad.text

        detail = client.get(f"/admin/envelopes/{mine}")
        assert detail.status_code == 200 and "署名の進み具合" in detail.text
        pdf = client.get(f"/admin/envelopes/{mine}/documents/1")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        assert "filename*=UTF-8''" in pdf.headers["content-disposition"]
        assert client.get(f"/admin/envelopes/{mine}/certificate").status_code == 409
        assert client.post(f"/admin/envelopes/{mine}/cancel", data={}).status_code == 403
        cancelled = client.post(
            f"/admin/envelopes/{mine}/cancel",
            data={"csrf_token": _csrf(detail.text), "reason": "予算の都合"},
            follow_redirects=True,
        )
        assert cancelled.status_code == 200 and "取消" in cancelled.text
        report = client.get("/admin/reports/monthly")
        assert report.status_code == 200 and "<svg" in report.text
        history = client.get(f"/admin/envelopes/{mine}").text
        for action in ("staff.view", "staff.download", "envelope.cancelled"):
            assert action in history
    with live.client() as client:  # a signer may look but not cancel
        assert _login(client, "sato@city.example.jp").status_code == 303
        detail = client.get(f"/admin/envelopes/{theirs}")
        assert detail.status_code == 200 and 'id="cancel"' not in detail.text
        refused = client.post(
            f"/admin/envelopes/{theirs}/cancel", data={"csrf_token": _csrf(detail.text)}
        )
        assert refused.status_code == 403


def test_ip_allow_list(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway(extra='staff:\n  allowed_networks: ["10.0.0.0/8"]\n')
    with live.client() as client:
        page = client.get("/admin/login")
        assert page.status_code == 403 and "このネットワーク" in page.text
        api = client.get("/api/v1/envelopes", headers={"X-Forwarded-For": "10.1.2.3"})
        assert api.status_code == 403 and api.json()["error"]["code"] == "request.ip_refused"
    allowed = live_gateway(extra='staff:\n  allowed_networks: ["127.0.0.0/8", "::1/128"]\n')
    with allowed.client() as client:
        assert client.get("/admin/login").status_code == 200


def test_staff_management_by_admins_only(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _staff(live, "admin@city.example.jp", "総務課", roles="admin", scope=VisibilityScope.ALL)
    _staff(live, "clerk@city.example.jp", "契約課")
    with live.client() as client:
        assert _login(client, "clerk@city.example.jp").status_code == 303
        assert client.get("/admin/staff").status_code == 403
    with live.client() as client:
        assert _login(client, "admin@city.example.jp").status_code == 303
        page = client.get("/admin/staff")
        assert page.status_code == 200 and "clerk@city.example.jp" in page.text
        form = {
            "csrf_token": _csrf(page.text),
            "email": "new@city.example.jp",
            "name": "新人 太郎",
            "department": "契約課",
            "scope": "department",
            "role": ["sender", "signer"],
            "password": "short",
        }
        weak = client.post("/admin/staff", data=form)
        assert weak.status_code == 422 and "パスワード" in weak.text
        assert "new@city.example.jp" not in weak.text.split('id="members"')[1].split("</table>")[0]
        assert client.post("/admin/staff", data={**form, "csrf_token": ""}).status_code == 403
        saved = client.post(
            "/admin/staff", data={**form, "password": PASSWORD}, follow_redirects=True
        )
        assert saved.status_code == 200 and "new@city.example.jp" in saved.text
        disabled = client.post(
            "/admin/staff",
            data={**form, "password": "", "disabled": "1", "csrf_token": _csrf(saved.text)},
        )
        assert disabled.status_code == 303
    with live.client() as client:
        assert _login(client, "new@city.example.jp").status_code == 401  # disabled


def test_api_client_allow_list(live_gateway: Callable[..., LiveGateway]) -> None:
    from sqlalchemy import select

    from core.model import ApiClient
    from core.staff.access import set_client_networks

    live = live_gateway()
    token = live.token("e-bid")

    def limit(*networks: str) -> None:
        with live.gateway.sessions() as session:
            client = session.scalars(select(ApiClient).where(ApiClient.name == "e-bid")).one()
            set_client_networks(session=session, client=client, networks=networks)
            session.commit()

    with live.client(token) as api:
        assert api.get("/api/v1/envelopes").status_code == 200
        limit("10.0.0.0/8")
        refused = api.get("/api/v1/envelopes", headers={"X-Forwarded-For": "10.0.0.1"})
        assert refused.status_code == 403  # the forged header is not believed
        assert refused.json()["error"]["code"] == "auth.ip_refused"
        limit("127.0.0.1/32", "::1")
        assert api.get("/api/v1/envelopes").status_code == 200
        limit()
        assert api.get("/api/v1/envelopes").status_code == 200


def test_staff_import_page_previews_then_applies(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _staff(live, "admin@city.example.jp", "総務課", roles="admin", scope=VisibilityScope.ALL)
    good = (
        "name,department,email,roles,scope\n田中 一郎,契約課,tanaka@city.example.jp,sender,部署\n"
    )
    with live.client() as client:
        assert _login(client, "admin@city.example.jp").status_code == 303
        token = _csrf(client.get("/admin/staff").text)
        bad = client.post(
            "/admin/staff/import",
            data={"csrf_token": token},
            files={"file": ("staff.csv", (good + "x,y,bad,sender,own\n").encode("cp932"))},
        )
        assert (
            bad.status_code == 200 and "3 行目" in bad.text and 'id="apply-import"' not in bad.text
        )
        preview = client.post(
            "/admin/staff/import",
            data={"csrf_token": token},
            files={"file": ("staff.csv", good.encode("cp932"))},
        )
        assert "新規 1 件" in preview.text and "tanaka@city.example.jp" in preview.text
        assert "tanaka@city.example.jp" not in client.get("/admin/staff").text  # nothing yet
        content = re.search(r'name="content" value="([^"]+)"', preview.text)
        assert content
        applied = client.post(
            "/admin/staff/import",
            data={"csrf_token": token, "content": content.group(1), "apply": "1"},
        )
        assert "登録しました" in applied.text
        assert "tanaka@city.example.jp" in client.get("/admin/staff").text


def _session_cookie(client: httpx.Client) -> str:
    value = next(c.value for c in client.cookies.jar if c.name == "kg_staff")
    assert value
    return value


def _logged_out(client: httpx.Client, cookie: str | None = None) -> bool:
    headers = {"Cookie": f"kg_staff={cookie}"} if cookie else None
    answer = client.get("/admin/envelopes", headers=headers, follow_redirects=False)
    return answer.status_code == 303 and answer.headers["location"].startswith("/admin/login")


def test_a_logged_out_cookie_replayed_gets_the_login_page(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp", "契約課")
    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        copied = _session_cookie(client)
        page = client.get("/admin/envelopes")
        assert page.status_code == 200
        with live.client() as other:  # the copy works while the session lives ...
            assert not _logged_out(other, copied)
        assert client.post("/admin/logout", data={}).status_code == 403  # CSRF
        out = client.post("/admin/logout", data={"csrf_token": _csrf(page.text)})
        assert out.status_code == 303
    with live.client() as other:  # ... and not after the logout
        assert _logged_out(other, copied)
    with live.gateway.sessions() as session:
        row = session.scalars(select(StaffSession)).one()
        token = copied.partition(":")[0]  # the cookie: token:expiry.signature
        assert row.ended_at is not None and row.id == hashlib.sha256(token.encode()).hexdigest()
        actions = session.scalars(select(AuditEvent.action)).all()
    assert "login" in actions and "logout" in actions


def test_an_idle_session_ends(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway(extra="staff:\n  session_idle_minutes: 5\n")
    _staff(live, "tanaka@city.example.jp", "契約課")
    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        assert not _logged_out(client)

        def idle_for(minutes: int) -> None:
            with live.gateway.sessions() as session:
                session.execute(
                    update(StaffSession).values(
                        last_seen_at=utcnow() - dt.timedelta(minutes=minutes)
                    )
                )
                session.commit()

        idle_for(4)
        assert not _logged_out(client)  # and this use slides the deadline on
        with live.gateway.sessions() as session:
            seen = session.scalars(select(StaffSession.last_seen_at)).one()
        assert utcnow() - seen < dt.timedelta(minutes=1)
        idle_for(6)
        assert _logged_out(client)


def test_a_busy_session_still_ends_session_hours_after_the_login(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(extra="staff:\n  session_hours: 2\n")
    _staff(live, "tanaka@city.example.jp", "契約課")
    with live.client() as client:
        login = _login(client, "tanaka@city.example.jp")
        assert "max-age=7200" in login.headers["set-cookie"].lower()
        assert not _logged_out(client)
        with live.gateway.sessions() as session:
            row = session.scalars(select(StaffSession)).one()
            assert row.expires_at - row.created_at == dt.timedelta(hours=2)
        with live.gateway.sessions() as session:  # logged in 2 hours ago, used a moment ago
            session.execute(
                update(StaffSession).values(
                    created_at=utcnow() - dt.timedelta(hours=2),
                    expires_at=utcnow() - dt.timedelta(seconds=1),
                )
            )
            session.commit()
        assert _logged_out(client)


def test_disabling_or_an_admin_ends_a_staff_members_sessions(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, "admin@city.example.jp", "総務課", roles="admin", scope=VisibilityScope.ALL)
    _staff(live, "clerk@city.example.jp", "契約課")
    with live.client() as clerk, live.client() as admin:
        assert _login(clerk, "clerk@city.example.jp").status_code == 303
        assert _login(admin, "admin@city.example.jp").status_code == 303
        page = admin.get("/admin/staff")
        assert page.text.count('class="danger end-sessions"') == 2  # both are logged in
        end = {"csrf_token": _csrf(page.text), "email": "clerk@city.example.jp"}
        assert (
            admin.post("/admin/staff/sessions/end", data={"email": end["email"]}).status_code == 403
        )
        assert not _logged_out(clerk)
        with live.client() as other_clerk:  # a non-admin may not end anyone's sessions
            assert _login(other_clerk, "clerk@city.example.jp").status_code == 303
            token = _csrf(other_clerk.get("/admin/envelopes").text)
            refused = other_clerk.post(
                "/admin/staff/sessions/end",
                data={"csrf_token": token, "email": "admin@city.example.jp"},
            )
            assert refused.status_code == 403
        assert admin.post("/admin/staff/sessions/end", data=end).status_code == 303
        assert _logged_out(clerk)
        assert not _logged_out(admin)
        with live.gateway.sessions() as session:
            event = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "staff.sessions_ended")
            ).one()
        assert event.actor == "admin@city.example.jp"
        assert event.detail == {"email": "clerk@city.example.jp", "sessions": 2}

        assert _login(clerk, "clerk@city.example.jp").status_code == 303
        assert not _logged_out(clerk)
        disable = {
            "csrf_token": _csrf(page.text),
            "email": "clerk@city.example.jp",
            "name": "職員 c",
            "department": "契約課",
            "scope": "department",
            "role": "sender",
            "disabled": "1",
        }
        assert admin.post("/admin/staff", data=disable).status_code == 303
        assert _logged_out(clerk)
