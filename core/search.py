"""Records-law search (電子帳簿保存法 施行規則4条): transaction date, counterparty and amount, with
ranges and combined conditions, plus file name, status and department; always inside the
caller's visibility scope (:mod:`core.access`), paginated.

Every filter has an index (migration 0007). The substring matches (file-name keyword, title,
counterparty) have two kinds on PostgreSQL: trigram indexes (migration 0010, pg_trgm) serve words
of three characters or more, and bigram indexes (migration 0011, ``keiyaku_bigrams``) the
two-character words so common in Japanese (道路, 工事, 髙橋), which trigrams cannot serve. A
one-character word scans.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import ColumnElement, Select, Text, cast, func, select, union
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.orm import InstrumentedAttribute, Session

from core.access import scope_clause, scope_for
from core.errors import StaffError
from core.model import BIGRAMS, Document, Envelope, Staff
from core.states import EnvelopeState
from core.text import without_controls

MAX_PER_PAGE = 200


@dataclass(frozen=True)
class EnvelopeQuery:
    """Search conditions; every one given must hold (AND). Ranges include both ends."""

    keyword: str | None = None  # in a document's file name or the title
    date_from: dt.date | None = None  # transaction date (取引年月日)
    date_to: dt.date | None = None
    counterparty: str | None = None  # substring of the counterparty's name (取引先)
    amount_min: Decimal | None = None  # 取引金額
    amount_max: Decimal | None = None
    states: tuple[EnvelopeState, ...] = ()
    department: str | None = None
    page: int = 1
    per_page: int = 50

    def __post_init__(self) -> None:
        # A NUL cannot even be sent to PostgreSQL, and no stored text holds a control character.
        for name in ("keyword", "counterparty", "department"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, without_controls(value) or None)


@dataclass(frozen=True)
class SearchPage:
    """One page of results, newest transaction date first, and the total number of matches."""

    items: Sequence[Envelope]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        """How many pages the matches fill (at least one)."""
        return max(1, -(-self.total // self.per_page))


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _contains(
    column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None], text: str, dialect: str
) -> ColumnElement[bool]:
    """``column`` contains ``text``: LIKE, or on PostgreSQL for two characters the bigram
    index's containment (the same rows: a two-character string is in a text exactly when it is
    one of the text's bigrams)."""
    if dialect == "postgresql" and len(text) == 2:
        bigrams = getattr(func, BIGRAMS)(column, type_=ARRAY(Text()))
        word = cast(array([text]), ARRAY(Text()))  # text[], not varchar[]: the operator's type
        return bigrams.op("@>")(word)  # type: ignore[no-any-return]
    return column.like(_like(text), escape="\\")


def conditions(query: EnvelopeQuery, dialect: str) -> list[ColumnElement[bool]]:
    """The WHERE conditions of a query (without the scope) for a database of ``dialect``."""
    where: list[ColumnElement[bool]] = []
    if query.date_from and query.date_to and query.date_from > query.date_to:
        raise StaffError(
            "staff.search_range",
            "the start of the date range is after its end",
            "取引年月日の範囲が正しくありません（開始日が終了日より後です）。",
        )
    if (
        query.amount_min is not None
        and query.amount_max is not None
        and query.amount_min > query.amount_max
    ):
        raise StaffError(
            "staff.search_range",
            "the minimum amount is above the maximum",
            "金額の範囲が正しくありません（下限が上限より大きいです）。",
        )
    if query.keyword and query.keyword.strip():
        keyword = query.keyword.strip()
        # One set of ids from both places, each found through its own index on PostgreSQL;
        # "file name LIKE OR title LIKE" would scan every envelope to test the title.
        matching = union(
            select(Document.envelope_id).where(_contains(Document.name, keyword, dialect)),
            select(Envelope.id).where(_contains(Envelope.title, keyword, dialect)),
        )
        where.append(Envelope.id.in_(matching))
    if query.date_from:
        where.append(Envelope.transaction_date >= query.date_from)
    if query.date_to:
        where.append(Envelope.transaction_date <= query.date_to)
    if query.counterparty and query.counterparty.strip():
        where.append(_contains(Envelope.counterparty, query.counterparty.strip(), dialect))
    if query.amount_min is not None:
        where.append(Envelope.amount >= query.amount_min)
    if query.amount_max is not None:
        where.append(Envelope.amount <= query.amount_max)
    if query.states:
        where.append(Envelope.state.in_(query.states))
    if query.department and query.department.strip():
        where.append(Envelope.department == query.department.strip())
    return where


def search_statement(
    *,
    staff: Staff,
    query: EnvelopeQuery,
    dialect: str,
    scope: ColumnElement[bool] | None = None,
) -> Select[Envelope]:
    """The scoped, filtered, ordered SELECT of one page (what :func:`search_envelopes` runs)."""
    per_page = max(1, min(query.per_page, MAX_PER_PAGE))
    page = max(1, query.page)
    return (
        select(Envelope)
        .where(scope_clause(staff) if scope is None else scope, *conditions(query, dialect))
        .order_by(Envelope.transaction_date.desc(), Envelope.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )


def search_envelopes(*, session: Session, staff: Staff, query: EnvelopeQuery) -> SearchPage:
    """One page of the envelopes that match ``query`` and that ``staff`` may see."""
    per_page = max(1, min(query.per_page, MAX_PER_PAGE))
    page = max(1, query.page)
    scope = scope_for(session=session, staff=staff)
    dialect = session.get_bind().dialect.name
    items = session.scalars(
        search_statement(staff=staff, query=query, dialect=dialect, scope=scope)
    ).all()
    if page == 1 and len(items) < per_page:
        total = len(items)  # the whole result is on this page: no count query needed
    else:
        counted = session.scalar(
            select(func.count()).select_from(Envelope).where(scope, *conditions(query, dialect))
        )
        total = int(counted or 0)
    return SearchPage(items=items, total=total, page=page, per_page=per_page)
