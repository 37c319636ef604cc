"""Buyer-side parties who are staff, in headless Chromium with mail through a real SMTP server:
the internal approver and the official log in to the staff pages and sign from 署名待ち with
the password typed again (and a one-time code for an account with TOTP); the contractor keeps
the mailed link + access code. The result passes `keiyaku verify` and pdfsig."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import pyotp
from playwright.sync_api import BrowserContext, Page, expect

from core.model import VisibilityScope
from core.records.audit import list_events
from core.staff.accounts import PasswordPolicy, add_staff, enable_totp, get_staff, set_password
from tests.e2e.conftest import Site, body_of, link_in, wait_for_visible_images
from tests.fixtures.gateway import SECRETS, envelope_request

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Kei-yaku-2026!"
STAFF_LINK = re.compile(r"https?://[^\s/]+/admin/sign/[A-Za-z0-9]+")


def _staff(site: Site, email: str, name: str, *, totp: bool = False) -> str | None:
    with site.gateway.sessions() as session:
        staff = add_staff(
            session=session,
            name=name,
            email=email,
            roles="signer",
            scope=VisibilityScope.OWN,
            department="契約課",
            actor="test",
        )
        set_password(
            session=session, staff=staff, password=PASSWORD, policy=PasswordPolicy(), actor="t"
        )
        secret = None
        if totp:
            enable_totp(session=session, staff=staff, issuer="開発市", actor="t")
            secret = staff.totp_secret
        session.commit()
    return secret


def _create(site: Site, tag: str) -> dict:
    emails = (f"kacho-{tag}@city.example.jp", f"ichiro-{tag}@example.co.jp",
              f"shicho-{tag}@city.example.jp")  # fmt: skip
    body = envelope_request(emails=emails, send=True, sender_email=f"sender-{tag}@city.example.jp")
    for party in (body["parties"][0], body["parties"][2]):  # the buyer's side are staff
        party["staff"] = True
        del party["access_code"]
    answer = site.api.post("/api/v1/envelopes", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _staff_mail_link(site: Site, email: str) -> str:
    (mail,) = site.inbox.wait_for(email)
    body = body_of(mail)
    assert mail["Subject"].startswith("【")
    assert "アクセスコード" not in body.replace("このメールにアクセスコードはありません", "")
    assert "利用申出書" not in body  # the contractor's wording is not for city staff
    assert not re.search(r"\d/sign/", body)  # no signing-link token
    links = STAFF_LINK.findall(body)
    assert len(links) == 1, body
    return str(links[0])


def _sign_as_staff(page: Page, site: Site, url: str, email: str, name: str,
                   totp: str | None = None) -> None:  # fmt: skip
    page.goto(url)  # the mail's link leads to the login first, then back to the envelope
    assert "/admin/login" in page.url
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    if totp is not None:
        page.fill("#totp", pyotp.TOTP(totp).now())
    page.click("#login")
    page.wait_for_url(re.compile(r".*/admin/sign/[A-Za-z0-9]+$"))
    wait_for_visible_images(page)
    expect(page.locator("#forward-button")).to_have_count(0)  # staff do not forward
    site.shot(page, f"{name}-documents")
    # 完了する → the confirmation asks for the password again.
    page.click("#complete-button")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.fill("#reauth-password", "Wrong-password-9")
    if totp is not None:
        page.fill("#reauth-totp", _next_code(totp))
    page.click("#confirm-complete")
    expect(page.locator("#error")).to_contain_text("正しくありません")
    site.shot(page, f"{name}-reauth-failed")
    page.click("#complete-button")
    page.fill("#reauth-password", PASSWORD)
    if totp is not None:
        page.fill("#reauth-totp", _next_code(totp))
    site.shot(page, f"{name}-confirm")
    page.click("#confirm-complete")
    page.wait_for_url("**/done")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)
    site.shot(page, f"{name}-done")


def _next_code(secret: str) -> str:
    # A one-time code is good once: the login used this step's, so signing uses the next one
    # (one step of clock drift is accepted).
    return pyotp.TOTP(secret).at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))


def test_staff_parties_sign_from_the_staff_pages(site: Site, context: BrowserContext) -> None:
    secret = _staff(site, "kacho-staff@city.example.jp", "契約 花子", totp=True)
    _staff(site, "shicho-staff@city.example.jp", "開発 太郎")
    envelope = _create(site, "staff")
    assert [p["staff"] for p in envelope["parties"]] == [True, False, True]
    page = context.new_page()

    # 1. The internal approver (TOTP account) signs from the staff pages.
    url = _staff_mail_link(site, "kacho-staff@city.example.jp")
    assert url.endswith(envelope["id"])
    assert secret is not None
    _sign_as_staff(page, site, url, "kacho-staff@city.example.jp", "approver", totp=secret)
    context.clear_cookies()

    # 2. The contractor: mailed link + access code, as before.
    (mail,) = site.inbox.wait_for("ichiro-staff@example.co.jp")
    page.goto(link_in(mail))
    page.fill("#access_code", "2468")
    page.click("#next")
    page.wait_for_url("**/documents")
    page.get_by_label("現場代理人氏名", exact=True).fill("鈴木 次郎")
    page.click(".tab >> nth=1")
    page.get_by_label("記入日", exact=True).fill("令和7年10月1日")
    page.click("#complete-button")
    page.click("#confirm-complete")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)
    context.clear_cookies()

    # 3. The official: 署名待ち after login lists the envelope.
    url = _staff_mail_link(site, "shicho-staff@city.example.jp")
    page.goto(f"{site.url}/admin/inbox")
    page.fill("#email", "shicho-staff@city.example.jp")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url("**/admin/inbox")
    expect(page.locator("#inbox tbody tr")).to_have_count(1)
    expect(page.locator("#inbox")).to_contain_text("市道１号線舗装補修工事")
    site.shot(page, "official-inbox")
    context.clear_cookies()
    _sign_as_staff(page, site, url, "shicho-staff@city.example.jp", "official")
    expect(page.locator(".downloads li")).to_have_count(2)  # completed: signed downloads

    status = site.api.get(f"/api/v1/envelopes/{envelope['id']}").json()
    assert status["state"] == "completed"
    assert [p["auth_method"] for p in status["parties"]] == [
        "staff_login+totp",
        "email+access_code",
        "staff_login",
    ]
    with site.gateway.sessions() as session:
        events = list_events(session=session, envelope_id=envelope["id"])
        assert sum(e.action == "party.reauth_failed" for e in events) == 2
        assert get_staff(session=session, email="shicho-staff@city.example.jp").failed_logins == 0

    with page.expect_download() as info:
        page.click(".downloads li >> nth=0 >> a")
    signed = site.shots.parent / "staff-signed.pdf"
    info.value.save_as(str(signed))
    verify = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(site.config), "verify", str(signed)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **SECRETS}, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    pdfsig = subprocess.run(["pdfsig", str(signed)], capture_output=True, text=True)
    assert pdfsig.stdout.count("Signature is Valid.") == 3, pdfsig.stdout
