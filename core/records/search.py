"""Records-law search (電子帳簿保存法 施行規則4条): transaction date, counterparty and amount, with
ranges and combined conditions, plus file name, status and department; always inside the
caller's visibility scope (:mod:`core.staff.access`), paginated.

Every filter has an index (migration 0007). The substring matches (file-name keyword, title,
counterparty) have two kinds on PostgreSQL: trigram indexes (migration 0010, pg_trgm) serve words
of three characters or more, and bigram indexes (migration 0011, ``keiyaku_bigrams``) the
two-character words so common in Japanese (道路, 工事, 髙橋), which trigrams cannot serve. A
one-character word scans.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sqlalchemy import ColumnElement, Select, Text, cast, func, select, union
from sqlalchemy.dialects.postgresql import ARRAY, array
from sqlalchemy.orm import InstrumentedAttribute, Session

from core.csv_export import SafeCsvWriter
from core.errors import StaffError
from core.model import BIGRAMS, Document, Envelope, Party, Staff
from core.staff.access import scope_clause, scope_for
from core.states import ACTIONABLE_PARTY_STATES, EnvelopeState, PartyRole, PartyState
from core.text import without_controls
from core.timezone import JST

__all__ = [
    "EnvelopeQuery",
    "SearchPage",
    "conditions",
    "encode_csv",
    "export_envelopes",
    "parse_query",
    "records_csv",
    "search_envelopes",
    "search_statement",
    "waiting_on",
]

MAX_PER_PAGE = 200
# An export (CSV) holds every match, up to this many rows.
MAX_EXPORT = 100_000


@dataclass(frozen=True)
class EnvelopeQuery:
    """Search conditions; every one given must hold (AND). Ranges include both ends."""

    keyword: str | None = None  # in a document's file name or the title
    management_number: str | None = None  # 管理番号, whole or part, any letter case
    date_from: dt.date | None = None  # transaction date (取引年月日)
    date_to: dt.date | None = None
    counterparty: str | None = None  # substring of the counterparty's name (取引先)
    amount_min: Decimal | None = None  # 取引金額
    amount_max: Decimal | None = None
    states: tuple[EnvelopeState, ...] = ()
    department: str | None = None
    page: int = 1
    per_page: int = 50
    offset: int | None = None  # rows to skip instead of whole pages (the API's limit/offset)

    def __post_init__(self) -> None:
        # A NUL cannot even be sent to PostgreSQL, and no stored text holds a control character.
        for name in ("keyword", "management_number", "counterparty", "department"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, without_controls(value) or None)
        if self.management_number is not None:
            # Typed from paper or a phone: ＫＧ－２０２６ is KG-2026.
            number = unicodedata.normalize("NFKC", self.management_number).strip()
            object.__setattr__(self, "management_number", number or None)


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
    if query.management_number:
        # Part of the number, any case (kg-20260401 finds KG-20260401-…); on PostgreSQL the
        # trigram index of migration 0017c serves it.
        number = _like(query.management_number)
        where.append(Envelope.management_number.ilike(number, escape="\\"))
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


def search_envelopes(
    *,
    session: Session,
    staff: Staff | None = None,
    query: EnvelopeQuery,
    scope: ColumnElement[bool] | None = None,
) -> SearchPage:
    """One page of the envelopes that match ``query`` and that ``staff`` may see (or, for a
    caller that is not a staff member, that ``scope`` admits: an API client's own envelopes)."""
    per_page = max(1, min(query.per_page, MAX_PER_PAGE))
    page = max(1, query.page)
    scope = _scope(session, staff, scope)
    dialect = session.get_bind().dialect.name
    start = query.offset if query.offset is not None else (page - 1) * per_page
    items = session.scalars(_statement(scope, query, dialect).limit(per_page).offset(start)).all()
    if start == 0 and len(items) < per_page:
        total = len(items)  # the whole result is on this page: no count query needed
    else:
        counted = session.scalar(
            select(func.count()).select_from(Envelope).where(scope, *conditions(query, dialect))
        )
        total = int(counted or 0)
    return SearchPage(items=items, total=total, page=page, per_page=per_page)


def _scope(
    session: Session, staff: Staff | None, scope: ColumnElement[bool] | None
) -> ColumnElement[bool]:
    if staff is not None:
        return scope_for(session=session, staff=staff)
    if scope is None:
        raise ValueError("a search needs the caller's staff member or an explicit scope")
    return scope


def _statement(scope: ColumnElement[bool], query: EnvelopeQuery, dialect: str) -> Select[Envelope]:
    return (
        select(Envelope)
        .where(scope, *conditions(query, dialect))
        .order_by(Envelope.transaction_date.desc(), Envelope.id.desc())
    )


def waiting_on(*, session: Session, envelope_ids: Sequence[str]) -> dict[str, Party]:
    """For each sent envelope among ``envelope_ids``, the party it waits for (誰の対応待ちか):
    the first in routing order that has still to act, or whose approval is being signed."""
    if not envelope_ids:
        return {}
    rows = session.scalars(
        select(Party)
        .join(Envelope, Envelope.id == Party.envelope_id)
        .where(
            Party.envelope_id.in_(list(envelope_ids)),
            Envelope.state == EnvelopeState.SENT,
            Party.role != PartyRole.CC,
            Party.state.in_([*ACTIONABLE_PARTY_STATES, PartyState.SIGNING]),
        )
        .order_by(Party.envelope_id, Party.routing_order)
    )
    waiting: dict[str, Party] = {}
    for party in rows:
        waiting.setdefault(party.envelope_id, party)
    return waiting


def export_envelopes(
    *,
    session: Session,
    query: EnvelopeQuery,
    staff: Staff | None = None,
    scope: ColumnElement[bool] | None = None,
    limit: int = MAX_EXPORT,
) -> Sequence[Envelope]:
    """Every match (not one page) for an export, in the search's order; at most ``limit``
    (``search.too_many`` beyond it: narrow the conditions rather than cut the list silently)."""
    scope = _scope(session, staff, scope)
    dialect = session.get_bind().dialect.name
    rows = session.scalars(_statement(scope, query, dialect).limit(limit + 1)).all()
    if len(rows) > limit:
        raise StaffError(
            "search.too_many",
            f"more than {limit} envelopes match; narrow the conditions",
            f"該当が{limit}件を超えています。条件を絞り込んでください。",
        )
    return rows


def parse_query(params: Mapping[str, str], states: Sequence[str] = ()) -> EnvelopeQuery:
    """An :class:`EnvelopeQuery` from text conditions, as the staff page, the API and the CLI
    take them (dates YYYY-MM-DD, amounts in yen with optional thousands commas, ``states``
    envelope state values). An unreadable or inverted condition raises ``staff.search_input``
    or ``staff.search_range``, never a query that ignores it."""
    try:
        query = EnvelopeQuery(
            keyword=params.get("keyword") or None,
            management_number=params.get("management_number") or None,
            date_from=_date(params.get("date_from")),
            date_to=_date(params.get("date_to")),
            counterparty=params.get("counterparty") or None,
            amount_min=_amount(params.get("amount_min")),
            amount_max=_amount(params.get("amount_max")),
            states=tuple(EnvelopeState(s) for s in states if s),
            department=params.get("department") or None,
            page=max(1, int(params.get("page") or 1)),
            per_page=max(1, min(int(params.get("per_page") or 50), MAX_PER_PAGE)),
        )
    except (ValueError, InvalidOperation) as exc:
        raise StaffError(
            "staff.search_input",
            f"unreadable search condition: {exc}",
            "検索条件の形式が正しくありません（日付は YYYY-MM-DD、金額は数字で入力してください）。",
        ) from exc
    conditions(query, "sqlite")  # refuses inverted ranges now, before any row is read
    return query


def _date(value: str | None) -> dt.date | None:
    return dt.date.fromisoformat(value.strip()) if value and value.strip() else None


def _amount(value: str | None) -> Decimal | None:
    if not value or not value.strip():
        return None
    amount = Decimal(value.replace(",", "").strip())
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"not an amount: {value!r}")
    return amount


