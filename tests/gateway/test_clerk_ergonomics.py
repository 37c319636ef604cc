"""What a clerk's daily job needs, through the surfaces the clerk uses (API, staff pages, CLI,
mails): JST-dated management numbers, search by 管理番号, deadlines and contacts in mails."""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import io
import mailbox
import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

import core.envelopes.approvals
import core.envelopes.creation
import core.envelopes.lifecycle
import core.envelopes.sealing
import core.signing.signatures
from core.envelopes.approvals import approve, record_view
from core.envelopes.lifecycle import decline, get_envelope
from core.model import VisibilityScope
from core.staff.api_clients import update_api_client
from gateway.app import build_mail_handler
from gateway.mailer import MailDispatcher
from tests.e2e.conftest import body_of, link_in
from tests.fixtures.gateway import envelope_request, run_keiyaku
from tests.fixtures.staff import make_envelope
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_pages import _csrf, _login, _staff
from tests.gateway.test_records_search import _NUMBER, CLERK


def test_the_api_dates_a_management_number_made_at_0030_jst_in_jst(
    live_gateway: Callable[..., LiveGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    live = live_gateway()
    half_past_midnight_jst = dt.datetime(2026, 3, 31, 15, 30, tzinfo=dt.UTC)
    monkeypatch.setattr(core.envelopes.approvals, "utcnow", lambda: half_past_midnight_jst)
    monkeypatch.setattr(core.envelopes.creation, "utcnow", lambda: half_past_midnight_jst)
    monkeypatch.setattr(core.envelopes.lifecycle, "utcnow", lambda: half_past_midnight_jst)
    monkeypatch.setattr(core.envelopes.sealing, "utcnow", lambda: half_past_midnight_jst)
    monkeypatch.setattr(core.signing.signatures, "utcnow", lambda: half_past_midnight_jst)
    with live.client(live.token("e-bid")) as client:
        created = client.post("/api/v1/envelopes", json=envelope_request())
        assert created.status_code == 201, created.text
        assert created.json()["management_number"].startswith("KG-20260401-")


def test_a_clerk_finds_an_envelope_by_its_management_number_on_page_api_and_cli(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, CLERK, "契約課")
    with live.gateway.sessions() as session:
        for number, department in (
            ("KG-20260401-AB12CD34", "契約課"),
            ("KG-20260402-0000FFFF", "契約課"),
            ("R20251001-R7-001", "契約課"),
            ("KG-20260401-99999999", "土木課"),  # matches, but not the clerk's department
        ):
            make_envelope(session, department=department).management_number = number
        session.commit()
    token = live.token("tax-export", ["envelopes:read"])
    with live.gateway.sessions() as session:
        update_api_client(session=session, name="tax-export", staff_email=CLERK)
        session.commit()
    typed = "ｋｇ－２０２６０４０１"  # as typed from a paper form on a Japanese keyboard

    with live.client() as page_client:
        assert _login(page_client, CLERK).status_code == 303
        form = page_client.get("/admin/envelopes").text
        assert '<label>管理番号<input type="text" name="management_number"' in form
        page = page_client.get("/admin/envelopes", params={"management_number": typed})
        assert set(_NUMBER.findall(page.text)) == {"KG-20260401-AB12CD34"}
        assert f'value="{typed}"' in page.text  # the condition stays in the form
    with live.client(token) as api:
        answer = api.get("/api/v1/envelopes", params={"management_number": typed})
        assert answer.status_code == 200, answer.text
        assert [i["management_number"] for i in answer.json()["items"]] == ["KG-20260401-AB12CD34"]
    out = run_keiyaku(live.config, "search", "--management-number", "r7-001", "--as", CLERK,
               "--csv", "-")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout.lstrip("\ufeff"))))
    assert [r[0] for r in rows[1:]] == ["R20251001-R7-001"]


