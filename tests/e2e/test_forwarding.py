"""Forwarding keeps the evidence, and the completion certificate tells the truth, in headless
Chromium: the contractor's signer forwards a construction contract to a colleague with a reason
and a new access code; the colleague signs with that code (the forwarder's does not open it);
the sender is told by mail with the staff page's address; the staff page, the audit trail and
the certificate name both people and the reason; the certificate lists each approval's method,
the consent and SHA-256s that match the downloaded documents, and is itself signed (pdfsig,
``keiyaku verify``)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, expect

from core.model import VisibilityScope
from core.records.audit import list_events
from core.staff.accounts import PasswordPolicy, add_staff, set_password
from tests.e2e.conftest import Site, body_of, link_in, wait_for_visible_images
from tests.fixtures.gateway import SECRETS, envelope_request

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Kei-yaku-2026!"
NUMBER = "7010001008844"
REASON = "社長出張中のため、副社長が代わって署名します"
MEASURES = "電子契約サービスによる契約書面の交付(立会人型電子署名・タイムスタンプ)"


def _clerk(site: Site, email: str) -> None:
    with site.gateway.sessions() as session:
        staff = add_staff(session=session, name="契約 係員", email=email, roles="sender",
                          scope=VisibilityScope.ALL, department="契約課", actor="t")  # fmt: skip
        set_password(session=session, staff=staff, password=PASSWORD, policy=PasswordPolicy(),
                     actor="t")  # fmt: skip
        session.commit()


def _open(page: Page, url: str, code: str) -> None:
    page.goto(url)
    page.fill("#access_code", code)
    page.click("#next")
    page.wait_for_url("**/documents")
    wait_for_visible_images(page)


def _complete(page: Page, values: dict[str, str] | None = None) -> None:
    for label, value in (values or {}).items():
        page.click(f".check-item:has-text('{label}')")
        page.get_by_label(label, exact=True).fill(value)
    page.click("#complete-button")
    page.click("#confirm-complete")
    page.wait_for_url("**/done")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)


def _text_of(pdf: Path) -> str:
    out = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True)
    return "".join(out.stdout.split())  # table cells wrap: compare without white space


def test_a_forwarded_construction_contract_keeps_the_evidence_to_the_certificate(
    site: Site, context: BrowserContext
) -> None:
    clerk = "clerk-fwd@city.example.jp"
    _clerk(site, clerk)
    consent = site.api.post(
        "/api/v1/consents",
        json={
            "contractor_name": "株式会社髙橋建設",
            "contractor": {"corporate_number": NUMBER},
            "signer_name": "髙橋 一郎",
            "signer_email": "ichiro-fwd2@example.co.jp",
            "consented_on": "2026-04-01",
            "measures": MEASURES,
        },
    )
    assert consent.status_code == 200, consent.text
    emails = (
        "kacho-fwd2@city.example.jp",
        "ichiro-fwd2@example.co.jp",
        "shicho-fwd2@city.example.jp",
    )
    body = envelope_request(emails=emails, send=True, sender_email=clerk)
    body |= {"contract_type": "construction", "contractor": {"corporate_number": NUMBER}}
    created = site.api.post("/api/v1/envelopes", json=body)
    assert created.status_code == 201, created.text
    envelope = created.json()
    page = context.new_page()

    # 1. The buyer's internal approver.
    (mail,) = site.inbox.wait_for(emails[0])
    _open(page, link_in(mail), "1111")
    _complete(page)

    # 2. The contractor's signer forwards, with a reason and the colleague's own code.
    (mail,) = site.inbox.wait_for(emails[1])
    old_url = link_in(mail)
    _open(page, old_url, "2468")
    page.click("#forward-button")
    page.fill("#forward-name", "髙橋 副社長")
    page.fill("#forward-email", "fukushacho-fwd2@example.co.jp")
    page.fill("#forward-code", "8642")
    page.fill("#forward-reason", REASON)
    site.shot(page, "fwd2-dialog")
    page.click("#forward-submit")
    expect(page.locator("h1")).to_have_text("署名依頼を転送しました")

    # The sender is told: who forwarded to whom, why, and the envelope's staff page.
    (notice,) = site.inbox.wait_for(clerk)
    assert notice["Subject"] == "【転送】市道１号線舗装補修工事の署名依頼が転送されました"
    text = body_of(notice)
    assert "髙橋 一郎 (ichiro-fwd2@example.co.jp)" in text
    assert "髙橋 副社長 (fukushacho-fwd2@example.co.jp)" in text and REASON in text
    assert f"{site.url}/admin/envelopes/{envelope['id']}" in text
    assert re.search(r"転送日時: \d{4}年\d{2}月\d{2}日 \d{2}:\d{2} \(日本時間\)", text), text
    assert "8642" not in text and "2468" not in text  # never a code

    # The colleague signs with the new code; the forwarder's code does not open it.
    (forwarded,) = site.inbox.wait_for("fukushacho-fwd2@example.co.jp")
    assert "8642" not in body_of(forwarded)
    new_url = link_in(forwarded)
    page.goto(new_url)
    page.fill("#access_code", "2468")
    page.click("#next")
    expect(page.locator("#error")).to_contain_text("アクセスコードが正しくありません")
    _open(page, new_url, "8642")
    _complete(page, {"現場代理人氏名": "鈴木 次郎", "記入日": "令和8年4月10日"})

    # 3. The buyer's official; the envelope completes.
    (mail,) = site.inbox.wait_for(emails[2])
    _open(page, link_in(mail), "3333")
    _complete(page)
    status = site.api.get(f"/api/v1/envelopes/{envelope['id']}").json()
    assert status["state"] == "completed"
    context.clear_cookies()

    # The staff page shows the forward with both people and the reason, and the history.
    page.goto(f"{site.url}/admin/envelopes/{envelope['id']}")
    page.fill("#email", clerk)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(f"**/admin/envelopes/{envelope['id']}")
    forwards = page.locator("#forwards tbody tr")
    expect(forwards).to_have_count(1)
    expect(forwards).to_contain_text("髙橋 一郎 (ichiro-fwd2@example.co.jp)")
    expect(forwards).to_contain_text("髙橋 副社長 (fukushacho-fwd2@example.co.jp)")
    expect(forwards).to_contain_text(REASON)
    expect(page.locator("#history")).to_contain_text("転送")
    site.shot(page, "fwd2-staff-page")
    with page.expect_download() as info:
        page.click("#certificate")
    certificate = site.shots.parent / "fwd2-certificate.pdf"
    info.value.save_as(str(certificate))

    # The audit trail keeps the original addressee, the reason and the time.
    with site.gateway.sessions() as session:
        events = list_events(session=session, envelope_id=envelope["id"])
    (forward,) = [e for e in events if e.action == "party.forwarded"]
    assert forward.detail["from_name"] == "髙橋 一郎" and forward.detail["reason"] == REASON
    assert forward.detail["to_email"] == "fukushacho-fwd2@example.co.jp" and forward.at

    # The certificate: both people and the reason, each approval's method, the creation's
    # real surface, the consent, and the SHA-256 of each downloaded document.
    text = _text_of(certificate)
    for needle in (
        "髙橋一郎", "ichiro-fwd2@example.co.jp", "髙橋副社長", "fukushacho-fwd2@example.co.jp",
        "".join(REASON.split()), "転送の記録", "API連携(クライアント:e-bid)",
        "承諾日:2026年04月01日", "".join(MEASURES.split()), "建設工事",
    ):  # fmt: skip
        assert needle in text, (needle, text)
    assert text.count("メール認証＋アクセスコード") >= 4  # three approvals and the forward
    assert "全2文書の電子署名6件・ドキュメントタイムスタンプ2件を検証し、すべて有効" in text
    for position in (0, 1):
        answer = site.api.get(f"/api/v1/envelopes/{envelope['id']}/documents/{position}")
        assert answer.status_code == 200
        assert hashlib.sha256(answer.content).hexdigest() in text

    # The certificate itself is signed with the gateway key and timestamped.
    pdfsig = subprocess.run(["pdfsig", str(certificate)], capture_output=True, text=True)
    assert "Signature Field Name: kg_certificate" in pdfsig.stdout, pdfsig.stdout
    assert "Signature is Valid." in pdfsig.stdout, pdfsig.stdout
    verify = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(site.config), "verify",
         str(certificate)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **SECRETS}, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "電子契約締結証明書の発行" in verify.stdout
