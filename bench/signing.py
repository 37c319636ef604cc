"""Approval signing: the engine against bare pyHanko and a floor, measured in one run.

    .venv/bin/python -m bench.signing [--n 30] [--sizes 100k,1m,10m] [--no-workers]

For each PDF size it times N approvals:

- ``engine``: one approval through the gateway (``core.envelopes.approve``:
  envelope state change, text-field filling, signature with timestamp, encrypted blob storage,
  audit events, SQLite commit) on an envelope whose other party is still to act;
- ``pyhanko-doc``: bare pyHanko as its documentation shows (``SimpleSigner.load_pkcs12``,
  ``PdfSigner.sign_pdf``) with the same in-process timestamper;
- ``pyhanko-tuned``: the same with the parsed key object cached and the signature size reserved
  (``bytes_reserved``, so no dry-run signature), as ``notes/signing.md`` describes;
- ``floor``: one SHA-256 over the file plus one RSA-2048 signature with ``cryptography``.

Every variant signs the same prepared PDF with the same development PKI (RSA-2048) and the same
in-process development TSA, so the timestamp token costs the same everywhere. It prints
approvals/s, p50/p90 ms, the engine's peak traced memory as a multiple of the PDF size, the ratios
engine / tuned and engine / floor, and the throughput of 2 worker processes against 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import multiprocessing
import secrets
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.signers.pdf_cms import SimpleSigner
from sqlalchemy.orm import Session, sessionmaker

from core.blobs import BlobStore
from core.certificate import find_cjk_font
from core.devpki import DevPki, create_dev_pki
from core.envelopes import (
    DocumentInput,
    FieldInput,
    PartyInput,
    Runtime,
    approve,
    create_envelope,
    send_envelope,
)
from core.signing import RevocationData, SigningEngine, TimestampService, load_pkcs12_signer
from core.states import PartyRole
from core.storage import create_database_engine, migrate
from tests.fixtures.pdfs import make_pdf

PASSPHRASE = b"bench-passphrase"
SIZES = {"100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}


@dataclass
class Result:
    """Timings of one variant at one size."""

    name: str
    times: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.times) * 1000

    @property
    def p90(self) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000

    @property
    def per_second(self) -> float:
        return len(self.times) / sum(self.times)


def _timestamps(pki: DevPki) -> TimestampService:
    return TimestampService.development(
        tsa_cert_path=pki.tsa_cert,
        tsa_key_path=pki.tsa_key,
        chain_paths=[pki.root_cert],
        key_passphrase=PASSPHRASE,
    )


def _engine(pki: DevPki) -> SigningEngine:
    from pyhanko.keys import load_cert_from_pemder

    return SigningEngine(
        key=load_pkcs12_signer(pki.signer_p12, PASSPHRASE),
        timestamps=_timestamps(pki),
        trust_roots=[load_cert_from_pemder(str(pki.root_cert))],
        font_path=find_cjk_font(),
        revinfo=RevocationData.from_files(crl_paths=[pki.root_crl], allow_fetching=False),
    )


class _GatewayBench:
    """Envelopes ready for their first approval, in a fresh SQLite database and blob folder."""

    def __init__(self, work: Path, pki: DevPki, pdf: bytes) -> None:
        self.work = work
        self.engine = _engine(pki)
        db = create_database_engine(f"sqlite:///{work / 'bench.db'}")
        migrate(db)
        self.db = db
        self.sessions: sessionmaker[Session] = sessionmaker(db, expire_on_commit=False)
        self.runtime = Runtime(
            blobs=BlobStore(work / "blobs", secrets.token_bytes(32)),
            signing=self.engine,
            buyer_name="ベンチ市",
        )
        self.pdf = pdf

    def ready(self, count: int) -> list[tuple[str, str, str]]:
        """``count`` sent envelopes: (envelope id, first party id, its field id)."""
        parties = [
            PartyInput(PartyRole.SIGNER, "受注 太郎", "taro@example.jp", "株式会社ベンチ"),
            PartyInput(PartyRole.SIGNER, "発注 花子", "hanako@city.example.jp", "ベンチ市"),
        ]
        fields = [
            FieldInput(document=0, party=0, label="記入日", page=1, rect=(100, 100, 300, 120))
        ]
        out = []
        with self.sessions() as session:
            for _ in range(count):
                env = create_envelope(
                    session=session,
                    runtime=self.runtime,
                    title="ベンチ",
                    creator="bench",
                    documents=[DocumentInput("契約書.pdf", self.pdf)],
                    parties=parties,
                    fields=fields,
                )
                session.commit()
                send_envelope(
                    session=session, runtime=self.runtime, envelope_id=env.id, actor="bench"
                )
                session.commit()
                out.append((env.id, env.parties[0].id, env.fields[0].id))
        return out

    def approve(self, envelope_id: str, party_id: str, field_id: str) -> None:
        with self.sessions() as session:
            approve(
                session=session,
                runtime=self.runtime,
                envelope_id=envelope_id,
                party_id=party_id,
                values={field_id: "令和7年10月1日"},
                auth_method="email+access_code",
                ip="127.0.0.1",
            )

    def close(self) -> None:
        self.engine.close()
        self.db.dispose()


class _CachedKeySigner(SimpleSigner):
    """pyHanko's SimpleSigner with the private key parsed once (the 'tuned' baseline)."""

    def __init__(self, base: SimpleSigner) -> None:
        super().__init__(
            signing_cert=base.signing_cert,
            signing_key=base.signing_key,
            cert_registry=base.cert_registry,
        )
        self._key: Any = serialization.load_der_private_key(base.signing_key.dump(), None)

    def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
        return self._key.sign(data, padding.PKCS1v15(), getattr(hashes, digest_algorithm.upper())())


