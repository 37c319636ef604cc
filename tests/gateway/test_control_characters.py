"""CR/LF/NUL and other control characters at every entry of the served app (SQLite and
PostgreSQL): one-line values are normalised, the rest refused with ``text.control_character``
(422, Japanese message), never a 500; mails still leave; downloads of oddly named documents
work; a refused or failed create leaves no blob behind."""

from __future__ import annotations

import email
import email.policy
import json
import mailbox
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.model import Envelope
from core.staff.accounts import PasswordPolicy, add_staff, set_password
from core.states import PartyRole
from gateway.app import build_mail_handler
from gateway.downloads import content_disposition
from gateway.mailer import MailDispatcher
from tests.fixtures.gateway import complete_by_services, envelope_request
from tests.fixtures.pdfs import make_pdf
from tests.gateway.conftest import LiveGateway

PASSWORD = "Kei-yaku-2026!"
MAIL = "  maildir: outgoing\n  sender: keiyaku@city.example.jp\n"


def _blobs(live: LiveGateway) -> int:
    root = live.gateway.runtime.blobs.root
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _refused(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == "text.control_character", error
    assert "制御文字" in error["message_ja"]
    return error


def _with(body: dict[str, Any], path: str, value: str) -> dict[str, Any]:
    """``body`` (deep-copied) with the value at a dotted ``path`` replaced."""
    body = json.loads(json.dumps(body))
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return body


TEXT_FIELDS = [
    "title",
    "creator",
    "management_number",
    "metadata.counterparty",
    "parties.0.name",
    "parties.1.company",
    "documents.0.name",
    "fields.0.label",
]


@pytest.mark.parametrize("path", TEXT_FIELDS)
def test_nul_in_any_text_field_of_a_json_create_is_refused_and_stores_nothing(
    live_gateway: Callable[..., LiveGateway], path: str
) -> None:
    live = live_gateway()
    request = envelope_request()
    with live.client(live.token("e-bid")) as api:
        before = _blobs(live)
        error = _refused(api.post("/api/v1/envelopes", json=_with(request, path, "工事\x00名")))
        assert error["details"]["character"] == "U+0000"
        # ESC, DEL and C1 controls are refused too.
        for bad in ("\x1b[31m", "\x7f", "\x9b"):
            _refused(api.post("/api/v1/envelopes", json=_with(request, path, f"工事{bad}名")))
        if path == "parties.0.name":
            address = _with(request, "parties.0.email", "ka\x00cho@city.example.jp")
            _refused(api.post("/api/v1/envelopes", json=address))
        assert _blobs(live) == before  # nothing of a refused request was stored
        assert api.get("/api/v1/envelopes").json()["total"] == 0


def test_multipart_json_part_with_nul(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    body = envelope_request()
    body.pop("documents")
    with live.client(live.token("e-bid")) as api:
        before = _blobs(live)
        nul_title = _with(body, "title", "件名\x00")
        refused = api.post(
            "/api/v1/envelopes",
            data={"envelope": json.dumps(nul_title)},
            files=[
                ("documents", ("契約書.pdf", make_pdf(pages=2), "application/pdf")),
                ("documents", ("請書.pdf", make_pdf(pages=1), "application/pdf")),
            ],
        )
        _refused(refused)
        assert _blobs(live) == before


def test_line_breaks_are_normalised_and_mail_and_downloads_still_work(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = live_gateway(mail=MAIL)
    request = envelope_request(send=True)
    request["title"] = "市道１号線\r\n舗装補修工事\n（第２工区）"
    request["parties"][0]["name"] = "契約\r\n花子"
    request["documents"][0]["name"] = '工事"請負"\r\n契約書\\.pdf'
    with live.client(live.token("e-bid")) as api:
        created = api.post("/api/v1/envelopes", json=request)
        assert created.status_code == 201, created.text
        envelope = created.json()
        assert envelope["title"] == "市道１号線 舗装補修工事 （第２工区）"
        assert envelope["parties"][0]["name"] == "契約 花子"
        assert envelope["documents"][0]["name"] == '工事"請負" 契約書\\.pdf'

        # The request mail leaves, with the title on one line in an encoded header.
        dispatcher = MailDispatcher(live.gateway.sessions, build_mail_handler(live.gateway), 1)
        assert len(dispatcher.run_once().delivered) == 1
        box = mailbox.Maildir(str(tmp_path / "outgoing"), create=False)
        (raw,) = [m.as_bytes() for m in box]
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert "市道１号線 舗装補修工事 （第２工区）" in str(message["Subject"])
        assert message["To"].addresses[0].display_name == "契約 花子"

        complete_by_services(live.gateway, envelope["id"])
        pdf = api.get(f"/api/v1/envelopes/{envelope['id']}/documents/0")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        disposition = pdf.headers["content-disposition"]
        assert "\r" not in disposition and "\n" not in disposition
        assert disposition.startswith('attachment; filename="') and disposition.isascii()
        assert re.search(r"filename\*=UTF-8''[%A-Za-z0-9._~-]+$", disposition)


def test_content_disposition_of_any_stored_name() -> None:
    """Names stored before entries normalised them still make a legal header."""
    for name in ('a"b\r\nc.pdf', "契約書.pdf", "\\..\\x.pdf", "\x00", ""):
        value = content_disposition(name)
        assert value.isascii() and "\r" not in value and "\n" not in value
        fallback = re.match(r'attachment; filename="([^"\\]*)"; filename\*=UTF-8\'\'(\S*)$', value)
        assert fallback, value
    assert content_disposition("契約書.pdf", kind="inline").startswith('inline; filename="')
    assert 'filename="a_b c.pdf"' in content_disposition('a"b\r\nc.pdf')


def _staff(live: LiveGateway) -> None:
    with live.gateway.sessions() as session:
        staff = add_staff(
            session=session,
            name="田中 一郎",
            email="tanaka@city.example.jp",
            roles="sender,admin",
            scope="all",
            department="契約課",
            actor="test",
        )
        set_password(
            session=session, staff=staff, password=PASSWORD, policy=PasswordPolicy(), actor="t"
        )
        session.commit()


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def test_login_search_and_staff_import_with_nul_never_fail(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live)
    with live.client() as browser:
        token = _csrf(browser.get("/admin/login").text)
        for email_address in ("tanaka@city.example.jp\x00", "\x00", "tanaka\r\n@city.example.jp"):
            answer = browser.post(
                "/admin/login",
                data={"email": email_address, "password": PASSWORD, "csrf_token": token},
                follow_redirects=False,
            )
            assert answer.status_code == 401
        login = browser.post(
            "/admin/login",
            data={
                "email": "tanaka@city.example.jp",
                "password": PASSWORD,
                "csrf_token": token,
            },
            follow_redirects=False,
        )
        assert login.status_code == 303
        for params in (
            {"keyword": "工事\x00"},
            {"counterparty": "\x00\r\n"},
            {"department": "\x00"},
        ):
            assert browser.get("/admin/envelopes", params=params).status_code == 200
    csv = (
        "name,department,email,roles,scope\n"
        "佐藤 花子,土木課,sato@city.example.jp,sender,own\n"
        "鈴木\x00次郎,土木課,suzuki@city.example.jp,sender,own\n"
        "高橋 三郎,土木\x00課,takahashi@city.example.jp,sender,own\n"
        "伊藤 四郎,土木課,ito\x00@city.example.jp,sender,own\n"
    ).encode()
    with live.client(live.token("personnel", ["staff:write"])) as api:
        answer = api.post("/api/v1/staff/import", content=csv, headers={"content-type": "text/csv"})
        assert answer.status_code == 422, answer.text
        errors = answer.json()["error"]["details"]["errors"]
        assert [e["line"] for e in errors] == [3, 4, 5]
        applied = api.post(
            "/api/v1/staff/import",
            params={"skip_bad_lines": "true"},
            content=csv,
            headers={"content-type": "text/csv"},
        )
        assert applied.status_code == 200, applied.text


@pytest.mark.postgres
def test_a_create_that_fails_after_storing_removes_its_blobs(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    """PostgreSQL refuses a creator longer than its column at flush, after the documents were
    stored: the create removes them again."""
    live = live_gateway()
    if live.gateway.engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce column lengths")
    before = _blobs(live)
    with live.gateway.sessions() as session, pytest.raises(Exception):
        create_envelope(
            session=session,
            runtime=live.gateway.runtime,
            title="市道１号線舗装補修工事",
            creator="長" * 500,
            documents=[DocumentInput("契約書.pdf", make_pdf(pages=1))],
            parties=[PartyInput(PartyRole.SIGNER, "契約 花子", "kacho@city.example.jp")],
        )
    assert _blobs(live) == before
    with live.gateway.sessions() as session:
        assert session.scalars(select(Envelope)).all() == []
