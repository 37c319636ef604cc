"""Push-back to SFTP: the dispatcher against the floor of the same files in one raw session.

    .venv/bin/python -m bench.pushback [--n 1000] [--pdf-kb 200] [--rounds 3] [--workers 2]

Starts a private OpenSSH sshd on 127.0.0.1 (as the tests do), makes N completed envelopes (one
signed PDF of ``--pdf-kb`` KB and a completion certificate each, in the encrypted blob store, on
SQLite) and one outbox delivery per envelope to an SFTP sink that is sent the PDF, the
certificate, a CP932 CSV finance record and a trigger file. Then, per round:

- ``dispatcher``: ``schedules.pushback.run_until_idle`` delivers all N: claim leases, read and
  decrypt the documents, render names and the record, upload each file under a temporary name
  and ``posix_rename`` it, write the trigger and the receipt, mark the delivery delivered;
- ``floor``: the very same files (bytes and names, rendered beforehand) written by one raw
  paramiko session with pipelined writes, no rename, no receipt, no database. Through
  paramiko's public API each file costs an open and a close round trip; the sink pipelines the
  opens of a delivery's files together (and checks every write's answer, which paramiko's
  pipelined write does not), so its uploads alone may take less than the floor's: the ratio
  is the product's whole path against the plain way of writing these files.

- ``dispatcher xK`` (with ``--workers K``): K dispatcher processes at once on the same outbox,
  as a deployment scales it (leases keep them off each other's deliveries); start-up excluded.

Within a round the steps run in an order rotated round by round, so load swings hit both.
Every round is verified byte for byte: each file the dispatcher delivered (PDF, certificate,
record, trigger) is read back from the sink folder and compared with the bytes rendered for
that envelope beforehand, and the floor's copy likewise. It prints deliveries/s, the ratio
dispatcher / floor in time (the target is at most 2), the spread over the rounds, the bench
process's peak RSS and the machine's load (``--json``: one JSON object).
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
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from bench.harness import emit, machine, ratio
from connectors.outbound import ContentSpec, RecordSpec, render_outbound
from connectors.sftp import SftpEndpoint, SftpSink, open_sftp
from core.blobs import BlobStore
from core.pushback.deliveries import assemble_content, delivery_key
from core.pushback.outbox import RetryPolicy
from core.runtime import Runtime
from core.storage import create_database_engine, migrate
from schedules.pushback import Target, run_until_idle
from tests.fixtures.pushback import enqueue_completed, make_completed_envelopes
from tests.fixtures.sshd import running_sshd

SPEC = ContentSpec(
    directory="{management_number}",
    record=RecordSpec(
        format="csv",
        encoding="cp932",
        fields={
            "契約番号": "management_number",
            "件名": "title",
            "契約相手方": "contractor_name",
            "契約金額": "amount",
            "締結日": "concluded_on",
        },
    ),
)
TRIGGER = "{management_number}.end"


def _prepare(work: Path, n: int, pdf_kb: int) -> tuple[Any, Runtime, list[str]]:
    engine = create_database_engine(f"sqlite:///{work / 'bench.db'}")
    migrate(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    # Push-back never signs: the runtime's signing engine is not needed here.
    runtime = Runtime(
        blobs=BlobStore(work / "blobs", secrets.token_bytes(32)),
        signing=None,  # type: ignore[arg-type]
        buyer_name="開発市",
    )
    with sessions() as session:
        ids = make_completed_envelopes(session, runtime.blobs, n, pdf_size=pdf_kb * 1024)
    return sessions, runtime, ids


def _dispatch_round(
    sessions: Any, runtime: Runtime, ids: list[str], endpoint: SftpEndpoint, root: str
) -> float:
    with sessions() as session:
        enqueue_completed(session, ["dms"], ids)
    sink = SftpSink(name="dms", endpoint=endpoint, root=root, trigger=TRIGGER)
    start = time.perf_counter()
    try:
        totals = run_until_idle(
            sessions=sessions,
            runtime=runtime,
            targets={"dms": Target(sink, SPEC)},
            worker="bench",
            policy=RetryPolicy(max_attempts=1),
            limit=50,
        )
    finally:
        sink.close()
    elapsed = time.perf_counter() - start
    assert len(totals.delivered) == len(ids), totals
    return elapsed


def _worker(
    url: str,
    blob_root: str,
    master_key: bytes,
    endpoint: SftpEndpoint,
    root: str,
    go: Any,
    out: Any,
) -> None:
    """One dispatcher process of ``--workers``: waits for ``go``, delivers until idle."""
    engine = create_database_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    runtime = Runtime(
        blobs=BlobStore(Path(blob_root), master_key),
        signing=None,  # type: ignore[arg-type]
        buyer_name="開発市",
    )
    sink = SftpSink(name="dms", endpoint=endpoint, root=root, trigger=TRIGGER)
    go.wait()
    totals = run_until_idle(
        sessions=sessions,
        runtime=runtime,
        targets={"dms": Target(sink, SPEC)},
        worker=f"bench-{os.getpid()}",
        policy=RetryPolicy(max_attempts=1),
        limit=10,
    )
    sink.close()
    out.put((len(totals.delivered), time.perf_counter()))


def _parallel_round(
    work: Path,
    runtime: Runtime,
    ids: list[str],
    sessions: Any,
    endpoint: SftpEndpoint,
    root: str,
    workers: int,
) -> float:
    with sessions() as session:
        enqueue_completed(session, ["dms"], ids)
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                f"sqlite:///{work / 'bench.db'}",
                str(runtime.blobs.root),
                runtime.blobs._master_key,
                endpoint,
                root,
                go,
                out,
            ),
        )
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(3)  # start-up (imports) is not what is measured
    start = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    assert sum(r[0] for r in results) == len(ids), results
    return max(r[1] for r in results) - start


def _files(sessions: Any, runtime: Runtime, ids: list[str]) -> list[tuple[str, str, bytes]]:
    """(folder, name, bytes) of every file the dispatcher writes, trigger included."""
    from connectors._drop import DropPlan

    files = []
    with sessions() as session:
        for envelope_id in ids:
            content = assemble_content(
                session=session,
                runtime=runtime,
                envelope_id=envelope_id,
                event="completed",
                guarantee_keys=False,
            )
            out = render_outbound(content, SPEC, delivery_key("dms", envelope_id, "completed"))
            for file in DropPlan.build(out, TRIGGER).files:
                files.append((out.directory, file.name, file.data))
    return files


def _floor_round(files: list[tuple[str, str, bytes]], endpoint: SftpEndpoint, root: str) -> float:
    start = time.perf_counter()
    with open_sftp(endpoint) as sftp:
        sftp.mkdir(root)
        made: set[str] = set()
        for folder, name, data in files:
            path = f"{root}/{folder}"
            if path not in made:
                sftp.mkdir(path)
                made.add(path)
            with sftp.open(f"{path}/{name}", "wb") as fh:
                fh.set_pipelined(True)
                fh.write(data)
    return time.perf_counter() - start


def _check_delivered(files: list[tuple[str, str, bytes]], root: Path) -> int:
    """Every expected file at its place with its bytes, and nothing else; the file count."""
    found = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    # The dispatcher's idempotency receipts (one per delivery) are its own, not compared.
    receipts = {f for f in found if f.startswith(".keiyaku-receipts/")}
    found -= receipts
    expected = {f"{folder}/{name}" for folder, name, _ in files}
    if found != expected:
        raise AssertionError(
            f"sink differs: missing {sorted(expected - found)[:3]}, extra {sorted(found - expected)[:3]}"
        )
    for folder, name, data in files:
        if (root / folder / name).read_bytes() != data:
            raise AssertionError(f"{folder}/{name}: bytes differ")
    return len(files)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--pdf-kb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="also K dispatcher processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    start_machine = machine()
    lines: list[str] = []
    verified = 0
    with tempfile.TemporaryDirectory() as tmp, running_sshd(Path(tmp) / "sshd") as server:
        work = Path(tmp)
        endpoint = SftpEndpoint(
            host=server.host,
            port=server.port,
            username=server.username,
            key_path=server.client_key,
            known_hosts=server.known_hosts,
        )
        sessions, runtime, ids = _prepare(work, args.n, args.pdf_kb)
        files = _files(sessions, runtime, ids)
        megabytes = sum(len(f[2]) for f in files) / 1e6
        lines.append(
            f"{args.n} completed envelopes ({args.pdf_kb} KB PDF + certificate): {len(files)} "
            f"files, {megabytes:.1f} MB per round; {args.rounds} rounds, order rotated; "
            f"load {start_machine['load']} on {start_machine['cores']} cores"
        )
        floor: list[float] = []
        dispatcher: list[float] = []
        parallel: list[float] = []
        for index in range(args.rounds):
            # Fresh envelopes per dispatcher round, so every delivery is new to the sink.
            with sessions() as session:
                round_ids = (
                    ids
                    if index == 0
                    else make_completed_envelopes(
                        session,
                        runtime.blobs,
                        args.n,
                        pdf_size=args.pdf_kb * 1024,
                        prefix=f"R{index}",
                    )
                )
            round_files = files if index == 0 else _files(sessions, runtime, round_ids)
            floor_root = server.root / f"floor-{index}"
            sink_root = server.root / f"sink-{index}"

            def run_floor(root: Path = floor_root, todo: list = round_files) -> None:
                floor.append(_floor_round(todo, endpoint, str(root)))

            def run_dispatcher(root: Path = sink_root, todo: list = round_ids) -> None:
                dispatcher.append(_dispatch_round(sessions, runtime, todo, endpoint, str(root)))

            steps = [run_floor, run_dispatcher]
            for step in steps[index % 2 :] + steps[: index % 2]:
                step()
            verified += _check_delivered(round_files, floor_root)
            verified += _check_delivered(round_files, sink_root)
            if args.workers > 1:
                with sessions() as session:
                    more = make_completed_envelopes(
                        session,
                        runtime.blobs,
                        args.n,
                        pdf_size=args.pdf_kb * 1024,
                        prefix=f"P{index}",
                    )
                parallel.append(
                    _parallel_round(
                        work,
                        runtime,
                        more,
                        sessions,
                        endpoint,
                        str(server.root / f"par-{index}"),
                        args.workers,
                    )
                )
        lines.append(f"{'':12}{'deliveries/s':>14}{'MB/s':>8}{'min s':>8}{'max s':>8}")
        rows = [("floor", floor), ("dispatcher", dispatcher)]
        if parallel:
            rows.append((f"dispatcher x{args.workers}", parallel))
        report: dict = {"bench": "pushback", "n": args.n, "rounds": args.rounds, "stacks": {}}
        for label, times in rows:
            best = statistics.median(times)
            report["stacks"][label] = {
                "deliveries_per_s": round(args.n / best, 1),
                "median_s": round(best, 3),
                "min_s": round(min(times), 3),
                "max_s": round(max(times), 3),
            }
            lines.append(
                f"{label:12}{args.n / best:>14.1f}{megabytes / best:>8.1f}"
                f"{min(times):>8.2f}{max(times):>8.2f}"
            )
        report["dispatcher_vs_floor"] = ratio(
            statistics.median(dispatcher), statistics.median(floor)
        )
        report["files_verified"] = verified
        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        spread = max(dispatcher) / min(dispatcher)
        lines.append(
            f"ratio dispatcher/floor (median time): {report['dispatcher_vs_floor']:.2f}x "
            "(target <= 2.0)"
        )
        if parallel:
            report["dispatcher_x_vs_floor"] = ratio(
                statistics.median(parallel), statistics.median(floor)
            )
            lines.append(
                f"ratio dispatcher x{args.workers}/floor (median time): "
                f"{report['dispatcher_x_vs_floor']:.2f}x"
            )
        lines.append(f"round-to-round spread of the dispatcher: {spread:.2f}x (noise)")
        lines.append(
            f"{verified} delivered files compared byte for byte with what was rendered; "
            f"bench process peak RSS {report['peak_rss_mb']} MB"
        )
    report["machine_start"] = start_machine
    report["machine_end"] = machine()
    lines.append(f"load at end {report['machine_end']['load']}")
    emit(report, lines, as_json=args.json)


if __name__ == "__main__":
    main()
