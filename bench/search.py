"""Records-law search over 100,000 envelopes on PostgreSQL: each search shape's p95 beside a plain
indexed SELECT of the same rows and count.

    .venv/bin/python -m bench.search [--envelopes 100000] [--runs 60] [--pg URL]

A scratch database on 127.0.0.1:5432 (``random_page_cost = 1.1``, as docs/operations.md advises
for SSD) is migrated (the indexes of migrations 0007, 0010 and 0011: trigrams and bigrams) and filled with
SQLAlchemy Core ``executemany`` batches: envelopes over 40 departments, 3,000 counterparties,
five years of transaction dates and amounts from 10,000 to 500,000,000 yen, each with one document
and one party. Then, for every shape, ``core.records.search.search_envelopes`` (ORM, the caller's
visibility scope, page 1 of 50 plus the total count) is timed against hand-written SQL
``SELECT ... ORDER BY transaction_date DESC, id DESC LIMIT 50`` and ``SELECT count(*)`` with
the same conditions and the same scope, through the bare driver (the floor); the two run in
alternating order and must return the same ids in the same order and the same count.
Parameters vary per run (the same sequence for both). The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import secrets
import statistics
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from bench.harness import emit, machine, scratch_postgres
from core.model import Document, Envelope, Party, Staff, VisibilityScope
from core.records.search import EnvelopeQuery, search_envelopes
from core.states import EnvelopeState
from core.storage import create_database_engine, migrate

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEPARTMENTS = [f"部署{i:02d}" for i in range(40)]
WORDS = ["道路", "橋梁", "下水道", "学校", "庁舎", "公園", "河川", "清掃", "設備", "舗装"]
STATES = [
    (EnvelopeState.COMPLETED, 70),
    (EnvelopeState.SENT, 15),
    (EnvelopeState.DRAFT, 5),
    (EnvelopeState.CANCELLED, 5),
    (EnvelopeState.DECLINED, 3),
    (EnvelopeState.EXPIRED, 2),
]


def _fill(engine: Any, count: int, rng: random.Random) -> None:
    companies = [f"株式会社{rng.choice(WORDS)}{i:04d}建設" for i in range(3000)]
    states = [s for s, w in STATES for _ in range(w)]
    start = dt.date(2021, 4, 1)
    now = dt.datetime.now(dt.UTC)
    batch = 10_000
    with engine.begin() as conn:
        for offset in range(0, count, batch):
            envelopes, documents, parties = [], [], []
            for i in range(offset, min(count, offset + batch)):
                eid = secrets.token_hex(16)
                department = rng.choice(DEPARTMENTS)
                envelopes.append(
                    {
                        "id": eid,
                        "management_number": f"KG-{i:07d}",
                        "title": f"{rng.choice(WORDS)}工事 第{i}号",
                        "state": rng.choice(states).value,
                        "certificate_id": secrets.token_hex(16),
                        "creator": "職員",
                        "creator_email": f"staff{rng.randrange(400)}@city.example.jp",
                        "counterparty": rng.choice(companies),
                        "department": department,
                        "amount": Decimal(int(10 ** rng.uniform(4, 8.7))),
                        "transaction_date": start + dt.timedelta(days=rng.randrange(5 * 365)),
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                documents.append(
                    {
                        "id": secrets.token_hex(16),
                        "envelope_id": eid,
                        "position": 1,
                        "name": f"{rng.choice(WORDS)}{rng.choice(WORDS)}_契約書_{i}.pdf",
                        "original_blob_id": "0" * 64,
                        "original_sha256": "0" * 64,
                        "size": 100_000,
                        "page_count": 3,
                        "signature_count": 2,
                    }
                )
                parties.append(
                    {
                        "id": secrets.token_hex(16),
                        "envelope_id": eid,
                        "routing_order": 1,
                        "role": "signer",
                        "state": "waiting",
                        "name": "代表取締役",
                        "email": f"c{i}@example.co.jp",
                    }
                )
            conn.execute(insert(Envelope.__table__), envelopes)
            conn.execute(insert(Document.__table__), documents)
            conn.execute(insert(Party.__table__), parties)
        conn.execute(text("ANALYZE"))


def _p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18] * 1000


SHAPES: dict[str, Callable[[random.Random], tuple[dict[str, Any], str, dict[str, Any]]]] = {}


def shape(name: str) -> Callable[[Any], Any]:
    def register(fn: Any) -> Any:
        SHAPES[name] = fn
        return fn

    return register


# The floor's best plain SQL for a two-character word: the bigram index (migration 0011).
_TWO_CHARACTERS = "keiyaku_bigrams(e.counterparty) @> ARRAY[CAST(:w AS text)]"


@shape("keyword (file name)")
def _keyword(rng: random.Random) -> tuple[dict[str, Any], str, dict[str, Any]]:
    word = rng.choice(WORDS) + rng.choice(WORDS)
    sql = (
        "e.id IN (SELECT d.envelope_id FROM documents d WHERE d.name LIKE :p"
        " UNION SELECT t.id FROM envelopes t WHERE t.title LIKE :p)"
    )
    return {"keyword": word}, sql, {"p": f"%{word}%"}


@shape("transaction date range (1 month)")
def _dates(rng: random.Random) -> tuple[dict[str, Any], str, dict[str, Any]]:
    first = dt.date(2021, 4, 1) + dt.timedelta(days=rng.randrange(1700))
    last = first + dt.timedelta(days=30)
    sql = "e.transaction_date BETWEEN :a AND :b"
    return {"date_from": first, "date_to": last}, sql, {"a": first, "b": last}


@shape("counterparty")
def _counterparty(rng: random.Random) -> tuple[dict[str, Any], str, dict[str, Any]]:
    name = f"{rng.randrange(3000):04d}建設"
    return {"counterparty": name}, "e.counterparty LIKE :p", {"p": f"%{name}%"}


@shape("counterparty, a two-character word")
def _counterparty_word(rng: random.Random) -> tuple[dict[str, Any], str, dict[str, Any]]:
    word = rng.choice([w for w in WORDS if len(w) == 2])  # 道路: bigrams, not trigrams
    return {"counterparty": word}, _TWO_CHARACTERS, {"w": word}


@shape("amount range")
def _amount(rng: random.Random) -> tuple[dict[str, Any], str, dict[str, Any]]:
    low = Decimal(int(10 ** rng.uniform(4, 8)))
    high = low * 2
    sql = "e.amount BETWEEN :a AND :b"
    return {"amount_min": low, "amount_max": high}, sql, {"a": low, "b": high}


@shape("status")
def _status(rng: random.Random) -> tuple[dict[str, Any], str, dict[str, Any]]:
    state = rng.choice([EnvelopeState.SENT, EnvelopeState.DECLINED, EnvelopeState.CANCELLED])
    return {"states": (state,)}, "e.state = :s", {"s": state.value}


@shape("department")
def _department(rng: random.Random) -> tuple[dict[str, Any], str, dict[str, Any]]:
    department = rng.choice(DEPARTMENTS)
    return {"department": department}, "e.department = :d", {"d": department}


@shape("combined (date + amount + counterparty)")
def _combined(rng: random.Random) -> tuple[dict[str, Any], str, dict[str, Any]]:
    first = dt.date(2021, 4, 1) + dt.timedelta(days=rng.randrange(1400))
    last = first + dt.timedelta(days=365)
    word = rng.choice(WORDS)
    low = Decimal(1_000_000)
    sql = "e.transaction_date BETWEEN :a AND :b AND e.amount >= :m AND "
    if len(word) == 2:
        sql, binds = sql + _TWO_CHARACTERS, {"w": word}
    else:
        sql, binds = sql + "e.counterparty LIKE :p", {"p": f"%{word}%"}
    return (
        {"date_from": first, "date_to": last, "amount_min": low, "counterparty": word},
        sql,
        {"a": first, "b": last, "m": low, **binds},
    )


def run(url: str, count: int, runs: int, lines: list[str]) -> list[dict[str, Any]]:
    """Fill, then time every shape for both callers; the figures per shape and caller."""
    shapes: list[dict[str, Any]] = []
    rng = random.Random(20261122)
    engine = create_database_engine(url)
    migrate(engine)
    t0 = time.perf_counter()
    _fill(engine, count, rng)
    # Statistics as a database in service has them (autovacuum would gather them some time
    # later, so without this the plans depended on how soon it came by).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    lines.append(
        f"filled {count:,} envelopes (+ documents, parties) in {time.perf_counter() - t0:.1f} s"
    )
    with Session(engine, expire_on_commit=False) as session:
        admin = Staff(
            email="admin@city.example.jp",
            name="管理者",
            roles="admin",
            scope=VisibilityScope.ALL,
            disabled=False,
            failed_logins=0,
        )
        clerk = Staff(
            email="clerk@city.example.jp",
            name="係員",
            roles="sender",
            department=DEPARTMENTS[0],
            scope=VisibilityScope.DEPARTMENT,
            disabled=False,
            failed_logins=0,
        )
        session.add_all([admin, clerk])
        session.commit()
        raw = engine.raw_connection()
        lines.append(
            f"{'shape':42} {'who':6} {'search p95':>11} {'floor p95':>10} {'ratio':>6} "
            f"{'matches':>8}"
        )
        for name, make in SHAPES.items():
            for who in (admin, clerk):
                params = [make(random.Random(f"{name}{i}")) for i in range(runs)]
                ours: list[float] = []
                floor: list[float] = []
                total = 0
                verified = 0
                for index, (query_args, sql, binds) in enumerate(params):
                    # The same rows: a department-scoped caller's floor filters the department too.
                    scoped = sql if who is admin else f"({sql}) AND e.department = :scope"
                    if who is not admin:
                        binds = {**binds, "scope": DEPARTMENTS[0]}
                    rows_sql = text(
                        f"SELECT e.id FROM envelopes e WHERE {scoped} "
                        "ORDER BY e.transaction_date DESC, e.id DESC LIMIT 50"
                    ).bindparams(**binds)
                    count_sql = text(f"SELECT count(*) FROM envelopes e WHERE {scoped}").bindparams(
                        **binds
                    )
                    compiled = [
                        q.compile(engine, compile_kwargs={"render_postcompile": True})
                        for q in (rows_sql, count_sql)
                    ]
                    got: dict[str, Any] = {}

                    def run_ours(
                        query_args: dict[str, Any] = query_args,
                        who: Staff = who,
                        ours: list[float] = ours,
                        got: dict[str, Any] = got,
                    ) -> None:
                        started = time.perf_counter()
                        page = search_envelopes(
                            session=session, staff=who, query=EnvelopeQuery(**query_args)
                        )
                        ours.append(time.perf_counter() - started)
                        got["ours"] = ([item.id for item in page.items], page.total)
                        for item in page.items:
                            session.expunge(item)

                    def run_floor(
                        compiled: list[Any] = compiled,
                        floor: list[float] = floor,
                        got: dict[str, Any] = got,
                    ) -> None:
                        # The floor does the page and the count too, as the search must.
                        started = time.perf_counter()
                        with raw.cursor() as cursor:
                            cursor.execute(str(compiled[0]), compiled[0].params)
                            ids = [row[0] for row in cursor.fetchall()]
                            cursor.execute(str(compiled[1]), compiled[1].params)
                            count = cursor.fetchone()[0]
                        floor.append(time.perf_counter() - started)
                        got["floor"] = (ids, count)

                    steps = [run_ours, run_floor]
                    for step in steps[index % 2 :] + steps[: index % 2]:
                        step()
                    if got["ours"] != got["floor"]:
                        raise AssertionError(f"{name}: rows differ from the floor's")
                    verified += 1
                    total += got["ours"][1]
                ratio = _p95(ours) / _p95(floor)
                label = "admin" if who is admin else "dept"
                shapes.append(
                    {
                        "shape": name,
                        "who": label,
                        "search_p95_ms": round(_p95(ours), 2),
                        "floor_p95_ms": round(_p95(floor), 2),
                        "search_vs_floor": round(ratio, 3),
                        "matches": total // runs,
                        "verified": verified,
                    }
                )
                lines.append(
                    f"{name:42} {label:6} {_p95(ours):9.1f}ms "
                    f"{_p95(floor):8.1f}ms {ratio:6.1f} {total // runs:8,}"
                )
        raw.close()
    engine.dispose()
    return shapes


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; print the table or one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--envelopes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--pg", default=ADMIN_URL, help="admin URL of a PostgreSQL server")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"bench": "search", "envelopes": args.envelopes, "runs": args.runs}
    report["machine_start"] = machine()
    lines = [f"load {report['machine_start']['load']} on {report['machine_start']['cores']} cores"]
    # SSD storage, as docs/operations.md recommends for production
    with scratch_postgres(args.pg, random_page_cost="1.1") as url:
        if url is None:
            raise SystemExit(f"PostgreSQL unreachable at {args.pg}")
        report["shapes"] = run(url, args.envelopes, args.runs, lines)
    report["verified"] = sum(s["verified"] for s in report["shapes"])
    report["machine_end"] = machine()
    lines.append(
        f"{report['verified']} searches returned the floor's rows and count; "
        f"load at end {report['machine_end']['load']}"
    )
    emit(report, lines, as_json=args.json)


if __name__ == "__main__":
    main()
