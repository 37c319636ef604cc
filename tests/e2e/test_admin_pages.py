"""Staff pages in headless Chromium: login, lockout, search, detail, download, the report,
logout (a copied cookie stops working), and the admins' sync-run and outbox pages.
Screenshots land in the test's temporary folder (``Site.shot``)."""

from __future__ import annotations

from pathlib import Path

import pyotp
from playwright.sync_api import BrowserContext, Page
from sqlalchemy import update

from core.model import Delivery, Envelope, VisibilityScope
from core.staff.accounts import PasswordPolicy, add_staff, enable_totp, get_staff, set_password
from core.states import DeliveryState
from tests.e2e.conftest import Site
from tests.fixtures.gateway import envelope_request
from tests.fixtures.operations import dead_and_due_deliveries, sync_run_with_line_errors

PASSWORD = "Kei-yaku-2026!"


def _staff(
    site: Site,
    email: str,
    department: str,
    *,
    name: str = "田中 一郎",
    roles: str = "sender",
    scope: VisibilityScope = VisibilityScope.DEPARTMENT,
) -> None:
    with site.gateway.sessions() as session:
        staff = add_staff(
            session=session,
            name=name,
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


def _envelope(site: Site, department: str, counterparty: str, title: str) -> str:
    envelope_id: str = site.api.post(
        "/api/v1/envelopes", json=envelope_request(title=title)
    ).json()["id"]
    with site.gateway.sessions() as session:
        session.execute(
            update(Envelope)
            .where(Envelope.id == envelope_id)
            .values(department=department, counterparty=counterparty)
        )
        session.commit()
    return envelope_id


def _login(page: Page, site: Site, email: str, password: str) -> None:
    page.goto(f"{site.url}/admin/login")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("#login")


def test_login_and_lockout(site: Site, context: BrowserContext) -> None:
    _staff(site, "lock@city.example.jp", "契約課")
    page = context.new_page()
    page.goto(f"{site.url}/admin/envelopes")
    assert page.url.startswith(f"{site.url}/admin/login")
    site.shot(page, "admin-login")
    for _ in range(4):
        _login(page, site, "lock@city.example.jp", "Wrong-password-1")
        assert "正しくありません" in page.inner_text("#error")
    site.shot(page, "admin-login-failed")
    _login(page, site, "lock@city.example.jp", "Wrong-password-1")  # the fifth locks
    locked_message = page.inner_text("#error")
    _login(page, site, "lock@city.example.jp", PASSWORD)  # right, but locked
    assert "/admin/login" in page.url
    # A locked account reads like a wrong password or an unknown account: no enumeration.
    assert page.inner_text("#error") == locked_message
    assert "正しくありません" in locked_message and "ロック" not in locked_message
    site.shot(page, "admin-locked")


def test_search_detail_download_and_report(site: Site, context: BrowserContext) -> None:
    _staff(site, "search@city.example.jp", "道路課")
    mine = _envelope(site, "道路課", "株式会社札幌舗装", "市道3号線舗装工事")
    _envelope(site, "道路課", "有限会社旭川設備", "道路照明設備更新")
    hidden = _envelope(site, "水道課", "株式会社札幌舗装", "配水管布設替工事")
    page = context.new_page()
    _login(page, site, "search@city.example.jp", PASSWORD)
    page.wait_for_url(f"{site.url}/admin/envelopes")
    assert "2 件中" in page.inner_text("#total")
    assert hidden not in page.content()
    site.shot(page, "admin-list")

    page.fill("input[name=counterparty]", "札幌")
    page.click("#do-search")
    page.wait_for_url("**counterparty=*")
    rows = page.locator("#results tbody tr")
    assert rows.count() == 1 and "市道3号線舗装工事" in rows.inner_text()
    site.shot(page, "admin-search")

    rows.locator("a").click()
    page.wait_for_url(f"{site.url}/admin/envelopes/{mine}")
    assert "署名の進み具合" in page.content()
    assert page.locator("#parties tbody tr").count() == 3
    site.shot(page, "admin-detail")
    with page.expect_download() as info:
        page.locator("#documents a").first.click()
    download = info.value
    assert download.suggested_filename == "工事請負契約書.pdf"
    with open(download.path(), "rb") as handle:
        assert handle.read(5) == b"%PDF-"

    page.goto(f"{site.url}/admin/envelopes/{hidden}")
    assert "見つかりません" in page.content()

    page.goto(f"{site.url}/admin/reports/monthly")
    assert page.locator("#chart rect").count() == 12
    site.shot(page, "admin-report")
    copied = [c for c in context.cookies() if c["name"] == "kg_staff"]
    assert len(copied) == 1
    page.click("#logout")
    page.wait_for_url(f"{site.url}/admin/login")
    assert not [c for c in context.cookies() if c["name"] == "kg_staff"]
    # The cookie from before the logout, put back: the session ended on the server.
    context.add_cookies(copied)  # type: ignore[arg-type]
    page.goto(f"{site.url}/admin/envelopes")
    assert page.url.startswith(f"{site.url}/admin/login")
    assert page.locator("#login").is_visible()


def test_login_with_a_one_time_code(site: Site, context: BrowserContext) -> None:
    _staff(site, "totp@city.example.jp", "契約課")
    with site.gateway.sessions() as session:
        staff = get_staff(session=session, email="totp@city.example.jp")
        enable_totp(session=session, staff=staff, issuer="開発市", actor=staff.email)
        secret = staff.totp_secret
        session.commit()
    assert secret
    page = context.new_page()
    _login(page, site, "totp@city.example.jp", PASSWORD)  # no code: refused
    assert "確認コード" in page.inner_text("#error")
    page.fill("#email", "totp@city.example.jp")
    page.fill("#password", PASSWORD)
    page.fill("#totp", pyotp.TOTP(secret).now())
    site.shot(page, "admin-login-totp")
    page.click("#login")
    page.wait_for_url(f"{site.url}/admin/envelopes")


def test_staff_management_and_import(site: Site, context: BrowserContext, tmp_path: Path) -> None:
    _staff(
        site,
        "soumu@city.example.jp",
        "総務課",
        name="総務 花子",
        roles="admin",
        scope=VisibilityScope.ALL,
    )
    csv_file = tmp_path / "職員.csv"
    csv_file.write_bytes(
        "氏名,所属,メールアドレス,権限,閲覧範囲\n"
        "山田 次郎,契約課,yamada@city.example.jp,sender;signer,部署\n"
        "鈴木 三郎,土木課,suzuki@city.example.jp,signer,本人\n".encode("cp932")
    )
    page = context.new_page()
    _login(page, site, "soumu@city.example.jp", PASSWORD)
    page.wait_for_url(f"{site.url}/admin/envelopes")
    page.click("text=職員管理")
    page.wait_for_url(f"{site.url}/admin/staff")
    page.set_input_files("#import-form input[type=file]", str(csv_file))
    page.click("#import-form button")
    assert "新規 2 件" in page.inner_text("#summary")
    site.shot(page, "admin-staff-import-preview")
    page.click("#apply-import")
    assert "登録しました" in page.content()
    page.goto(f"{site.url}/admin/staff")
    assert "yamada@city.example.jp" in page.inner_text("#members")
    site.shot(page, "admin-staff")


def test_sync_runs_and_outbox_pages(site: Site, context: BrowserContext) -> None:
    _staff(
        site,
        "unyou@city.example.jp",
        "情報政策課",
        name="運用 次郎",
        roles="admin",
        scope=VisibilityScope.ALL,
    )
    run_id = sync_run_with_line_errors(site.gateway.sessions)
    dead_id, _ = dead_and_due_deliveries(site.gateway.sessions)
    page = context.new_page()
    _login(page, site, "unyou@city.example.jp", PASSWORD)
    page.wait_for_url(f"{site.url}/admin/envelopes")

    page.click("text=取込履歴")
    page.wait_for_url(f"{site.url}/admin/sync-runs")
    assert "2026年04月02日 02:00" in page.inner_text("#runs")
    assert "nightly_pull" in page.inner_text("#jobs")
    site.shot(page, "admin-sync-runs")
    page.click(f"#runs a[href='/admin/sync-runs/{run_id}']")
    page.wait_for_url(f"{site.url}/admin/sync-runs/{run_id}")
    rows = page.locator("#line-errors tbody tr")
    assert rows.count() == 2 and "落札金額がありません" in rows.nth(0).inner_text()
    site.shot(page, "admin-sync-run")

    page.click("text=配信状況")
    page.wait_for_url(f"{site.url}/admin/outbox")
    assert page.inner_text("#count-dead") == "1"
    site.shot(page, "admin-outbox")
    page.click("#deliveries button.retry")
    page.wait_for_url(f"{site.url}/admin/outbox?state=dead")
    assert page.inner_text("#count-dead") == "0"
    assert page.locator("#deliveries button.retry").count() == 0
    with site.gateway.sessions() as session:
        delivery = session.get(Delivery, dead_id)
        assert delivery is not None and delivery.state is DeliveryState.PENDING