CONTACT = (
    "  contact:\n"
    "    department: 総務部 契約課\n"
    "    phone: 011-000-0000（内線 123）\n"
    "    address: 〒060-0000 開発市中央1-1-1 本庁舎3階\n"
    "    email: keiyaku-madoguchi@city.example.jp\n"
)
MAILDIR = "  maildir: outgoing\n  sender: keiyaku@city.example.jp\n"


def _mails(live: LiveGateway, tmp_path: Path) -> list[EmailMessage]:
    """Send what waits in the outbox; every mail in the maildir so far (Date has one-second
    resolution, so callers pick mails by what they are, never by position)."""
    dispatcher = MailDispatcher(live.gateway.sessions, build_mail_handler(live.gateway), 1)
    while dispatcher.run_once().delivered:
        pass
    box = mailbox.Maildir(str(tmp_path / "outgoing"), create=False)
    messages = [email.message_from_bytes(m.as_bytes(), policy=email.policy.default) for m in box]
    return messages


def _contact_block_in(body: str) -> None:
    assert "お問い合わせ先: 開発市 総務部 契約課\n電話: 011-000-0000（内線 123）\n" in body
    assert "所在地: 〒060-0000 開発市中央1-1-1 本庁舎3階\n" in body
    assert "メール: keiyaku-madoguchi@city.example.jp(このメールに返信すると届きます)" in body
    assert "返信されても対応できません" not in body


