"""End-to-end throughput with 1, 2 and 3 nodes on one PostgreSQL: envelopes signed and delivered
per minute, and the scaling ratio, the node counts interleaved round by round.

    .venv/bin/python -m bench.nodes [--envelopes 60] [--nodes 1,2,3] [--rounds 2] [--node-cpu 0.5]
                                    [--tsa-latency-ms 0] [--pg URL] [--json]

A node is one process with its own signing engine (development PKI, RSA-2048), sharing one
PostgreSQL database and one blob folder (backup mirror on, as by default) with the others, as
`keiyaku serve` processes on several machines do; every node asks the same RFC 3161 TSA over
HTTP on loopback (``--tsa-latency-ms`` added). Each node, for its share of the envelopes:
creates an envelope (one one-page PDF, an internal approver and a contractor signer), sends it,
has both parties approve (two PAdES signatures), seals it (DSS + document timestamp) and issues
the completion certificate; the outbox row for a folder sink is written with the completion.
Meanwhile, and after its share is done, each node dispatches due deliveries from the *shared*
outbox (leases, ``FOR UPDATE SKIP LOCKED``): reads and decrypts the signed PDF and writes it to
the drop folder. A run ends when every envelope is completed and delivered; the time from the
common start to then gives envelopes/minute. Start-up (imports, key loading) is excluded by a
barrier. Every round runs each node count once, in an order rotated round by round, each in a
fresh scratch database, so the machine's load swings reach every count alike; the ratio to one
node comes from the median of the rounds.

Verified after each run (untimed): exactly one file per envelope in the drop folder, each
byte for byte the envelope's signed document as stored (decrypted from the blob store), each
passing pyHanko validation with the development root (two approvals, the seal's document
timestamp); the node processes' peak RSS is reported.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text

from bench.harness import emit, loopback_tsa, machine, ratio

DEFAULT_PG = os.environ.get(
    "KEIYAKU_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PASSPHRASE = b"bench-passphrase"


def _scratch_postgres(admin_url: str) -> tuple[str, Callable[[], None]]:
    name = f"keiyaku_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat), to tell a
    saturated machine from a contended lock."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _node(
    index: int,
    url: str,
    work: Path,
    master_key: bytes,
    share: int,
    total: int,
    barrier: Any,
    results: Any,
    tsa_url: str,
) -> None:
    from core.blobs import BlobStore
    from core.envelopes.approvals import approve, record_view
    from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
    from core.envelopes.documents import read_document
    from core.envelopes.lifecycle import send_envelope
    from core.model import Delivery, Document
    from core.pushback.outbox import dispatch, enqueue
    from core.runtime import Runtime
    from core.signing import (
        RevocationData,
        SigningEngine,
        TimestampService,
        load_pkcs12_signer,
    )
    from core.signing.devpki import DevPki
    from core.states import DeliveryState, PartyRole
    from core.storage import create_database_engine, make_session_factory
    from tests.fixtures.pdfs import make_pdf

    pki = DevPki.at(work / "pki")
    from pyhanko.keys import load_cert_from_pemder

    engine = SigningEngine(
        key=load_pkcs12_signer(pki.signer_p12, PASSPHRASE),
        timestamps=TimestampService.from_urls([tsa_url]),
        trust_roots=[load_cert_from_pemder(str(pki.root_cert))],
        font_path=None,
        revinfo=RevocationData.from_files(crl_paths=[pki.root_crl], allow_fetching=False),
    )
    runtime = Runtime(
        blobs=BlobStore(work / "blobs", master_key, mirror=work / "mirror"),
        signing=engine,
        buyer_name="ベンチ市",
    )
    db = create_database_engine(url)
    sessions = make_session_factory(db)
    pdf = make_pdf(pages=1)
    drop = work / "drop"
    worker = f"node-{index}"

    def deliver(delivery: Delivery) -> None:
        with sessions() as s:
            doc = s.scalars(
                select(Document).where(Document.envelope_id == delivery.envelope_id)
            ).first()
            assert doc is not None
            (drop / f"{delivery.idempotency_key.replace(':', '_')}.pdf").write_bytes(
                read_document(runtime=runtime, document=doc)
            )

    def delivered() -> int:
        with sessions() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .where(
                        Delivery.state == DeliveryState.DELIVERED.value,
                        # signing tasks are outbox rows too (issue 12): only the sink's count
                        Delivery.target == "folder",
                    )
                )
                or 0
            )

    from core.envelopes.links import AccessCodePolicy, set_access_code

    code_hash = AccessCodePolicy(pepper=b"bench" * 4).hash("2468")  # hashed once, not measured

    def sign_one(label: str, deliver_to: str | None) -> None:
        with sessions() as s:
            envelope = create_envelope(
                session=s,
                runtime=runtime,
                title=f"ベンチ契約 {label}",
                amount=Decimal("1000000"),
                creator="ベンチ市 契約課",
                documents=[DocumentInput("契約書.pdf", pdf)],
                parties=[
                    PartyInput(PartyRole.APPROVER, "契約 花子", "k@city.example.jp", "ベンチ市"),
                    PartyInput(PartyRole.SIGNER, "署名 一郎", "s@example.jp", "株式会社一"),
                ],
                fields=[],
            )
            for party in envelope.parties:  # as the API sets them at creation
                set_access_code(session=s, party_id=party.id, code_hash=code_hash)
            s.commit()
            send_envelope(session=s, runtime=runtime, envelope_id=envelope.id, actor="bench")
            s.commit()
            for party in list(envelope.parties):
                record_view(session=s, envelope_id=envelope.id, party_id=party.id, ip="192.0.2.9")
                approve(
                    session=s,
                    runtime=runtime,
                    envelope_id=envelope.id,
                    party_id=party.id,
                    values={},
                    auth_method="email+access_code",  # link parties, as the signing pages
                    ip="192.0.2.9",
                )
            if deliver_to is not None:
                enqueue(
                    session=s,
                    target=deliver_to,
                    idempotency_key=f"{deliver_to}:{envelope.id}:completed",
                    payload={},
                    envelope_id=envelope.id,
                )
            s.commit()

    # Warm up (first-use costs: font subset, pyHanko and SQLAlchemy caches), not counted.
    for number in range(2):
        sign_one(f"warm-up {index}-{number}", None)
    barrier.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    sign_seconds = 0.0
    for number in range(share):
        t0 = time.perf_counter()
        sign_one(f"{index}-{number}", "folder")
        sign_seconds += time.perf_counter() - t0
        if number % 5 == 4:
            dispatch(sessions=sessions, handlers={"folder": deliver}, worker=worker, limit=10)
    while delivered() < total:
        result = dispatch(sessions=sessions, handlers={"folder": deliver}, worker=worker, limit=10)
        if not result.delivered:
            time.sleep(0.05)
    results.put(
        (
            index,
            time.perf_counter() - started,
            sign_seconds,
            share,
            time.process_time() - cpu_started,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    )
    engine.close()
    db.dispose()


_CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # cgroup v1 cpu controller (v2: cpu.max instead)


class CpuCaps:
    """One cgroup per node process limiting it to ``cores`` of CPU time, as if each node ran on
    a small machine of its own; PostgreSQL and the bench itself stay uncapped."""

    def __init__(self, cores: float | None) -> None:
        self.cores = cores
        self.groups: list[Path] = []

    def cap(self, pid: int) -> None:
        if self.cores is None:
            return
        group = _CPU_CGROUP / f"keiyaku-bench-{os.getpid()}-{len(self.groups)}"
        group.mkdir()
        self.groups.append(group)
        period = int((group / "cpu.cfs_period_us").read_text())
        (group / "cpu.cfs_quota_us").write_text(str(int(self.cores * period)))
        (group / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        for group in self.groups:
            group.rmdir()  # empty once its node exited
        self.groups.clear()


def _verify_drop(url: str, work: Path, master_key: bytes, envelopes: int) -> int:
    """One file per envelope, each the envelope's stored document byte for byte, each valid
    (two approvals, sealed); returns how many were checked."""
    import logging

    from pyhanko.keys import load_cert_from_pemder

    from core.blobs import BlobStore
    from core.envelopes.documents import read_document
    from core.model import Document
    from core.runtime import Runtime
    from core.signing import verify_pdf
    from core.signing.devpki import DevPki
    from core.storage import create_database_engine, make_session_factory

    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)
    roots = [load_cert_from_pemder(str(DevPki.at(work / "pki").root_cert))]
    runtime = Runtime(
        blobs=BlobStore(work / "blobs", master_key),
        signing=None,  # type: ignore[arg-type] - only reads documents
        buyer_name="ベンチ市",
    )
    files = sorted((work / "drop").iterdir())
    if len(files) != envelopes:
        raise AssertionError(f"{len(files)} delivered files for {envelopes} envelopes")
    db = create_database_engine(url)
    sessions = make_session_factory(db)
    checked = 0
    try:
        with sessions() as session:
            for path in files:
                # folder_<envelope id>_completed.pdf, as the node names it
                envelope_id = path.stem.split("_")[1]
                doc = session.scalars(
                    select(Document).where(Document.envelope_id == envelope_id)
                ).one()
                data = path.read_bytes()
                if data != read_document(runtime=runtime, document=doc):
                    raise AssertionError(f"{path.name} differs from the stored document")
                report = verify_pdf(data, trust_roots=roots)
                approvals = [s for s in report.signatures if s.kind == "approval"]
                if not report.ok or len(approvals) != 2:
                    raise AssertionError(f"{path.name}: {report.as_dict()}")
                checked += 1
    finally:
        db.dispose()
    return checked


def run(
    nodes: int,
    envelopes: int,
    admin_url: str,
    node_cpu: float | None,
    tsa_latency: float,
) -> dict[str, float]:
    """One measured run with ``nodes`` processes; returns its figures."""
    from core.blobs import BlobStore
    from core.signing.devpki import create_dev_pki
    from core.storage import create_database_engine, migrate

    url, drop_db = _scratch_postgres(admin_url)
    try:
        with tempfile.TemporaryDirectory(prefix="keiyaku-nodes-") as tmp:
            work = Path(tmp)
            pki = create_dev_pki(work / "pki", passphrase=PASSPHRASE)
            (work / "drop").mkdir()
            master_key = secrets.token_bytes(32)
            BlobStore(work / "blobs", master_key)
            db = create_database_engine(url)
            migrate(db)
            db.dispose()
            ctx = multiprocessing.get_context("spawn")
            barrier = ctx.Barrier(nodes + 1)
            results = ctx.Queue()
            shares = [envelopes // nodes + (i < envelopes % nodes) for i in range(nodes)]
            with loopback_tsa(pki.directory, PASSPHRASE, tsa_latency) as tsa:
                procs = [
                    ctx.Process(
                        target=_node,
                        args=(
                            i,
                            url,
                            work,
                            master_key,
                            shares[i],
                            envelopes,
                            barrier,
                            results,
                            tsa.url,
                        ),
                    )
                    for i in range(nodes)
                ]
                caps = CpuCaps(node_cpu)
                for proc in procs:
                    proc.start()
                    assert proc.pid is not None
                    caps.cap(proc.pid)
                barrier.wait()
                started, busy_before = time.perf_counter(), _busy_seconds()
                done = [results.get(timeout=1800) for _ in procs]
                wall = time.perf_counter() - started
                busy = _busy_seconds() - busy_before
                for proc in procs:
                    proc.join(timeout=60)
                caps.remove()
            verified = _verify_drop(url, work, master_key, envelopes)
            sign_ms = 1000 * sum(d[2] for d in done) / envelopes
            return {
                "nodes": nodes,
                "wall_s": round(wall, 3),
                "per_minute": round(60 * envelopes / wall, 2),
                "ms_per_envelope_in_node": round(sign_ms, 1),
                "node_cpu_s": round(sum(d[4] for d in done), 2),
                "machine_busy_cores": round(busy / wall, 2),
                "node_peak_rss_mb": round(max(d[5] for d in done), 1),
                "verified": verified,
            }
    finally:
        drop_db()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one line per node count and the scaling, or one JSON object."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--envelopes", type=int, default=60, help="envelopes per run")
    parser.add_argument("--nodes", default="1,2,3", help="node counts to measure")
    parser.add_argument("--rounds", type=int, default=2, help="runs per node count")
    parser.add_argument("--tsa-latency-ms", type=float, default=0.0)
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument(
        "--node-cpu",
        type=float,
        default=None,
        help="cap each node at this many cores (cgroup v1 cpu controller, needs root): on a "
        "small machine, lets 3 nodes plus PostgreSQL fit the cores, so the ratio shows the "
        "software's scaling rather than the machine's core count",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.nodes.split(",")]
    report: dict[str, Any] = {
        "bench": "nodes",
        "envelopes": args.envelopes,
        "rounds": args.rounds,
        "node_cpu": args.node_cpu,
        "tsa_latency_ms": args.tsa_latency_ms,
        "machine_start": machine(),
    }
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    for r in range(args.rounds):
        shift = r % len(counts)
        for nodes in [*counts[shift:], *counts[:shift]]:
            runs[nodes].append(
                run(nodes, args.envelopes, args.pg, args.node_cpu, args.tsa_latency_ms / 1000)
            )
    figures: dict[str, Any] = {}
    for nodes, done in runs.items():
        figures[str(nodes)] = {
            "per_minute": round(statistics.median(d["per_minute"] for d in done), 2),
            "ms_per_envelope_in_node": round(
                statistics.median(d["ms_per_envelope_in_node"] for d in done), 1
            ),
            "node_peak_rss_mb": max(d["node_peak_rss_mb"] for d in done),
            "machine_busy_cores": round(
                statistics.median(d["machine_busy_cores"] for d in done), 2
            ),
            "verified": int(sum(d["verified"] for d in done)),
            "runs": done,
        }
    base = figures[str(counts[0])]["per_minute"]
    for fig in figures.values():
        fig["vs_first"] = ratio(fig["per_minute"], base)
    report["nodes"] = figures
    report["machine_end"] = machine()
    cap = f"; each node capped at {args.node_cpu} cores" if args.node_cpu else ""
    lines = [
        f"{args.envelopes} envelopes per run, {args.rounds} rounds (node counts rotated), TSA "
        f"over HTTP +{args.tsa_latency_ms:g} ms, backup mirror on{cap}; load "
        f"{report['machine_start']['load']} on {report['machine_start']['cores']} cores"
    ]
    for nodes, fig in figures.items():
        lines.append(
            f"nodes={nodes}: {fig['per_minute']:.0f} envelopes/min signed+sealed+delivered "
            f"(median of {len(fig['runs'])}); {fig['ms_per_envelope_in_node']:.0f} ms per "
            f"envelope inside a node; node peak RSS {fig['node_peak_rss_mb']:.0f} MB; machine "
            f"busy {fig['machine_busy_cores']:.2f} cores; {fig['verified']} delivered PDFs "
            "byte-compared and validated"
        )
    lines.append(
        "scaling: "
        + ", ".join(f"{n} nodes -> {fig['vs_first']:.2f}x" for n, fig in figures.items())
        + f"; load at end {report['machine_end']['load']}"
    )
    emit(report, lines, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
