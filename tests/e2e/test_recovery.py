"""Staff recovery on the envelope page in headless Chromium (desktop and phone sizes): a locked
link shows as locked in the list and the detail, is unlocked, the party gets a new access code
and a corrected address (the old address told nothing of the contract), a reminder and a later
deadline; the party then signs at the new address and the envelope completes. Cancel asks for
confirmation and a reason."""

from __future__ import annotations

import datetime as dt

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from core.model import VisibilityScope
from core.records.audit import list_events
from core.staff.accounts import PasswordPolicy, add_staff, set_password
from core.timezone import JST
from tests.e2e.conftest import Site, body_of, link_in
from tests.fixtures.gateway import envelope_request

PASSWORD = "Kei-yaku-2026!"
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


def _today() -> dt.date:
    return dt.datetime.now(JST).date()


def _clerk(site: Site, email: str) -> None:
    with site.gateway.sessions() as session:
        staff = add_staff(session=session, name="契約 係員", email=email, roles="sender",
                          scope=VisibilityScope.ALL, department="契約課", actor="t")  # fmt: skip
        set_password(session=session, staff=staff, password=PASSWORD, policy=PasswordPolicy(),
                     actor="t")  # fmt: skip
        session.commit()


def _login(page: Page, site: Site, email: str, target: str) -> None:
    page.goto(f"{site.url}{target}")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(f"**{target}")


def _code(page: Page, url: str, code: str) -> None:
    page.goto(url)
    page.fill("#access_code", code)
    page.click("#next")