def _bare_pyhanko(pki: DevPki, pdf: bytes, *, tuned: bool) -> Callable[[int], None]:
    signer: SimpleSigner = SimpleSigner.load_pkcs12(str(pki.signer_p12), passphrase=PASSPHRASE)
    if tuned:
        signer = _CachedKeySigner(signer)
    timestamper = _timestamps(pki).timestamper
    reserved: dict[str, int] = {}

    def sign(i: int) -> None:
        meta = signers.PdfSignatureMetadata(
            field_name=f"Sig{i}",
            reason="受注 太郎 様 taro@example.jp が承認しました",
            location="日本",
            subfilter=fields.SigSeedSubFilter.PADES,
        )
        pdf_signer = signers.PdfSigner(meta, signer=signer, timestamper=timestamper)
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        out = io.BytesIO()
        if tuned and "size" in reserved:
            pdf_signer.sign_pdf(writer, output=out, bytes_reserved=reserved["size"])
        else:
            pdf_signer.sign_pdf(writer, output=out)
            if tuned:
                # Measure the container once, then reserve it with margin from then on.
                reserved["size"] = 2 * (len(_contents_hex(out.getvalue())) // 2) + 2048

    return sign


def _contents_hex(data: bytes) -> bytes:
    start = data.rindex(b"/Contents <") + len(b"/Contents <")
    return data[start : data.index(b">", start)]


def _floor(pki: DevPki, pdf: bytes) -> Callable[[int], None]:
    from cryptography.hazmat.primitives.serialization import pkcs12

    key, _, _ = pkcs12.load_key_and_certificates(pki.signer_p12.read_bytes(), PASSPHRASE)
    assert key is not None

    def sign(_: int) -> None:
        digest = hashlib.sha256(pdf).digest()
        key.sign(digest, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]

    return sign


def _time(name: str, fn: Callable[[int], None], n: int, warmup: int = 2) -> Result:
    for i in range(warmup):
        fn(-1 - i)
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return Result(name, times)


def _engine_run(work: Path, pki: DevPki, pdf: bytes, n: int) -> tuple[Result, float]:
    bench = _GatewayBench(work, pki, pdf)
    try:
        ready = bench.ready(n + 3)
        result = _time("engine", lambda i: bench.approve(*ready[i if i >= 0 else n - i]), n)
        # Memory in a separate, untimed approval: tracemalloc slows everything it watches.
        envelope_id, party_id, field_id = ready[n]
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        bench.approve(envelope_id, party_id, field_id)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return result, peak / len(pdf)
    finally:
        bench.close()


def _worker(args: tuple[str, str, int, int]) -> float:
    work, pki_dir, size, n = args
    pki = DevPki.at(Path(pki_dir))
    pdf = make_pdf(pages=2, size_target=size)
    bench = _GatewayBench(Path(work), pki, pdf)
    try:
        ready = bench.ready(n)
        start = time.perf_counter()
        for item in ready:
            bench.approve(*item)
        return time.perf_counter() - start
    finally:
        bench.close()


def _throughput(root: Path, pki: DevPki, size: int, n: int, processes: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    jobs = []
    for i in range(processes):
        work = root / f"w{processes}-{i}"
        work.mkdir()
        jobs.append((str(work), str(pki.directory), size, n))
    with ctx.Pool(processes) as pool:
        # Each worker times only its approvals; the wall clock spans the slowest worker.
        durations = pool.map(_worker, jobs)
    return processes * n / max(durations)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="approvals per variant and size")
    parser.add_argument("--sizes", default="100k,1m,10m")
    parser.add_argument("--no-workers", action="store_true", help="skip the 1 vs 2 process run")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="keiyaku-bench-") as tmp:
        root = Path(tmp)
        pki = create_dev_pki(root / "pki", passphrase=PASSPHRASE)
        print(f"python {sys.version.split()[0]}, n={args.n}, RSA-2048 dev PKI, in-process dev TSA")
        header = f"{'size':>5} {'variant':<14} {'appr/s':>8} {'p50 ms':>8} {'p90 ms':>8}"
        print(header)
        for label in sizes:
            pdf = make_pdf(pages=2, size_target=SIZES[label])
            work = root / f"engine-{label}"
            work.mkdir()
            engine, memory = _engine_run(work, pki, pdf, args.n)
            results = [
                engine,
                _time("pyhanko-doc", _bare_pyhanko(pki, pdf, tuned=False), args.n),
                _time("pyhanko-tuned", _bare_pyhanko(pki, pdf, tuned=True), args.n),
                _time("floor", _floor(pki, pdf), args.n),
            ]
            for r in results:
                print(f"{label:>5} {r.name:<14} {r.per_second:8.1f} {r.p50:8.1f} {r.p90:8.1f}")
            tuned, floor = results[2], results[3]
            print(
                f"{label:>5} ratios: engine/tuned p50 {engine.p50 / tuned.p50:.2f}, "
                f"engine/doc p50 {engine.p50 / results[1].p50:.2f}, "
                f"engine/floor p50 {engine.p50 / floor.p50:.1f}; "
                f"engine peak memory {memory:.2f}x the PDF ({len(pdf) / 1e6:.2f} MB)"
            )
        if not args.no_workers:
            size = SIZES[sizes[0]]
            n = max(args.n, 20)
            one = _throughput(root, pki, size, n, 1)
            two = _throughput(root, pki, size, n, 2)
            print(
                f"workers ({sizes[0]}): 1 process {one:.1f}/s, 2 processes {two:.1f}/s, "
                f"ratio {two / one:.2f}"
            )
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