def test_mails_carry_the_contact_reply_to_deadline_and_staff_links(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = live_gateway(buyer=CONTACT, mail=MAILDIR)
    _staff(live, "admin@city.example.jp", "総務課", roles="admin", scope=VisibilityScope.ALL)
    with live.client(live.token("e-bid")) as api:
        locked = api.post("/api/v1/envelopes", json=envelope_request(send=True)).json()
        (first,) = _mails(live, tmp_path)
        declined = api.post("/api/v1/envelopes", json=envelope_request(send=True)).json()
    body = body_of(first)
    assert "署名期限: 2025年10月08日まで(日本時間)\n" in body  # the signing deadline, JST
    assert re.search(r"URLの有効期限: \d{4}年\d\d月\d\d日 \d\d:\d\d\(日本時間\)", body)
    _contact_block_in(body)
    assert first["Reply-To"].addresses[0].addr_spec == "keiyaku-madoguchi@city.example.jp"

    # The approver's link locked by five wrong codes: the page says whom to call ...
    with httpx.Client(base_url=live.url) as browser:
        link = link_in(first).replace("http://testserver", "")
        for attempt in range(5):
            token = _csrf(browser.get(link).text)
            browser.post(link, data={"access_code": f"99{attempt:02d}", "csrf_token": token})
        page = browser.get(link)
        assert page.status_code >= 400 and 'id="contact"' in page.text
        assert "011-000-0000（内線 123）" in page.text and "本庁舎3階" in page.text
    # ... and the sender's lock notice links to the envelope's staff page.
    with live.gateway.sessions() as session:
        envelope = get_envelope(session=session, envelope_id=declined["id"])
        party = envelope.parties[0]
        record_view(session=session, envelope_id=envelope.id, party_id=party.id, ip=None)
        decline(
            session=session,
            runtime=live.gateway.runtime,
            envelope_id=envelope.id,
            party_id=party.id,
            reason="金額が見積と異なります",
        )
        session.commit()
    later = [m for m in _mails(live, tmp_path) if m["Message-ID"] != first["Message-ID"]]
    notices = {m["Subject"].split("】")[0]: m for m in later}
    lock_body = body_of(notices["【ロック"])
    decline_body = body_of(notices["【却下"])
    assert f"http://testserver/admin/envelopes/{locked['id']}\n" in lock_body
    assert f"http://testserver/admin/envelopes/{declined['id']}\n" in decline_body
    for body in (lock_body, decline_body):
        _contact_block_in(body)
    # The link opens that envelope for a staff member who logs in.
    with live.client() as staff_browser:
        assert _login(staff_browser, "admin@city.example.jp").status_code == 303
        opened = staff_browser.get(f"/admin/envelopes/{declined['id']}")
        assert opened.status_code == 200 and declined["management_number"] in opened.text


def test_without_a_contact_mailbox_replies_go_to_the_sender_and_the_mail_says_so(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = live_gateway(mail=MAILDIR)
    with live.client(live.token("e-bid")) as api:
        api.post("/api/v1/envelopes", json=envelope_request(send=True))
    (mail,) = _mails(live, tmp_path)
    assert mail["Reply-To"].addresses[0].addr_spec == "keiyaku@city.example.jp"
    body = body_of(mail)
    assert "お問い合わせ先: 開発市 契約課\n" in body and "電話:" not in body
    assert "このメールに返信されても対応できません。お問い合わせは上記までお願いします。" in body


_ROW = re.compile(r"<tr><td><a href=\"/admin/envelopes/([0-9a-f]{32})\">.*?</tr>", re.S)


def _cell(row: str, css: str) -> str:
    match = re.search(rf'<td class="{css}">(.*?)</td>', row, re.S)
    assert match, row
    return match.group(1)


def test_the_list_shows_whom_each_envelope_waits_for_and_its_deadline_in_japanese(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, CLERK, "契約課", roles="sender,signer")
    token = live.token("e-bid")
    with live.gateway.sessions() as session:
        update_api_client(session=session, name="e-bid", department="契約課")
        session.commit()
    with live.client(token) as api:
        sent = api.post("/api/v1/envelopes", json=envelope_request(send=True)).json()
        draft = api.post("/api/v1/envelopes", json=envelope_request()).json()

    def rows() -> dict[str, str]:
        with live.client() as page_client:
            assert _login(page_client, CLERK).status_code == 303
            listed = page_client.get("/admin/envelopes")
        assert "<th>対応待ち</th><th>締切日</th>" in listed.text
        return {m.group(1): m.group(0) for m in _ROW.finditer(listed.text)}

    listed = rows()
    assert _cell(listed[sent["id"]], "waiting-on") == "1. 開発市 契約課 契約 花子（承認者）"
    assert _cell(listed[sent["id"]], "deadline") == "2025-10-08"
    assert _cell(listed[draft["id"]], "waiting-on") == ""  # a draft waits for its sender
    # The approver acts: the envelope now waits for the contractor.
    with live.gateway.sessions() as session:
        first = get_envelope(session=session, envelope_id=sent["id"]).parties[0]
        record_view(session=session, envelope_id=sent["id"], party_id=first.id)
        session.commit()
        approve(
            session=session,
            runtime=live.gateway.runtime,
            envelope_id=sent["id"],
            party_id=first.id,
            values={},
            auth_method="email+access_code",
        )
        session.commit()
    assert _cell(rows()[sent["id"]], "waiting-on") == "2. 株式会社髙橋建設 髙橋 一郎（署名者）"

    with live.client() as page_client:
        assert _login(page_client, CLERK).status_code == 303
        detail = page_client.get(f"/admin/envelopes/{sent['id']}").text
        staff_page = page_client.get("/admin/staff")
    roles = re.findall(r'<td class="party-role">([^<]*)</td>', detail)
    assert roles == ["承認者", "署名者", "署名者"]
    history = re.findall(r'<td title="([a-z_.]+)">([^<]*)</td>', detail)
    assert {code for code, _ in history} >= {"envelope.created", "envelope.sent", "party.approved"}
    assert all(label and label != code for code, label in history), history
    assert staff_page.status_code == 403  # only admins manage staff
    _staff(live, "admin@city.example.jp", "総務課", roles="admin", scope=VisibilityScope.ALL)
    with live.client() as admin:
        assert _login(admin, "admin@city.example.jp").status_code == 303
        members = admin.get("/admin/staff").text
    assert re.search(
        rf"<td>{CLERK}</td><td class=\"roles\" title=\"[a-z,]+\">送信者・署名者</td><td>所属</td>",
        members,
    )
    assert '<td class="roles" title="admin">管理者</td><td>全体</td>' in members
