"""The signing pages in headless Chromium, with mail through a real SMTP server:
mail → link → access code → fill → complete, for a three-party envelope, and what goes wrong."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import BrowserContext, Page, expect
from sqlalchemy import select, update

from core.envelopes.lifecycle import get_envelope
from core.model import Document, LinkPurpose, SigningLink
from core.records.audit import list_events
from core.states import EnvelopeState
from tests.e2e.conftest import Site, body_of, link_in, wait_for_visible_images
from tests.fixtures.gateway import SECRETS, complete_by_services, envelope_request
from tests.fixtures.pdfs import make_pdf

ROOT = Path(__file__).resolve().parents[2]
SUBJECT = "【開発市】様より市道１号線舗装補修工事への署名依頼が届いています"


def _emails(tag: str) -> tuple[str, str, str]:
    return (
        f"kacho-{tag}@city.example.jp",
        f"ichiro-{tag}@example.co.jp",
        f"shicho-{tag}@city.example.jp",
    )


def _create(site: Site, tag: str, **overrides: object) -> dict:
    body = envelope_request(
        emails=_emails(tag), send=True, sender_email=f"sender-{tag}@city.example.jp", **overrides
    )
    answer = site.api.post("/api/v1/envelopes", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _enter_code(page: Page, site: Site, url: str, code: str, name: str) -> None:
    page.goto(url)
    expect(page.locator("h1")).to_have_text("アクセスコードの入力")
    site.shot(page, f"{name}-code")
    page.fill("#access_code", code)
    page.click("#next")


def _open_documents(page: Page, site: Site, url: str, code: str, name: str) -> None:
    _enter_code(page, site, url, code, name)
    page.wait_for_url("**/documents")
    wait_for_visible_images(page)


def _complete(page: Page, site: Site, name: str, values: dict[str, str] | None = None) -> None:
    for label, value in (values or {}).items():
        page.click(f".check-item:has-text('{label}')")  # switches to the right tab
        page.get_by_label(label, exact=True).fill(value)
    page.click("#complete-button")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    site.shot(page, f"{name}-confirm")
    page.click("#confirm-complete")
    page.wait_for_url("**/done")
    # The approval is committed at once; the signing worker then signs, and the page (署名処理中,
    # refreshing itself) turns to 完了.
    expect(page.locator("h1")).to_have_text(re.compile("署名処理中|署名手続きが完了しました"))
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)
    site.shot(page, f"{name}-done")


def test_three_parties_sign_through_mail_and_pages(site: Site, context: BrowserContext) -> None:
    envelope = _create(site, "flow")
    emails = _emails("flow")
    page = context.new_page()

    # 1. The buyer's internal approver.
    (mail,) = site.inbox.wait_for(emails[0])
    assert mail["Subject"] == SUBJECT
    assert "2468" not in body_of(mail) and "1111" not in body_of(mail)  # never the code
    _open_documents(page, site, link_in(mail), "1111", "p1")
    expect(page.locator(".tab")).to_have_count(2)
    expect(page.locator(".envelope-head h1")).to_have_text("市道１号線舗装補修工事")
    site.shot(page, "p1-documents")
    page.click(".tab >> nth=1")
    expect(page.locator("#doc-1")).to_be_visible()
    expect(page.locator("#doc-0")).to_be_hidden()
    _complete(page, site, "p1")

    # 2. The contractor fills the two text boxes, one in each document.
    (mail,) = site.inbox.wait_for(emails[1])
    assert mail["Subject"] == SUBJECT
    assert "前の署名者の手続きが完了し" in body_of(mail)
    _open_documents(page, site, link_in(mail), "2468", "p2")
    expect(page.locator(".field-box")).to_have_count(2)
    expect(page.locator("#filled-count")).to_have_text("0")
    page.click("#complete-button")  # required boxes are empty: no confirmation yet
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    site.shot(page, "p2-documents")
    _complete(page, site, "p2", {"現場代理人氏名": "鈴木 次郎", "記入日": "令和7年10月1日"})

    # 3. The buyer's official signs last; the envelope is sealed.
    (mail,) = site.inbox.wait_for(emails[2])
    _open_documents(page, site, link_in(mail), "3333", "p3")
    _complete(page, site, "p3")
    # completed: the signed documents and the completion certificate
    expect(page.locator(".downloads li")).to_have_count(3)

    status = site.api.get(f"/api/v1/envelopes/{envelope['id']}").json()
    assert status["state"] == "completed"
    assert [p["state"] for p in status["parties"]] == ["completed"] * 3

    # 電子署名完了のお知らせ to every party and the sender, PDFs attached, link for 14 days.
    for address in (*emails, "sender-flow@city.example.jp"):
        completion = [m for m in site.inbox.wait_for(address, 2 if address in emails else 1)]
        done = [m for m in completion if m["Subject"] == "電子署名完了のお知らせ"]
        assert len(done) == 1, [m["Subject"] for m in completion]
    (done,) = [m for m in site.inbox.to(emails[1]) if m["Subject"] == "電子署名完了のお知らせ"]
    attached = [part.get_filename() for part in done.iter_attachments()]
    assert attached == ["工事請負契約書.pdf", "請書.pdf"]
    assert "ダウンロード有効期間: 14日間" in body_of(done)
    page.goto(link_in(done))
    expect(page.locator("h1")).to_have_text("全ての手続きが完了しました")
    site.shot(page, "download")
    with page.expect_download() as info:
        page.click(".downloads li >> nth=0 >> a")
    signed = site.shots.parent / "signed.pdf"
    info.value.save_as(str(signed))

    # The signed PDF passes `keiyaku verify` and poppler's pdfsig.
    env = {**os.environ, **SECRETS}
    verify = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(site.config), "verify", str(signed)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "髙橋 一郎 様 ichiro-flow@example.co.jp が" in verify.stdout, verify.stdout
    pdfsig = subprocess.run(["pdfsig", str(signed)], capture_output=True, text=True)
    # Three approvals valid; poppler cannot check the fourth, the document timestamp.
    assert pdfsig.stdout.count("Signature #") == 4, pdfsig.stdout
    assert pdfsig.stdout.count("Signature is Valid.") == 3, pdfsig.stdout
    assert "Signature Field Name: kg_doc_timestamp" in pdfsig.stdout

    with site.gateway.sessions() as session:
        actions = [e.action for e in list_events(session=session, envelope_id=envelope["id"])]
        ips = {e.ip for e in list_events(session=session, envelope_id=envelope["id"]) if e.ip}
    for action in ("party.authenticated", "documents.viewed", "party.approved", "party.signed"):
        assert actions.count(action) >= 3, (action, actions)
    assert "download.viewed" in actions and "document.downloaded" in actions
    assert ips == {"127.0.0.1"}


def test_wrong_codes_lock_the_link_and_tell_the_sender(site: Site, context: BrowserContext) -> None:
    envelope = _create(site, "lock")
    kacho = _emails("lock")[0]
    (mail,) = site.inbox.wait_for(kacho)
    url = link_in(mail)
    page = context.new_page()
    for attempt in range(1, 5):
        _enter_code(page, site, url, "9999", f"wrong{attempt}")
        expect(page.locator("#error")).to_contain_text(f"あと{5 - attempt}回誤ると")
    site.shot(page, "wrong-code")
    _enter_code(page, site, url, "9999", "wrong5")
    expect(page.locator("#message")).to_contain_text("ロックされました")
    site.shot(page, "locked")
    page.goto(url)  # even the right code no longer opens it
    expect(page.locator("#message")).to_contain_text("ロックされました")

    (notice,) = site.inbox.wait_for("sender-lock@city.example.jp")
    assert notice["Subject"] == "【ロック】市道１号線舗装補修工事の署名用URLがロックされました"
    assert kacho in body_of(notice)

    # The sender resends: a new link, the code works there.
    resent = site.api.post(f"/api/v1/envelopes/{envelope['id']}/parties/1/resend")
    assert resent.status_code == 200
    mails = site.inbox.wait_for(kacho, 2)
    new_url = link_in(mails[-1])
    assert new_url != url
    _open_documents(page, site, new_url, "1111", "after-resend")
    with site.gateway.sessions() as session:
        actions = [e.action for e in list_events(session=session, envelope_id=envelope["id"])]
    assert actions.count("party.code_failed") == 5 and actions.count("party.locked") == 1


def test_decline_with_a_reason_reaches_the_sender(site: Site, context: BrowserContext) -> None:
    envelope = _create(site, "decline")
    (mail,) = site.inbox.wait_for(_emails("decline")[0])
    page = context.new_page()
    _open_documents(page, site, link_in(mail), "1111", "decline")
    page.click("#decline-button")
    expect(page.locator("#decline-dialog")).to_be_visible()
    page.fill("#decline-reason", "工期の記載に誤りがあります。修正をお願いします。")
    site.shot(page, "decline-dialog")
    page.click("#decline-submit")
    page.wait_for_url("**/done")
    expect(page.locator("h1")).to_have_text("署名依頼を却下しました")
    site.shot(page, "declined")

    (notice,) = site.inbox.wait_for("sender-decline@city.example.jp")
    assert notice["Subject"] == "【却下】市道１号線舗装補修工事の署名依頼が却下されました"
    assert "工期の記載に誤りがあります。修正をお願いします。" in body_of(notice)
    status = site.api.get(f"/api/v1/envelopes/{envelope['id']}").json()
    assert status["state"] == "declined"
    assert (
        status["parties"][0]["decline_reason"] == "工期の記載に誤りがあります。修正をお願いします。"
    )


def test_forward_gives_the_new_person_their_own_link(site: Site, context: BrowserContext) -> None:
    envelope = _create(site, "fwd")
    (mail,) = site.inbox.wait_for(_emails("fwd")[0])
    old_url = link_in(mail)
    page = context.new_page()
    _open_documents(page, site, old_url, "1111", "forward")
    page.click("#forward-button")
    page.fill("#forward-name", "代理 次郎")
    page.fill("#forward-email", "dairi-fwd@city.example.jp")
    page.fill("#forward-code", "7531")
    page.fill("#forward-reason", "課長不在のため代理で承認します")
    site.shot(page, "forward-dialog")
    page.click("#forward-submit")
    expect(page.locator("h1")).to_have_text("署名依頼を転送しました")
    site.shot(page, "forwarded")

    page.goto(old_url)  # the original link stops working at once
    expect(page.locator("#message")).to_contain_text("転送されたため")
    site.shot(page, "old-link-after-forward")

    (forwarded,) = site.inbox.wait_for("dairi-fwd@city.example.jp")
    assert forwarded["Subject"] == SUBJECT
    assert "契約 花子 様から開発市 様の署名依頼が転送されました" in body_of(forwarded)
    _open_documents(page, site, link_in(forwarded), "7531", "forwardee")
    _complete(page, site, "forwardee")
    status = site.api.get(f"/api/v1/envelopes/{envelope['id']}").json()
    assert status["parties"][0]["name"] == "代理 次郎"
    assert status["parties"][0]["state"] == "completed"
    with site.gateway.sessions() as session:
        events = [e for e in list_events(session=session, envelope_id=envelope["id"])]
    forward = next(e for e in events if e.action == "party.forwarded")
    assert forward.detail["to_email"] == "dairi-fwd@city.example.jp" and forward.ip == "127.0.0.1"


def test_cancel_midway_tells_the_parties_and_closes_the_links(
    site: Site, context: BrowserContext
) -> None:
    envelope = _create(site, "cancel")
    emails = _emails("cancel")
    page = context.new_page()
    (mail,) = site.inbox.wait_for(emails[0])
    _open_documents(page, site, link_in(mail), "1111", "cancel-p1")
    _complete(page, site, "cancel-p1")
    (second,) = site.inbox.wait_for(emails[1])

    cancelled = site.api.post(
        f"/api/v1/envelopes/{envelope['id']}/cancel", json={"reason": "契約金額の誤り"}
    )
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    for address in emails[:2]:
        notice = site.inbox.wait_for(address, 2)[-1]
        assert notice["Subject"] == "【取消】市道１号線舗装補修工事の署名依頼は取り消されました"
        assert "契約金額の誤り" in body_of(notice)
    assert site.inbox.to(emails[2]) == []  # never asked, never told

    fresh = context.browser.new_context(locale="ja-JP")  # type: ignore[union-attr]
    try:
        other = fresh.new_page()
        other.goto(link_in(second))
        expect(other.locator("#message")).to_contain_text("取り消されました")
        site.shot(other, "cancelled-link")
    finally:
        fresh.close()


def test_carrier_mail_gets_no_attachment_and_the_download_link_expires(
    site: Site, context: BrowserContext
) -> None:
    emails = (
        "kacho-mobile@city.example.jp",
        "ichiro@docomo.ne.jp",
        "shicho-mobile@city.example.jp",
    )
    big = [make_pdf(pages=1, size_target=2_600_000, title="工事請負契約書"), make_pdf(pages=1)]
    body = envelope_request(
        emails=emails, pdfs=big, send=True, sender_email="s-mobile@city.example.jp"
    )
    envelope = site.api.post("/api/v1/envelopes", json=body).json()
    complete_by_services(site.gateway, envelope["id"])

    def completion(address: str):
        for _ in range(2):
            found = [m for m in site.inbox.to(address) if m["Subject"] == "電子署名完了のお知らせ"]
            if found:
                return found[0]
            site.inbox.wait_for(address, len(site.inbox.to(address)) + 1)
        raise AssertionError(f"no completion mail to {address}")

    mobile = completion("ichiro@docomo.ne.jp")
    assert list(mobile.iter_attachments()) == []  # over 2 MB for a carrier address
    assert "添付の上限" in body_of(mobile)
    office = completion("kacho-mobile@city.example.jp")
    assert [p.get_filename() for p in office.iter_attachments()] == [
        "工事請負契約書.pdf",
        "請書.pdf",
    ]

    page = context.new_page()
    url = link_in(mobile)
    page.goto(url)
    expect(page.locator("h1")).to_have_text("全ての手続きが完了しました")
    with site.gateway.sessions() as session:
        session.execute(
            update(SigningLink)
            .where(SigningLink.email == "ichiro@docomo.ne.jp")
            .where(SigningLink.purpose == LinkPurpose.DOWNLOAD.value)
            .values(expires_at=SigningLink.created_at)
        )
        session.commit()
    answer = page.goto(url)
    assert answer is not None and answer.status == 410
    expect(page.locator("#message")).to_contain_text("ダウンロードの有効期限が過ぎています")
    site.shot(page, "download-expired")
    assert httpx.get(f"{url}/documents/0").status_code == 410


def _sign_in(site: Site, url: str, code: str) -> httpx.Client:
    """A plain HTTP client signed in to one link (cookies as the browser would keep them)."""
    client = httpx.Client(base_url=site.url, timeout=120, follow_redirects=False)
    page = client.get(url)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    answer = client.post(url, data={"access_code": code, "csrf_token": token.group(1)})
    assert answer.status_code == 303, answer.text
    return client


def test_a_finished_party_link_and_a_double_submit(site: Site, context: BrowserContext) -> None:
    envelope = _create(site, "twice")
    emails = _emails("twice")
    (mail,) = site.inbox.wait_for(emails[0])
    first_url = link_in(mail)
    page = context.new_page()
    _open_documents(page, site, first_url, "1111", "twice-p1")
    _complete(page, site, "twice-p1")

    # The same link in another browser, after its party finished: nothing more to do there.
    fresh = context.browser.new_context(locale="ja-JP")  # type: ignore[union-attr]
    try:
        other = fresh.new_page()
        other.goto(first_url)
        expect(other.locator("#message")).to_contain_text("手続きは完了しています")
        expect(other.locator("#access_code")).to_have_count(0)
        site.shot(other, "finished-link")
    finally:
        fresh.close()

    # The contractor's "署名手続きを完了する" submitted twice at the same moment: one signature.
    (mail,) = site.inbox.wait_for(emails[1])
    url = link_in(mail)
    client = _sign_in(site, url, "2468")
    documents = client.get(f"{url}/documents")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', documents.text)
    fields = re.findall(r'name="(field_[0-9a-f]+)"', documents.text)
    assert csrf is not None and len(fields) == 2
    form = {"csrf_token": csrf.group(1), **{name: "令和7年10月1日" for name in fields}}
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(2)

    def submit() -> None:
        barrier.wait()
        answers.append(client.post(f"{url}/complete", data=form))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    assert sorted(a.status_code for a in answers) == [303, 303]
    assert all(a.headers["location"].endswith("/done") for a in answers)
    deadline = time.monotonic() + 30  # the signing worker applies the one approval
    while True:
        with site.gateway.sessions() as session:
            actions = [e.action for e in list_events(session=session, envelope_id=envelope["id"])]
        if actions.count("party.signed") >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    with site.gateway.sessions() as session:
        docs = session.scalars(select(Document).where(Document.envelope_id == envelope["id"]))
        assert [d.signature_count for d in docs] == [2, 2]
        assert get_envelope(session=session, envelope_id=envelope["id"]).state is EnvelopeState.SENT
    assert actions.count("party.approved") == 2 and actions.count("party.signed") == 2


def test_a_party_link_cannot_open_another_envelope(site: Site) -> None:
    one, two = _create(site, "scope1"), _create(site, "scope2")
    (mail_one,) = site.inbox.wait_for(_emails("scope1")[0])
    (mail_two,) = site.inbox.wait_for(_emails("scope2")[0])
    url_one, url_two = link_in(mail_one), link_in(mail_two)
    client = _sign_in(site, url_one, "1111")
    session_cookie = client.cookies.get("kg_session")
    assert session_cookie
    assert client.get(f"{url_one}/documents").status_code == 200
    assert client.get(f"{url_one}/documents/9/pages/1.png").status_code == 404
    assert client.get(f"{url_one}/documents/0/pages/99.png").status_code == 422
    # Link one's session presented on link two's pages opens nothing there.
    forged = {"Cookie": f"kg_session={session_cookie}"}
    with httpx.Client(base_url=site.url, follow_redirects=False) as stranger:
        assert stranger.get(f"{url_two}/documents", headers=forged).status_code == 303
        assert stranger.get(f"{url_two}/documents/0/pages/1.png", headers=forged).status_code == 403
        assert stranger.get(f"{url_two}/documents/0/download", headers=forged).status_code == 303
        # A guessed token opens nothing either.
        assert stranger.get("/sign/" + "A" * 43).status_code == 404
        # A post without the CSRF token is refused.
        refused = stranger.post(url_two, data={"access_code": "1111"})
        assert refused.status_code == 403
    client.close()
    assert one["id"] != two["id"]