@pytest.mark.parametrize("size", sorted(SIZES))
def test_recovery_actions_end_in_a_completed_envelope(
    site: Site, context: BrowserContext, size: str
) -> None:
    tag = f"rec-{size}"
    clerk = f"clerk-{tag}@city.example.jp"
    _clerk(site, clerk)
    body = envelope_request(
        emails=(f"kacho-{tag}@city.example.jp", f"ichiro-{tag}@example.co.jp",
                f"shicho-{tag}@city.example.jp"),
        send=True, sender_email=clerk,
        metadata={"amount": 4_950_000, "deadline": str(_today() + dt.timedelta(days=3))},
    )  # fmt: skip
    envelope = site.api.post("/api/v1/envelopes", json=body).json()
    detail = f"/admin/envelopes/{envelope['id']}"
    kacho = body["parties"][0]["email"]
    page = context.new_page()
    page.set_viewport_size(SIZES[size])
    page.on("dialog", lambda dialog: dialog.accept())

    # The approver mistypes the code five times: the link locks, the clerk is told.
    (request,) = site.inbox.wait_for(kacho)
    old_url = link_in(request)
    for _ in range(5):
        _code(page, old_url, "9999")
    expect(page.locator("#message")).to_contain_text("ロック")
    site.inbox.wait_for(clerk)  # 【ロック】 notice
    context.clear_cookies()

    # The list and the detail show the party as locked.
    _login(page, site, clerk, "/admin/envelopes")
    row = page.locator("#results tr", has_text=envelope["management_number"])
    expect(row.locator(".locked")).to_have_text("ロック中")
    page.goto(f"{site.url}{detail}")
    expect(page.locator("#party-1 .locked")).to_have_text("ロック中")
    site.shot(page, f"{size}-locked-detail")

    # Unlock: the link works again; the party is told by mail.
    page.click("#unlock-1")
    expect(page.locator("#party-1 .locked")).to_have_count(0)
    unlocked = site.inbox.wait_for(kacho, 2)[-1]
    assert "ロックを解除しました" in body_of(unlocked) and "1111" not in body_of(unlocked)

    # A new access code (never mailed), then the address corrected to a new mailbox.
    page.fill("#code-1", "5678")
    page.click("#set-code-1")
    changed = site.inbox.wait_for(kacho, 3)[-1]
    assert "別の方法でお知らせします" in body_of(changed) and "5678" not in body_of(changed)
    new_address = f"kacho2-{tag}@city.example.jp"
    page.fill("#email-1", new_address)
    page.click("#readdress-1")
    expect(page.locator("#party-1")).to_contain_text(new_address)
    notice = site.inbox.wait_for(kacho, 4)[-1]
    assert "宛先が変更された" in body_of(notice)
    assert "市道" not in body_of(notice) and "/sign/" not in body_of(notice)  # nothing sensitive
    (fresh,) = site.inbox.wait_for(new_address)
    new_url = link_in(fresh)

    # Remind now, and a later deadline: both mailed to the new address.
    page.click("#remind-1")
    reminder = site.inbox.wait_for(new_address, 2)[-1]
    assert reminder["Subject"].startswith("【再通知】")
    later = _today() + dt.timedelta(days=10)
    page.fill("#new-deadline", later.isoformat())
    page.click("#extend-deadline")
    expect(page.locator("#deadline")).to_have_text(later.isoformat())
    extended = site.inbox.wait_for(new_address, 3)[-1]
    assert f"{later:%Y年%m月%d日}(日本時間)" in body_of(extended)
    site.shot(page, f"{size}-after-recovery")
    context.clear_cookies()

    # The old link is dead; the new person signs with the new code, then the others.
    page.goto(old_url)
    expect(page.locator("body")).to_contain_text("新しいURL")
    for url, code in ((new_url, "5678"),):
        _code(page, url, code)
        page.wait_for_url("**/documents")
        page.click("#complete-button")
        page.click("#confirm-complete")
        expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)
    context.clear_cookies()
    (contractor,) = site.inbox.wait_for(body["parties"][1]["email"])
    _code(page, link_in(contractor), "2468")
    page.wait_for_url("**/documents")
    page.click(".check-item >> nth=0")
    page.get_by_label("現場代理人氏名", exact=True).fill("鈴木 次郎")
    page.click(".check-item >> nth=1")
    page.get_by_label("記入日", exact=True).fill("令和7年10月1日")
    page.click("#complete-button")
    page.click("#confirm-complete")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)
    context.clear_cookies()
    (official,) = site.inbox.wait_for(body["parties"][2]["email"])
    _code(page, link_in(official), "3333")
    page.wait_for_url("**/documents")
    page.click("#complete-button")
    page.click("#confirm-complete")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)
    assert site.api.get(f"/api/v1/envelopes/{envelope['id']}").json()["state"] == "completed"
    with site.gateway.sessions() as session:
        actions = {
            (e.action, e.actor) for e in list_events(session=session, envelope_id=envelope["id"])
        }
    for action in ("party.unlocked", "party.access_code_changed", "party.corrected",
                   "party.reminded", "envelope.deadline_extended"):  # fmt: skip
        assert (action, clerk) in actions, action


def test_cancel_asks_for_confirmation_and_a_reason(site: Site, context: BrowserContext) -> None:
    clerk = "clerk-cancel@city.example.jp"
    _clerk(site, clerk)
    envelope = site.api.post(
        "/api/v1/envelopes", json=envelope_request(send=True, sender_email=clerk)
    ).json()
    page = context.new_page()
    _login(page, site, clerk, f"/admin/envelopes/{envelope['id']}")
    page.click("#cancel")  # no reason: the browser refuses to submit
    expect(page.locator("#state")).to_have_text("署名依頼中")
    page.fill("#cancel-reason", "予定価格の誤り")
    page.once("dialog", lambda dialog: dialog.dismiss())  # 「キャンセル」 in the confirmation
    page.click("#cancel")
    expect(page.locator("#state")).to_have_text("署名依頼中")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    expect(page.locator("#state")).to_have_text("取消")
    refused = site.api.post(f"/api/v1/envelopes/{envelope['id']}/cancel")
    assert refused.status_code >= 400  # already cancelled
