"""Intake: 10,000 awards (CP932 CSV) over SFTP through the mapping into award drafts, against a
floor doing the same work without the product, interleaved in the same run.

    .venv/bin/python -m bench.intake [--rows 10000] [--rounds 3] [--stores sqlite,postgresql]
                                     [--json]

A private OpenSSH ``sshd`` on 127.0.0.1 serves the export and one contract PDF of 100 KB for
every tenth award (the others name none and wait for theirs). Each stack lives in its own
process (``bench.harness``); every round has each stack do one whole import, in an order
rotated round by round, each into a database of its own prepared beforehand (untimed):

- ``pipeline-sqlite`` / ``pipeline-postgresql``: ``schedules.intake.take_in_source`` — one SFTP
  connection, the file streamed through the CSV reader and the municipal worked example of
  docs/mapping.md (CP932, era dates, full-width digits, lookups, vars), awards upserted in
  batches of 500 with their contractors, the PDFs fetched and stored encrypted in the blob
  store with the backup mirror on, dead letters and the run row;
- ``floor-sqlite`` / ``floor-postgresql``: the same file downloaded with one paramiko session
  and parsed with the ``csv`` module, the same PDFs fetched over that session and stored in
  the same encrypted blob store (mirror on), and one row per award and per PDF bulk-inserted
  with SQLAlchemy Core (``executemany`` into tables as wide as ``awards``);
- ``pipeline-sqlite-x2``: the pipeline on a file twice as large, to show its peak memory does
  not grow with the file (streamed).

Verified after each timed import (untimed, not in its peak): every row became an award (no
line error), every PDF named is stored once and decrypts to the very bytes served (SHA-256),
its copy is in the backup mirror, and the floor's rows and PDFs likewise. Printed: p50/p90 and
peak RSS per stack, pipeline over floor per store, the x2 peak against the pipeline's, the
load; one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.harness import emit, interleave, machine, ratio, scratch_postgres, stacks

HEADER = "案件番号,案件名,開札日,落札金額,課所名,落札業者名,業者番号,電子契約,契約書ファイル"
PDF_EVERY = 10  # 1 award in 10 names its contract PDF (1,000 of 10,000)
DEPARTMENTS = ["土木課", "建築課", "総務課", "農林課"]


def _award_line(n: int) -> str:
    # Full-width digits and era dates as exports write them; 1 in 4 amounts with ￥ and commas.
    era_day = (
        f"令和７年{(n % 12) + 1}月{(n % 28) + 1}日"
        if n % 3
        else f"R7.{(n % 12) + 1}.{(n % 28) + 1}"
    )
    amount = f'"￥{(n * 7919) % 90_000_000 + 100_000:,}"' if n % 4 == 0 else str(n * 1000 + 500_000)
    return ",".join(
        [
            f"R7-{n:06d}",
            f"市道{n}号線舗装工事",
            era_day,
            amount,
            DEPARTMENTS[n % 4],
            f"㈱テスト建設{n % 500:03d}",
            f"{n % 500:06d}",
            "希望",
            f"契約書/{_award_date(n)}/R7-{n:06d}.pdf" if n % PDF_EVERY == 0 else "",
        ]
    )


def write_export(path: Path, rows: int) -> None:
    """A CP932, CRLF export of ``rows`` awards."""
    with path.open("wb") as fh:
        fh.write((HEADER + "\r\n").encode("cp932"))
        for n in range(1, rows + 1):
            fh.write((_award_line(n) + "\r\n").encode("cp932"))


def _award_date(n: int) -> str:
    return f"2025{(n % 12) + 1:02d}{(n % 28) + 1:02d}"


def _endpoint(server: dict[str, Any]) -> Any:
    from connectors.sftp import SftpEndpoint

    return SftpEndpoint(
        host=server["host"],
        port=server["port"],
        username=server["username"],
        key_path=Path(server["client_key"]),
        known_hosts=Path(server["known_hosts"]),
    )


def _mapping() -> Any:
    from mapping import load_mapping

    mapping_text = (
        Path(__file__).resolve().parents[1] / "gateway/mappings/municipal.yaml"
    ).read_text(encoding="utf-8")
    # The bench export names its PDF in a column (empty for 9 awards in 10, which then wait
    # for theirs): the worked example's documents, with the path from that column.
    start = mapping_text.index("documents:")
    end = mapping_text.index("parties:")
    mapping_text = (
        mapping_text[:start]
        + 'documents:\n  - name: "工事請負契約書_{案件番号}"\n    path: "{契約書ファイル}"\n'
        + "    required: false\n"
        + mapping_text[end:]
    )
    return load_mapping(mapping_text, name="municipal.yaml")


def _blobs(work: Path) -> Any:
    from core.blobs import BlobStore

    # Production defaults: encrypted, durable, and mirrored to the backup folder at once.
    return BlobStore(work / "blobs", secrets.token_bytes(32), mirror=work / "mirror")


def _check_blobs(blobs: Any, stored: list[tuple[str, str]], want_sha256: str) -> None:
    """Every (blob id, recorded SHA-256) decrypts to the served PDF and is mirrored."""
    from core.blobs import blob_path

    for blob_id, recorded in stored:
        got = hashlib.sha256(blobs.get(blob_id)).hexdigest()
        if got != want_sha256 or recorded != want_sha256:
            raise AssertionError(f"blob {blob_id}: {got} / recorded {recorded} != {want_sha256}")
        if not blob_path(blobs.mirror, blob_id).exists():
            raise AssertionError(f"blob {blob_id} not in the backup mirror")


# --- stacks (each built in its own process) ---------------------------------------------------


def _inspecting_engine(work: Path) -> Any:
    """A signing engine on a development PKI: intake inspects each award's PDFs with it (no
    envelope is signed here, so its TSA is never asked)."""
    from pyhanko.keys import load_cert_from_pemder

    from core.signing import RevocationData, SigningEngine, TimestampService, load_pkcs12_signer
    from core.signing.devpki import create_dev_pki

    passphrase = b"bench-passphrase"
    pki = create_dev_pki(work / "pki", passphrase=passphrase)
    return SigningEngine(
        key=load_pkcs12_signer(pki.signer_p12, passphrase),
        timestamps=TimestampService.from_urls(["http://127.0.0.1:9/tsa"]),
        trust_roots=[load_cert_from_pemder(str(pki.root_cert))],
        font_path=None,
        revinfo=RevocationData.from_files(crl_paths=[pki.root_crl], allow_fetching=False),
    )


class PipelineStack:
    """``schedules.intake.take_in_source`` on the export; operation i imports into database i."""

    def __init__(
        self,
        *,
        server: dict[str, Any],
        root: str,
        file: str,
        rows: int,
        databases: list[str],
        work: str,
        pdf_sha256: str,
    ) -> None:
        from core.runtime import Runtime
        from core.storage import create_database_engine, make_session_factory, migrate

        self.server, self.root, self.file, self.rows = server, root, file, rows
        self.pdf_sha256 = pdf_sha256
        self.mapping = _mapping()
        self.runtime = Runtime(
            blobs=_blobs(Path(work)),
            signing=_inspecting_engine(Path(work)),  # intake inspects every stored PDF
            buyer_name="開発市",
        )
        # databases[0] is the warm-up's (operation -1); each migrated before anything is timed
        self.engines = {i - 1: create_database_engine(url) for i, url in enumerate(databases)}
        for engine in self.engines.values():
            migrate(engine)
        self.sessions = {i: make_session_factory(e) for i, e in self.engines.items()}
        self.results: dict[int, Any] = {}

    def run(self, i: int) -> None:
        from decimal import Decimal

        from connectors.csv import CsvFormat
        from connectors.inbox import ReadLock
        from connectors.sftp import SftpSource
        from core.drafts import SigningAuthority
        from core.intake.policy import IntakePolicy
        from schedules.intake import SourceSpec, take_in_source

        def opener() -> Any:
            return SftpSource(
                endpoint=_endpoint(self.server),
                name="bench",
                directory=f"{self.root}/awards",
                pattern=self.file,
                csv_format=CsvFormat.from_options(self.mapping.format),
                read_lock=ReadLock(mode="none"),
                processed_dir=None,
                documents_dir=self.root,
            )

        register = [
            SigningAuthority("*", Decimal(5_000_000), "契約課長", "kacho@city.example.lg.jp"),
            SigningAuthority("*", None, "市長", "shicho@city.example.lg.jp"),
        ]
        self.results[i] = take_in_source(
            sessions=self.sessions[i],
            runtime=self.runtime,
            policy=IntakePolicy(),
            spec=SourceSpec("bench", self.mapping.kind, self.mapping, opener),
            authorities=register,
            batch_size=500,
        )

    def verify(self, i: int) -> None:
        from sqlalchemy import func, select

        from core.model import Award, AwardDocument

        result = self.results.pop(i)
        if (result.records, result.created, result.errors) != (self.rows, self.rows, 0):
            raise AssertionError(
                f"records {result.records}, created {result.created}, errors {result.errors}"
            )
        with self.sessions[i]() as session:
            awards = session.scalar(select(func.count()).select_from(Award))
            stored = [
                (row.blob_id, row.sha256)
                for row in session.execute(select(AwardDocument)).scalars()
            ]
        if awards != self.rows:
            raise AssertionError(f"{awards} awards stored of {self.rows}")
        if len(stored) != self.rows // PDF_EVERY:
            raise AssertionError(f"{len(stored)} PDFs stored of {self.rows // PDF_EVERY}")
        _check_blobs(self.runtime.blobs, stored, self.pdf_sha256)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


class FloorStack:
    """Download + ``csv`` parse, the PDFs over the same session into the same encrypted blob
    store, one Core bulk insert per table; operation i into its own tables."""

    def __init__(
        self,
        *,
        server: dict[str, Any],
        root: str,
        file: str,
        rows: int,
        database: str,
        work: str,
        pdf_sha256: str,
        count: int,
    ) -> None:
        from sqlalchemy import (
            JSON,
            Column,
            Date,
            Integer,
            MetaData,
            Numeric,
            String,
            Table,
            create_engine,
        )

        self.server, self.root, self.file, self.rows = server, root, file, rows
        self.pdf_sha256 = pdf_sha256
        self.blobs = _blobs(Path(work))
        self.engine = create_engine(database)
        self.meta = MetaData()
        self.tables: dict[int, tuple[Table, Table]] = {}
        for i in range(-1, count):
            suffix = f"{i + 1}"
            awards = Table(
                f"floor_awards_{suffix}",
                self.meta,
                Column("id", Integer, primary_key=True),
                Column("source", String(64)),
                Column("award_id", String(100)),
                Column("title", String(300)),
                Column("amount", Numeric(15, 0)),
                Column("award_date", Date),
                Column("department", String(200)),
                Column("counterparty", String(200)),
                Column("draft", JSON),
            )
            documents = Table(
                f"floor_documents_{suffix}",
                self.meta,
                Column("id", Integer, primary_key=True),
                Column("award_id", String(100)),
                Column("blob_id", String(64)),
                Column("sha256", String(64)),
            )
            self.tables[i] = (awards, documents)
        self.meta.create_all(self.engine)

    def run(self, i: int) -> None:
        from sqlalchemy import insert

        from connectors.sftp import open_sftp

        awards, documents = self.tables[i]
        stored: list[dict[str, Any]] = []
        with open_sftp(_endpoint(self.server)) as sftp:
            with sftp.open(f"{self.root}/awards/{self.file}", "rb") as fh:
                fh.prefetch()
                data = fh.read()
            reader = csv.reader(io.StringIO(data.decode("cp932"), newline=""))
            next(reader)
            rows = list(reader)
            for r in rows:
                if r[8]:
                    with sftp.open(f"{self.root}/{r[8]}", "rb") as fh:
                        fh.prefetch()
                        pdf = fh.read()
                    stored.append(
                        {
                            "award_id": r[0],
                            "blob_id": self.blobs.put(pdf),
                            "sha256": hashlib.sha256(pdf).hexdigest(),
                        }
                    )
        with self.engine.begin() as conn:
            conn.execute(
                insert(awards),
                [
                    {
                        "source": "floor",
                        "award_id": r[0],
                        "title": r[1],
                        "amount": 1000,
                        "award_date": dt.date(2025, 10, 1),
                        "department": r[4],
                        "counterparty": r[5],
                        "draft": {"title": r[1]},
                    }
                    for r in rows
                ],
            )
            if stored:
                conn.execute(insert(documents), stored)

    def verify(self, i: int) -> None:
        from sqlalchemy import func, select

        awards, documents = self.tables[i]
        with self.engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(awards)).scalar_one()
            stored = [(r.blob_id, r.sha256) for r in conn.execute(select(documents))]
        if count != self.rows or len(stored) != self.rows // PDF_EVERY:
            raise AssertionError(f"floor stored {count} rows and {len(stored)} PDFs")
        _check_blobs(self.blobs, stored, self.pdf_sha256)

    def close(self) -> None:
        self.engine.dispose()


# --- the run ----------------------------------------------------------------------------------


@contextmanager
def _databases(store: str, work: Path, count: int, tag: str) -> Iterator[list[str] | None]:
    """``count`` fresh databases of one store (None when PostgreSQL is unreachable)."""
    if store == "sqlite":
        yield [f"sqlite:///{work / f'{tag}-{k}.db'}" for k in range(count)]
        return
    with ExitStack() as stack:
        urls = [stack.enter_context(scratch_postgres()) for _ in range(count)]
        yield None if any(u is None for u in urls) else [u for u in urls if u is not None]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table or one JSON object."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="imports per stack")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from tests.fixtures.pdfs import make_pdf
    from tests.fixtures.sshd import running_sshd

    report: dict[str, Any] = {
        "bench": "intake",
        "rows": args.rows,
        "rounds": args.rounds,
        "machine_start": machine(),
    }
    wanted = [s.strip() for s in args.stores.split(",")]
    with tempfile.TemporaryDirectory(prefix="keiyaku-bench-") as tmp:
        work = Path(tmp)
        with running_sshd(work / "sshd") as sshd:
            root = sshd.root / "ebid"
            (root / "awards").mkdir(parents=True)
            write_export(root / "awards" / "awards.csv", args.rows)
            write_export(root / "awards" / "awards_x2.csv", args.rows * 2)
            pdf = make_pdf(pages=1, size_target=100_000)
            for n in range(PDF_EVERY, args.rows * 2 + 1, PDF_EVERY):
                folder = root / "契約書" / _award_date(n)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"R7-{n:06d}.pdf").write_bytes(pdf)
            server = {
                "host": sshd.host,
                "port": sshd.port,
                "username": sshd.username,
                "client_key": str(sshd.client_key),
                "known_hosts": str(sshd.known_hosts),
            }
            common = {
                "server": server,
                "root": str(root),
                "pdf_sha256": hashlib.sha256(pdf).hexdigest(),
            }
            report["export_bytes"] = (root / "awards" / "awards.csv").stat().st_size
            report["pdfs"] = args.rows // PDF_EVERY
            specs: dict[str, tuple[str, dict[str, Any]]] = {}
            with ExitStack() as dbs:
                for store in wanted:
                    pipeline_dbs = dbs.enter_context(
                        _databases(store, work, args.rounds + 1, "pipeline")
                    )
                    floor_dbs = dbs.enter_context(_databases(store, work, 1, "floor"))
                    if pipeline_dbs is None or floor_dbs is None:
                        report[store] = "skipped: unreachable"
                        continue
                    specs[f"pipeline-{store}"] = (
                        "bench.intake:PipelineStack",
                        {
                            **common,
                            "file": "awards.csv",
                            "rows": args.rows,
                            "databases": pipeline_dbs,
                            "work": str(work / f"pipeline-{store}"),
                        },
                    )
                    specs[f"floor-{store}"] = (
                        "bench.intake:FloorStack",
                        {
                            **common,
                            "file": "awards.csv",
                            "rows": args.rows,
                            "database": floor_dbs[0],
                            "work": str(work / f"floor-{store}"),
                            "count": args.rounds,
                        },
                    )
                if "sqlite" in wanted:
                    specs["pipeline-sqlite-x2"] = (
                        "bench.intake:PipelineStack",
                        {
                            **common,
                            "file": "awards_x2.csv",
                            "rows": args.rows * 2,
                            "databases": [
                                f"sqlite:///{work / f'x2-{k}.db'}" for k in range(args.rounds + 1)
                            ],
                            "work": str(work / "pipeline-x2"),
                        },
                    )
                with stacks(specs) as procs:
                    interleave(list(procs.values()), args.rounds)
                    figures = {name: proc.samples for name, proc in procs.items()}
    report["stacks"] = {name: s.as_dict() for name, s in figures.items()}
    lines = [
        f"export: {args.rows} awards, {report['export_bytes'] / 1e6:.1f} MB CP932, "
        f"{report['pdfs']} PDFs of {len(pdf) // 1000} KB over SFTP; {args.rounds} interleaved "
        f"rounds; load {report['machine_start']['load']} on {report['machine_start']['cores']} "
        "cores",
        f"{'stack':<22} {'p50 s':>8} {'p90 s':>8} {'rows/s':>9} {'peak MB':>8} {'verified':>9}",
    ]
    for name, s in figures.items():
        rows = args.rows * (2 if name.endswith("x2") else 1)
        lines.append(
            f"{name:<22} {s.p50_ms / 1000:8.2f} {s.p90_ms / 1000:8.2f} "
            f"{rows / (s.p50_ms / 1000):9.0f} {s.peak_mb:8.0f} {s.verified:9d}"
        )
    for store in wanted:
        if f"pipeline-{store}" in figures:
            value = ratio(figures[f"pipeline-{store}"].p50_ms, figures[f"floor-{store}"].p50_ms)
            report[f"pipeline_{store}_vs_floor"] = value
            lines.append(f"pipeline/floor ({store}): {value:.2f}x (target <= 3x)")
    if "pipeline-sqlite-x2" in figures:
        value = ratio(figures["pipeline-sqlite-x2"].peak_mb, figures["pipeline-sqlite"].peak_mb)
        report["x2_peak_vs_pipeline"] = value
        lines.append(f"peak RSS with a file twice as large: {value:.2f}x the pipeline's")
    report["machine_end"] = machine()
    lines.append(
        f"every import verified (awards, PDFs by SHA-256, mirror); load at end "
        f"{report['machine_end']['load']}"
    )
    emit(report, lines, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
