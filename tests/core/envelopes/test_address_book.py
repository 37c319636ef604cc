"""The address book: add, change, delete, search, roles, and the CSV import (all lines or none,
line numbers, CP932) and export."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.envelopes.address_book import (
    add_contact,
    apply_import,
    check_contact,
    delete_contact,
    export_csv,
    list_contacts,
    plan_import,
    update_contact,
)
from core.errors import StaffError
from core.model import AddressBookEntry, AuditEvent, Staff
from tests.fixtures.staff import make_staff


def _sender(session: Session) -> Staff:
    return make_staff(session, "sender@city.example.jp", roles="sender")


def _actions(session: Session) -> list[str]:
    return list(session.scalars(select(AuditEvent.action)))


def test_add_change_delete_and_search(session: Session) -> None:
    staff = _sender(session)
    takahashi = add_contact(
        session=session,
        staff=staff,
        contact=check_contact(
            company="株式会社髙橋建設", name=" 髙橋 一郎 ", email="Ichiro@Takahashi.example.co.jp"
        ),
    )
    add_contact(
        session=session,
        staff=staff,
        contact=check_contact(
            company="有限会社旭川設備", name="佐藤 花子", email="hanako@asahi.example.jp"
        ),
    )
    assert (takahashi.name, takahashi.email) == ("髙橋 一郎", "ichiro@takahashi.example.co.jp")
    with pytest.raises(StaffError) as taken:
        add_contact(
            session=session,
            staff=staff,
            contact=check_contact(
                company="株式会社髙橋建設", name="別人", email="ichiro@takahashi.example.co.jp"
            ),
        )
    assert taken.value.code == "address_book.exists"
    # The same person for another company is another contact.
    add_contact(
        session=session,
        staff=staff,
        contact=check_contact(
            company="髙橋JV", name="髙橋 一郎", email="ichiro@takahashi.example.co.jp"
        ),
    )
    with pytest.raises(StaffError, match="not an e-mail"):
        check_contact(company="x", name="y", email="no-at-sign")

    def names(search: str) -> list[str]:
        return [e.company for e in list_contacts(session=session, staff=staff, search=search)]

    assert names("髙橋") == ["株式会社髙橋建設", "髙橋JV"]
    assert names("HANAKO") == ["有限会社旭川設備"]
    assert names("髙橋 株式会社") == ["株式会社髙橋建設"]  # every word must match
    assert names("100%") == []  # LIKE wildcards are searched for literally

    update_contact(
        session=session,
        staff=staff,
        entry_id=takahashi.id,
        contact=check_contact(
            company="株式会社髙橋建設",
            name="髙橋 一郎",
            email="ichiro@takahashi.example.co.jp",
            department="工事部",
        ),
    )
    assert takahashi.department == "工事部"
    delete_contact(session=session, staff=staff, entry_id=takahashi.id)
    assert names("株式会社髙橋") == []
    assert _actions(session).count("address_book.add") == 3
    assert "address_book.update" in _actions(session)
    assert "address_book.delete" in _actions(session)


def test_only_senders_change_and_the_disabled_read_nothing(session: Session) -> None:
    signer = make_staff(session, "signer@city.example.jp", roles="signer")
    contact = check_contact(company="A社", name="山田 太郎", email="yamada@a.example.jp")
    with pytest.raises(StaffError) as refused:
        add_contact(session=session, staff=signer, contact=contact)
    assert refused.value.code == "staff.role_required"
    assert list_contacts(session=session, staff=signer) == []  # reading is allowed
    signer.disabled = True
    with pytest.raises(StaffError):
        list_contacts(session=session, staff=signer)


def test_import_is_all_or_nothing_with_line_numbers(session: Session) -> None:
    staff = _sender(session)
    add_contact(
        session=session,
        staff=staff,
        contact=check_contact(company="A社", name="山田 太郎", email="yamada@a.example.jp"),
    )
    bad = (
        "会社名,氏名,メールアドレス,部署\n"
        "B社,鈴木 次郎,suzuki@b.example.jp,営業部\n"
        "C社,田中 三郎,not-an-address,\n"
        "\n"
        "B社,鈴木 次郎,SUZUKI@b.example.jp,\n"
    ).encode("cp932")
    plan = plan_import(session=session, data=bad)
    assert [(e["line"], e["code"]) for e in plan.errors] == [
        (3, "staff.bad_email"),
        (5, "address_book.import_duplicate"),
    ]
    assert plan.errors[0]["message"] == "メールアドレスの形式が正しくありません。"
    with pytest.raises(StaffError) as refused:
        apply_import(session=session, staff=staff, plan=plan)
    assert refused.value.code == "address_book.import_invalid"
    assert len(session.scalars(select(AddressBookEntry)).all()) == 1  # nothing imported

    good = (
        "company,name,email,department,note\n"
        "A社,山田 太郎,yamada@a.example.jp,総務部,\n"  # updates the stored contact
        "B社,鈴木 次郎,suzuki@b.example.jp,営業部,=HYPERLINK()\n"
    ).encode()
    plan = plan_import(session=session, data=good)
    assert (len(plan.created), len(plan.updated), plan.errors) == (1, 1, [])
    apply_import(session=session, staff=staff, plan=plan)
    session.flush()
    stored = {e.email: e for e in session.scalars(select(AddressBookEntry))}
    assert stored["yamada@a.example.jp"].department == "総務部"
    assert stored["suzuki@b.example.jp"].note == "=HYPERLINK()"
    assert "address_book.import" in _actions(session)

    exported = export_csv(session=session, staff=staff)
    assert exported.startswith("\ufeff会社名,氏名,メールアドレス,部署,備考\r\n".encode())
    # A spreadsheet must not run a stored value as a formula; the import reads it back intact.
    assert "'=HYPERLINK()" in exported.decode("utf-8-sig")
    again = plan_import(session=session, data=exported)
    assert (again.created, again.updated, again.unchanged, again.errors) == ([], [], 2, [])
    assert "address_book.export" in _actions(session)


def test_import_refuses_a_file_without_the_columns(session: Session) -> None:
    with pytest.raises(StaffError) as refused:
        plan_import(session=session, data="氏名,メールアドレス\n山田,y@a.example.jp\n".encode())
    assert refused.value.code == "address_book.import_header"
    assert "会社名" in refused.value.message_ja
    with pytest.raises(StaffError) as undecodable:
        plan_import(session=session, data=b"\x81\x20broken")
    assert undecodable.value.code == "staff.import_encoding"
