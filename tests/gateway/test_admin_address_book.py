"""The address book pages over HTTP (SQLite and PostgreSQL): add, change, search, delete, CSV
import (good, a bad line, CP932) and export; CSRF on every post; signers read but do not change."""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import select

from core.model import AddressBookEntry, AuditEvent
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_pages import _csrf, _login, _staff

BOOK = "/admin/address-book"


def _entries(live: LiveGateway) -> dict[str, AddressBookEntry]:
    with live.gateway.sessions() as session:
        return {e.email: e for e in session.scalars(select(AddressBookEntry))}


def test_address_book_pages(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp", "契約課")
    _staff(live, "sato@city.example.jp", "土木課", roles="signer")
    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        page = client.get(BOOK)
        assert page.status_code == 200 and "連絡先はまだ登録されていません" in page.text
        token = _csrf(page.text)
        contact = {
            "company": "株式会社髙橋建設",
            "name": "髙橋 一郎",
            "email": "Ichiro@Takahashi.example.co.jp",
            "department": "工事部",
            "note": "",
        }
        assert client.post(BOOK, data=contact).status_code == 403  # no CSRF token
        added = client.post(BOOK, data={**contact, "csrf_token": token})
        assert added.status_code == 303
        entry = _entries(live)["ichiro@takahashi.example.co.jp"]
        again = client.post(BOOK, data={**contact, "csrf_token": token})
        assert again.status_code == 422 and "登録済み" in again.text
        bad = client.post(BOOK, data={**contact, "email": "ichiro", "csrf_token": token})
        assert bad.status_code == 422 and "メールアドレスの形式が正しくありません" in bad.text
        assert 'value="ichiro"' in bad.text  # what was typed is kept

        form = client.get(BOOK, params={"edit": entry.id}).text
        assert 'value="工事部"' in form and "連絡先の変更" in form
        changed = client.post(
            BOOK, data={**contact, "id": entry.id, "department": "土木部", "csrf_token": token}
        )
        assert changed.status_code == 303
        assert _entries(live)["ichiro@takahashi.example.co.jp"].department == "土木部"

        good = (
            "会社名,氏名,メールアドレス,部署,備考\n"
            "有限会社旭川設備,佐藤 花子,hanako@asahi.example.jp,,電話連絡済み\n"
            "株式会社髙橋建設,髙橋 一郎,ichiro@takahashi.example.co.jp,工事部,\n"
        )
        wrong = good + "札幌舗装,鈴木 次郎,suzuki-at-example,,\n"
        refused = client.post(
            f"{BOOK}/import",
            data={"csrf_token": token},
            files={"file": ("book.csv", wrong.encode("cp932"))},
        )
        assert refused.status_code == 422 and "4 行目" in refused.text
        assert "hanako@asahi.example.jp" not in _entries(live)  # nothing at all imported
        imported = client.post(
            f"{BOOK}/import",
            data={"csrf_token": token},
            files={"file": ("book.csv", good.encode("cp932"))},
        )
        assert imported.status_code == 200
        assert "新規 1 件、更新 1 件" in imported.text
        assert _entries(live)["ichiro@takahashi.example.co.jp"].department == "工事部"
        english = "company,name,email\n札幌舗装,鈴木 次郎,suzuki@sapporo.example.jp\n"
        assert "新規 1 件" in (
            client.post(
                f"{BOOK}/import",
                data={"csrf_token": token},
                files={"file": ("book.csv", english.encode())},
            ).text
        )

        found = client.get(BOOK, params={"q": "旭川"}).text
        listed = re.findall(r"<td>([^<]+@[^<]+)</td>", found)
        assert listed == ["hanako@asahi.example.jp"]

        exported = client.get(f"{BOOK}/export.csv")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        text = exported.content.decode("utf-8-sig")
        assert text.splitlines()[0] == "会社名,氏名,メールアドレス,部署,備考"
        assert "有限会社旭川設備,佐藤 花子,hanako@asahi.example.jp,,電話連絡済み" in text
        round_trip = client.post(
            f"{BOOK}/import",
            data={"csrf_token": token},
            files={"file": ("book.csv", exported.content)},
        )
        assert "変更なし 3 件" in round_trip.text

        gone = client.post(f"{BOOK}/{entry.id}/delete", data={"csrf_token": token})
        assert gone.status_code == 303
        assert "ichiro@takahashi.example.co.jp" not in _entries(live)

    with live.client() as client:  # a signer may look and export, not change
        assert _login(client, "sato@city.example.jp").status_code == 303
        page = client.get(BOOK)
        assert page.status_code == 200 and "hanako@asahi.example.jp" in page.text
        assert 'id="contact-form"' not in page.text
        assert client.get(f"{BOOK}/export.csv").status_code == 200
        token = _csrf(page.text)
        hanako = _entries(live)["hanako@asahi.example.jp"]
        for path, data in (
            (BOOK, {"name": "x", "email": "x@example.jp"}),
            (f"{BOOK}/{hanako.id}/delete", {}),
        ):
            assert client.post(path, data={**data, "csrf_token": token}).status_code == 403
        upload = client.post(
            f"{BOOK}/import",
            data={"csrf_token": token},
            files={"file": ("book.csv", b"company,name,email\nA,B,b@a.example.jp\n")},
        )
        assert upload.status_code == 403
    with live.client() as client:  # not logged in: to the login page
        answer = client.get(f"{BOOK}/export.csv", follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/admin/login")

    with live.gateway.sessions() as session:
        actions = [
            (e.action, e.actor)
            for e in session.scalars(select(AuditEvent).where(AuditEvent.action.like("address%")))
        ]
    for action in ("add", "update", "import", "delete"):
        assert (f"address_book.{action}", "tanaka@city.example.jp") in actions
    assert ("address_book.export", "sato@city.example.jp") in actions


def test_a_long_address_book_comes_a_page_at_a_time_and_the_picker_looks_up(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    _staff(live, "tanaka@city.example.jp", "契約課")
    book = "会社名,氏名,メールアドレス\n" + "".join(
        f"{'札幌舗装' if i % 2 else '旭川設備'}{i:03d},担当 {i:03d},c{i:03d}@example.jp\n"
        for i in range(120)
    )
    with live.client() as client:
        assert _login(client, "tanaka@city.example.jp").status_code == 303
        token = _csrf(client.get(BOOK).text)
        imported = client.post(
            f"{BOOK}/import", data={"csrf_token": token}, files={"file": ("b.csv", book.encode())}
        )
        assert "新規 120 件" in imported.text

        def listed(page: str) -> list[str]:
            return re.findall(r"<td>(c\d+@example\.jp)</td>", page)

        first = client.get(BOOK).text
        assert "登録 120 件（1〜50 件目を表示）" in first and "1 / 3 ページ" in first
        # ordered by company: 旭川設備000, 002, ... then 札幌舗装001, 003, ...
        assert listed(first)[:2] == ["c000@example.jp", "c002@example.jp"]
        last = client.get(BOOK, params={"page": 3}).text
        assert len(listed(last)) == 20 and listed(last)[-1] == "c119@example.jp"
        seen = listed(first) + listed(client.get(BOOK, params={"page": 2}).text) + listed(last)
        assert sorted(seen) == [f"c{i:03d}@example.jp" for i in range(120)]  # each once
        assert client.get(BOOK, params={"page": 0}).status_code == 422

        found = client.get(BOOK, params={"q": "札幌"}).text
        assert "該当 60 件" in found and len(listed(found)) == 50
        assert 'href="/admin/address-book?q=%E6%9C%AD%E5%B9%8C&amp;page=2"' in found
        narrowed = listed(client.get(BOOK, params={"q": "札幌 11"}).text)
        assert narrowed == ["c011@example.jp", "c111@example.jp", "c113@example.jp", "c115@example.jp",
                            "c117@example.jp", "c119@example.jp"]  # fmt: skip

        # what the create-and-send picker asks as the sender types
        looked = client.get(f"{BOOK}/lookup", params={"q": "札幌舗装119"})
        assert looked.status_code == 200 and looked.headers["cache-control"] == "no-store"
        assert looked.json() == [
            {
                "label": "札幌舗装119 担当 119 <c119@example.jp>",
                "company": "札幌舗装119",
                "name": "担当 119",
                "email": "c119@example.jp",
            }
        ]
        assert len(client.get(f"{BOOK}/lookup", params={"q": "担当"}).json()) == 20
        picked = client.get(f"{BOOK}/lookup", params={"q": "札幌舗装119 担当 119 <c119@example"})
        assert [c["email"] for c in picked.json()] == ["c119@example.jp"]  # a label, typed
        # saving a contact shows it, wherever it sorts
        saved = client.post(
            BOOK,
            data={"company": "稚内建設", "name": "最後 の人", "email": "z@wakkanai.example.jp",
                  "csrf_token": token},
        )  # fmt: skip
        assert saved.status_code == 303
        shown = client.get(saved.headers["location"]).text
        assert "該当 1 件" in shown
        assert re.findall(r"<td>([^<]+@[^<]+)</td>", shown) == ["z@wakkanai.example.jp"]
    with live.client() as anonymous:
        assert anonymous.get(f"{BOOK}/lookup", params={"q": "札幌"}).status_code == 401