CSV_COLUMNS = (
    ("management_number", "管理番号"),
    ("title", "件名"),
    ("transaction_date", "取引年月日"),
    ("amount", "取引金額"),
    ("counterparty", "取引先"),
    ("department", "部署"),
    ("state", "状態"),
    ("completed_at", "締結日時"),
    ("documents", "文書名"),
    ("envelope_id", "封筒ID"),
)


def records_csv(envelopes: Sequence[Envelope]) -> str:
    """The records-law export: one row per envelope with the search keys (取引年月日, 取引金額,
    取引先), its department, state, conclusion time (JST) and document names; a Japanese
    header. Text; the caller chooses the encoding (UTF-8 with BOM for Excel, or CP932)."""
    buffer = io.StringIO()
    # The one writer of every CSV the product makes: a formula-looking cell is written as text.
    writer = SafeCsvWriter(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow([label for _key, label in CSV_COLUMNS])
    for envelope in envelopes:
        completed = envelope.completed_at.astimezone(JST) if envelope.completed_at else None
        row = {
            "management_number": envelope.management_number,
            "title": envelope.title,
            "transaction_date": (
                envelope.transaction_date.isoformat() if envelope.transaction_date else ""
            ),
            "amount": format(envelope.amount, "f") if envelope.amount is not None else "",
            "counterparty": envelope.counterparty or "",
            "department": envelope.department or "",
            "state": envelope.state.value,
            "completed_at": completed.isoformat(timespec="seconds") if completed else "",
            "documents": " / ".join(d.name for d in envelope.documents),
            "envelope_id": envelope.id,
        }
        writer.writerow([row[key] for key, _label in CSV_COLUMNS])
    return buffer.getvalue()


# Look-alikes CP932 holds for characters it does not (the JIS X 0208 vs Microsoft differences).
_CP932_LOOKALIKES = str.maketrans(
    {"\u301c": "\uff5e", "\u2212": "\uff0d", "\u2014": "\u2015", "\u2016": "\u2225"}
)


def encode_csv(text: str, encoding: str) -> bytes:
    """The export's bytes: UTF-8 with a BOM (Excel opens it as UTF-8), or CP932. A character
    CP932 cannot hold refuses the export (``search.unencodable``) instead of becoming ``?``."""
    if encoding != "cp932":
        return ("\ufeff" + text).encode("utf-8")
    mapped = text.translate(_CP932_LOOKALIKES)
    try:
        return mapped.encode("cp932")
    except UnicodeEncodeError as exc:
        bad = mapped[exc.start]
        raise StaffError(
            "search.unencodable",
            f"{bad!r} (U+{ord(bad):04X}) has no CP932 form; export in UTF-8",
            f"「{bad}」(U+{ord(bad):04X})はShift_JISで表せません。UTF-8で出力してください。",
        ) from exc
