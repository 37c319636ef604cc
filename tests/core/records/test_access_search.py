"""Visibility scopes and the records-law search, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from core.errors import NotFoundError, StaffError
from core.model import StaffRole, VisibilityScope
from core.records.reports import monthly_report
from core.records.search import EnvelopeQuery, search_envelopes, search_statement
from core.staff.access import get_visible_envelope, require_role, visible_envelopes
from core.states import EnvelopeState
from tests.fixtures.staff import make_envelope, make_staff


def test_scopes(session: Session) -> None:
    mine = make_envelope(session, department="契約課", creator_email="a@city.example.jp")
    theirs = make_envelope(session, department="土木課", creator_email="b@city.example.jp")
    signing = make_envelope(session, department="土木課", party_email="a@city.example.jp")
    own = make_staff(session, "a@city.example.jp", scope=VisibilityScope.OWN)
    dept = make_staff(
        session, "c@city.example.jp", department="土木課", scope=VisibilityScope.DEPARTMENT
    )
    admin = make_staff(session, "d@city.example.jp", roles="admin", department="総務課")
    everyone = make_staff(session, "e@city.example.jp", scope=VisibilityScope.ALL)

    def ids(staff: object) -> set[str]:
        return {e.id for e in session.scalars(visible_envelopes(staff))}  # type: ignore[arg-type]

    assert ids(own) == {mine.id, signing.id}
    for staff in (own, dept):  # the search's looked-up form of the scope agrees
        page = search_envelopes(session=session, staff=staff, query=EnvelopeQuery())
        assert {e.id for e in page.items} == ids(staff)
    assert ids(dept) == {theirs.id, signing.id}
    assert ids(admin) == ids(everyone) == {mine.id, theirs.id, signing.id}
    own.disabled = True
    assert ids(own) == set()


def test_out_of_scope_is_not_found(session: Session) -> None:
    other = make_envelope(session, department="土木課", creator_email="b@city.example.jp")
    staff = make_staff(session, "a@city.example.jp", scope=VisibilityScope.DEPARTMENT)
    with pytest.raises(NotFoundError) as caught:
        get_visible_envelope(session=session, staff=staff, envelope_id=other.id)
    with pytest.raises(NotFoundError) as missing:
        get_visible_envelope(session=session, staff=staff, envelope_id="0" * 32)
    assert caught.value.as_dict() == missing.value.as_dict()


def test_roles(session: Session) -> None:
    signer = make_staff(session, "s@city.example.jp", roles="signer")
    admin = make_staff(session, "a@city.example.jp", roles="admin")
    require_role(admin, StaffRole.SENDER)
    with pytest.raises(StaffError, match="sender role"):
        require_role(signer, StaffRole.SENDER)


def test_search_shapes(session: Session) -> None:
    a = make_envelope(
        session,
        file_name="札幌市道路工事_契約書.pdf",
        counterparty="株式会社北海道建設",
        amount=5_000_000,
        transaction_date=dt.date(2026, 4, 10),
    )
    b = make_envelope(
        session,
        file_name="請書.pdf",
        counterparty="有限会社旭川設備",
        amount=800_000,
        transaction_date=dt.date(2026, 5, 20),
        state=EnvelopeState.COMPLETED,
        department="土木課",
    )
    c = make_envelope(
        session,
        file_name="100%_見積.pdf",
        counterparty="株式会社北海道建設",
        amount=120_000,
        transaction_date=dt.date(2025, 12, 1),
    )
    staff = make_staff(session, "x@city.example.jp", scope=VisibilityScope.ALL)

    def found(**kw: object) -> list[str]:
        page = search_envelopes(session=session, staff=staff, query=EnvelopeQuery(**kw))  # type: ignore[arg-type]
        return [e.id for e in page.items]

    assert found() == [b.id, a.id, c.id]  # newest transaction date first
    assert found(keyword="道路工事") == [a.id]
    assert found(keyword="100%") == [c.id]  # wildcards are literal
    assert found(keyword="%") == [c.id]
    assert found(date_from=dt.date(2026, 1, 1), date_to=dt.date(2026, 4, 30)) == [a.id]
    assert found(counterparty="北海道建設") == [a.id, c.id]
    # two characters: the bigram index on PostgreSQL, LIKE on SQLite; the same rows
    assert found(keyword="道路") == [a.id]
    assert found(keyword="0%") == [c.id]  # literal here too
    assert found(counterparty="旭川") == [b.id]
    assert found(counterparty="社北") == [a.id, c.id]  # across the words of a name
    assert found(counterparty="道設") == []  # both characters, but not side by side
    assert found(counterparty="北", amount_min=Decimal(1_000_000)) == [a.id]  # one: LIKE
    assert found(amount_min=Decimal(500_000), amount_max=Decimal(5_000_000)) == [b.id, a.id]
    assert found(states=(EnvelopeState.COMPLETED,)) == [b.id]
    assert found(department="土木課") == [b.id]
    assert found(
        counterparty="北海道建設", amount_min=Decimal(1_000_000), date_from=dt.date(2026, 1, 1)
    ) == [a.id]
    first = search_envelopes(session=session, staff=staff, query=EnvelopeQuery(per_page=2))
    second = search_envelopes(session=session, staff=staff, query=EnvelopeQuery(per_page=2, page=2))
    assert (first.total, first.pages) == (3, 2)
    assert [e.id for e in first.items + list(second.items)] == [b.id, a.id, c.id]
    with pytest.raises(StaffError, match="date range"):
        found(date_from=dt.date(2026, 5, 1), date_to=dt.date(2026, 4, 1))


def test_search_applies_the_scope(session: Session) -> None:
    make_envelope(session, department="土木課", creator_email="b@city.example.jp")
    mine = make_envelope(session, department="契約課", creator_email="b@city.example.jp")
    staff = make_staff(session, "a@city.example.jp", scope=VisibilityScope.DEPARTMENT)
    page = search_envelopes(session=session, staff=staff, query=EnvelopeQuery())
    assert [e.id for e in page.items] == [mine.id] and page.total == 1
    assert (
        search_envelopes(
            session=session, staff=staff, query=EnvelopeQuery(department="土木課")
        ).total
        == 0
    )


def test_monthly_report_uses_jst_months(session: Session) -> None:
    jst = dt.timezone(dt.timedelta(hours=9))
    # 2026-05-01 00:30 JST is still April in UTC: it belongs to May.
    make_envelope(
        session,
        state=EnvelopeState.COMPLETED,
        department="土木課",
        completed_at=dt.datetime(2026, 5, 1, 0, 30, tzinfo=jst),
        amount=300,
    )
    make_envelope(
        session,
        state=EnvelopeState.COMPLETED,
        department="契約課",
        completed_at=dt.datetime(2026, 4, 30, 23, 59, tzinfo=jst),
        amount=100,
    )
    make_envelope(
        session, state=EnvelopeState.SENT, completed_at=dt.datetime(2026, 5, 2, tzinfo=jst)
    )
    rows = monthly_report(session=session, year=2026, month=5, months=2)
    assert [r.as_dict() for r in rows] == [
        {
            "month": "2026-04",
            "count": 1,
            "amount": 100,
            "departments": {"契約課": {"count": 1, "amount": 100}},
        },
        {
            "month": "2026-05",
            "count": 1,
            "amount": 300,
            "departments": {"土木課": {"count": 1, "amount": 300}},
        },
    ]


@pytest.mark.postgres
@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)  # SQLite keeps LIKE
def test_two_character_words_use_the_bigram_index_on_postgresql(session: Session) -> None:
    staff = make_staff(session, "admin@city.example.jp", scope=VisibilityScope.ALL)
    session.execute(text("SET LOCAL enable_seqscan = off"))  # an index if one can serve
    for query, index in (
        (EnvelopeQuery(counterparty="道路"), "ix_envelopes_counterparty_bigram"),
        (EnvelopeQuery(keyword="工事"), "ix_envelopes_title_bigram"),
        (EnvelopeQuery(keyword="工事"), "ix_documents_name_bigram"),
        (EnvelopeQuery(counterparty="道路建設"), "ix_envelopes_counterparty_trgm"),
    ):
        statement = search_statement(staff=staff, query=query, dialect="postgresql")
        compiled = statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(session.scalars(text(f"EXPLAIN {compiled}")))
        assert index in plan, plan
