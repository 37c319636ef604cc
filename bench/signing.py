"""Approval signing: a whole gateway approval against bare pyHanko and a floor, interleaved.

    .venv/bin/python -m bench.signing [--n 20] [--sizes 100k,1m,10m] [--stores sqlite,postgresql]
                                      [--tsa-latency-ms 0] [--no-workers] [--json]

Each stack lives in its own process (``bench.harness``) and signs the same prepared PDF with the
same development PKI (RSA-2048) and the same TSA, served over HTTP on 127.0.0.1 (pyHanko's
``DummyTimeStamper`` behind aiohttp, ``--tsa-latency-ms`` added per token). Per size, every
round has each stack do one operation, in an order rotated round by round:

- ``approval-sqlite`` / ``approval-postgresql``: ``core.envelopes.approvals.approve`` — the whole approval
  (read and decrypt the document, sign, then one transaction: the party's state, text field,
  new revision, the encrypted revision itself (staged), audit events; commit; then the
  revision's file written to the store and backup mirror) on an envelope whose other party is
  still to act; SQLite file or a scratch PostgreSQL database. The signing worker's later
  flush of the staged revisions (rewritten durably, rows deleted) is not in an approval's
  time; it is in the throughput of 2 processes against 1, which times each batch with it;
- ``approval-last-<first store>``: the approval that completes the envelope (the other party
  signed beforehand, untimed): its signature, then the seal in the same call (validation data,
  document timestamp, the signed completion certificate); reported for its time and memory,
  and verified as B-LTA (every signature long-term verifiable, a valid document timestamp);
- ``engine``: ``SigningEngine.sign_approval`` alone on the prepared PDF;
- ``pyhanko-doc``: bare pyHanko as documented (``SimpleSigner.load_pkcs12`` per approval,
  ``PdfSigner.sign_pdf``, ``HTTPTimeStamper``);
- ``pyhanko-tuned``: the parsed key cached, the signature size reserved (notes/signing.md),
  one event loop and one pooled HTTP session to the TSA (``async_sign_pdf``);
- ``floor``: SHA-256 over the file and one RSA-2048 signature with ``cryptography``.

Every output is verified after its timed part: pyHanko validation (``core.signing.verify_pdf``,
embedded data only) of every signature in the result — intact, trusted, timestamped, allowed
modifications — and the floor's signature checked with the public key. Peak RSS is each
operation's own (the process high-water mark reset before it); what one operation needs above
idle comes from a memory pass after the timed rounds, each operation on a heap trimmed back to
what is live (``bench.harness.memory_pass``). Printed: p50/p90 per stack, the
ratios from the same run (``approval_vs_tuned`` = approval p50 / tuned pyHanko p50), peak RSS
above idle as a multiple of the PDF, 2 approval processes against 1, and the load.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import secrets
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.harness import (
    MEMORY_OPS,
    emit,
    interleave,
    loopback_tsa,
    machine,
    memory_pass,
    parallel_batches,
    ratio,
    scratch_postgres,
    stacks,
)

PASSPHRASE = b"bench-passphrase"
SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}
REASON = "受注 太郎 様 taro@example.jp が承認しました"


def _pdf(size: int) -> bytes:
    from tests.fixtures.pdfs import make_pdf

    return make_pdf(pages=2, size_target=size)


def _trust_roots(pki_dir: str) -> list[Any]:
    from pyhanko.keys import load_cert_from_pemder

    from core.signing.devpki import DevPki

    return [load_cert_from_pemder(str(DevPki.at(Path(pki_dir)).root_cert))]


def check_signed(
    data: bytes, trust_roots: list[Any], signatures: int, *, sealed: bool = False
) -> None:
    """Raise unless ``data`` carries ``signatures`` signatures, each intact, trusted,
    timestamped with a valid token and followed only by allowed modifications (B-T: the
    validation data comes at sealing, so no LTV is asked of an approval); ``sealed``: also a
    valid document timestamp, and every signature long-term verifiable (B-LTA)."""
    import logging

    from core.signing import verify_pdf

    # pyHanko logs its revocation-free first pass at ERROR; the report below is the verdict.
    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)
    report = verify_pdf(data, trust_roots=trust_roots)
    if report.error is not None or report.unsigned_bytes:
        raise AssertionError(f"unreadable or unsigned tail: {report.as_dict()}")
    found = [s for s in report.signatures if s.kind == "approval"]
    if len(found) != signatures:
        raise AssertionError(f"{len(found)} signatures, expected {signatures}")
    for s in found:
        if not (s.intact and s.trusted and s.timestamp_present and s.timestamp_valid):
            raise AssertionError(f"signature {s.field_name} not valid: {s.as_dict()}")
        if not s.docmdp_ok:
            raise AssertionError(f"signature {s.field_name}: disallowed changes after it")
        if sealed and not s.ltv:
            raise AssertionError(f"signature {s.field_name} not long-term verifiable")
    stamps = [s for s in report.signatures if s.kind == "document_timestamp"]
    if sealed and not (stamps and all(s.intact and s.trusted for s in stamps)):
        raise AssertionError(f"no valid document timestamp: {report.as_dict()}")


def _engine(pki_dir: str, tsa_url: str) -> Any:
    from pyhanko.keys import load_cert_from_pemder

    from core.envelopes.certificate import find_cjk_font
    from core.signing import RevocationData, SigningEngine, TimestampService, load_pkcs12_signer
    from core.signing.devpki import DevPki

    pki = DevPki.at(Path(pki_dir))
    return SigningEngine(
        key=load_pkcs12_signer(pki.signer_p12, PASSPHRASE),
        timestamps=TimestampService.from_urls([tsa_url]),
        trust_roots=[load_cert_from_pemder(str(pki.root_cert))],
        font_path=find_cjk_font(),
        revinfo=RevocationData.from_files(crl_paths=[pki.root_crl], allow_fetching=False),
    )


# --- stacks (each built in its own process) ---------------------------------------------------


class ApprovalStack:
    """Whole approvals through ``core.envelopes.approvals.approve`` on SQLite or PostgreSQL, backup
    mirror on; operation i approves the first party of the i-th prepared envelope."""

    def __init__(
        self,
        *,
        work: str,
        pki_dir: str,
        tsa_url: str,
        size: int,
        database_url: str,
        count: int,
        last: bool = False,
    ) -> None:
        from sqlalchemy.orm import sessionmaker

        from core.blobs import BlobStore
        from core.envelopes.creation import FieldInput, PartyInput
        from core.runtime import Runtime
        from core.states import PartyRole
        from core.storage import create_database_engine, migrate

        root = Path(work)
        root.mkdir(parents=True, exist_ok=True)
        self.engine = _engine(pki_dir, tsa_url)
        self.trust_roots = _trust_roots(pki_dir)
        self.db = create_database_engine(database_url)
        migrate(self.db)
        self.sessions = sessionmaker(self.db, expire_on_commit=False)
        self.runtime = Runtime(
            blobs=BlobStore(root / "blobs", secrets.token_bytes(32), mirror=root / "mirror"),
            signing=self.engine,
            buyer_name="ベンチ市",
        )
        self.pdf = _pdf(size)
        self.parties = [
            PartyInput(PartyRole.SIGNER, "受注 太郎", "taro@example.jp", "株式会社ベンチ"),
            PartyInput(PartyRole.SIGNER, "発注 花子", "hanako@city.example.jp", "ベンチ市"),
        ]
        self.fields = [
            FieldInput(document=0, party=0, label="記入日", page=1, rect=(100, 100, 300, 120))
        ]
        from core.envelopes.links import AccessCodePolicy

        # hashed once: a real hash, not what is measured
        self.code_hash = AccessCodePolicy(pepper=b"bench" * 4).hash("2468")
        self.last = last
        self.ready: dict[int, tuple[str, str, str]] = {}
        for i in range(-1, count):  # -1: the warm-up
            self.ready[i] = self._envelope()

    def _envelope(self) -> tuple[str, str, str]:
        from core.envelopes.creation import DocumentInput, create_envelope
        from core.envelopes.lifecycle import send_envelope
        from core.envelopes.links import set_access_code

        with self.sessions() as session:
            env = create_envelope(
                session=session,
                runtime=self.runtime,
                title="ベンチ",
                amount=Decimal("1000000"),
                creator="bench",
                documents=[DocumentInput("契約書.pdf", self.pdf)],
                parties=self.parties,
                fields=self.fields,
            )
            # Each party gets its access code, as the API and the compose page set them at
            # creation (an envelope whose party cannot authenticate is never sent).
            for party in env.parties:
                set_access_code(session=session, party_id=party.id, code_hash=self.code_hash)
            session.commit()
            send_envelope(session=session, runtime=self.runtime, envelope_id=env.id, actor="bench")
            session.commit()
            ids = env.id, env.parties[0].id, env.fields[0].id
        if not self.last:
            return ids
        # The last approval: the first party has signed (untimed), the second one's completes
        # the envelope (its signature, then the seal: validation data, document timestamp,
        # the signed completion certificate).
        self._approve(*ids)
        return ids[0], self.parties_of(ids[0])[1], ""

    def parties_of(self, envelope_id: str) -> list[str]:
        from core.envelopes.lifecycle import get_envelope

        with self.sessions() as session:
            env = get_envelope(session=session, envelope_id=envelope_id)
            return [p.id for p in env.parties]

    def _approve(self, envelope_id: str, party_id: str, field_id: str) -> None:
        from core.envelopes.approvals import approve

        with self.sessions() as session:
            approve(
                session=session,
                runtime=self.runtime,
                envelope_id=envelope_id,
                party_id=party_id,
                values={field_id: "令和7年10月1日"} if field_id else {},
                auth_method="email+access_code",
                ip="127.0.0.1",
            )

    def run(self, i: int) -> None:
        self._approve(*self.ready[i])

    def settle(self) -> None:
        """What the signing worker does after approvals: the staged signature blobs written
        durably into the store and mirror, their rows deleted (core.staged_blobs)."""
        from core.staged_blobs import flush_staged

        flush_staged(sessions=self.sessions, runtime=self.runtime)

    def verify(self, i: int) -> None:
        from core.envelopes.documents import read_document
        from core.envelopes.lifecycle import get_envelope
        from core.states import PartyState

        envelope_id, party_id, _ = self.ready[i]
        with self.sessions() as session:
            env = get_envelope(session=session, envelope_id=envelope_id)
            party = next(p for p in env.parties if p.id == party_id)
            if party.state is not PartyState.COMPLETED and party.state != "completed":
                raise AssertionError(f"party state {party.state}")
            data = read_document(runtime=self.runtime, document=env.documents[0])
            check_signed(data, self.trust_roots, 2 if self.last else 1, sealed=self.last)
            if self.last and env.state != "completed":
                raise AssertionError(f"envelope state {env.state} after the last approval")
            # The backup mirror holds every revision of the document as well.
            for rev in env.documents[0].revisions:
                mirror = self.runtime.blobs.mirror
                assert mirror is not None
                if not any(mirror.rglob(f"{rev.blob_id}*")):
                    raise AssertionError(f"revision {rev.blob_id} not in the backup mirror")

    def close(self) -> None:
        self.engine.close()
        self.db.dispose()


class EngineStack:
    """``SigningEngine.sign_approval`` alone, on the prepared PDF."""

    def __init__(self, *, pki_dir: str, tsa_url: str, size: int) -> None:
        from core.signing import FieldBox

        self.engine = _engine(pki_dir, tsa_url)
        self.trust_roots = _trust_roots(pki_dir)
        self.prepared = self.engine.prepare(
            _pdf(size),
            certificate_id="0" * 32,
            fields=[FieldBox(name="f1", page=1, rect=(100, 100, 300, 120))],
        )
        self.out: dict[int, bytes] = {}

    def run(self, i: int) -> None:
        self.out[i] = self.engine.sign_approval(
            self.prepared, signature_field="Party1", reason=REASON, values={"f1": "令和7年10月1日"}
        )

    def verify(self, i: int) -> None:
        check_signed(self.out.pop(i), self.trust_roots, 1)

    def close(self) -> None:
        self.engine.close()


class PyhankoStack:
    """Bare pyHanko, as documented or tuned (cached key object, reserved signature size)."""

    def __init__(self, *, pki_dir: str, tsa_url: str, size: int, tuned: bool) -> None:
        from pyhanko.sign.timestamps import HTTPTimeStamper

        from core.signing.devpki import DevPki

        self.pki = DevPki.at(Path(pki_dir))
        self.tuned = tuned
        self.trust_roots = _trust_roots(pki_dir)
        self.loop: Any = None
        if tuned:
            # Tuned also keeps one event loop and one pooled HTTP session to the TSA, as the
            # engine does: otherwise each signature pays asyncio.run and a new connection,
            # and the gateway would be compared with a strawman.
            import asyncio

            import aiohttp

            async def pooled() -> aiohttp.ClientSession:
                return aiohttp.ClientSession()

            self.loop = asyncio.new_event_loop()
            self.session = self.loop.run_until_complete(pooled())
            self.timestamper = HTTPTimeStamper(tsa_url, session=self.session)
        else:
            self.timestamper = HTTPTimeStamper(tsa_url)
        self.pdf = _pdf(size)
        self.signer: Any = self._load() if tuned else None
        self.reserved: int | None = None
        self.out: dict[int, bytes] = {}

    def _load(self) -> Any:
        from pyhanko.sign.signers.pdf_cms import SimpleSigner

        signer = SimpleSigner.load_pkcs12(str(self.pki.signer_p12), passphrase=PASSPHRASE)
        return _cached_key_signer(signer) if self.tuned else signer

    def run(self, i: int) -> None:
        from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
        from pyhanko.sign import fields, signers

        meta = signers.PdfSignatureMetadata(
            field_name=f"Sig{i + 1000}",
            reason=REASON,
            location="日本",
            subfilter=fields.SigSeedSubFilter.PADES,
        )
        signer = self.signer if self.tuned else self._load()
        pdf_signer = signers.PdfSigner(meta, signer=signer, timestamper=self.timestamper)
        writer = IncrementalPdfFileWriter(io.BytesIO(self.pdf))
        out = io.BytesIO()
        if self.tuned:
            self.loop.run_until_complete(
                pdf_signer.async_sign_pdf(writer, output=out, bytes_reserved=self.reserved)
            )
            if self.reserved is None:  # measure the container once (warm-up), reserve it after
                self.reserved = len(_contents_hex(out.getvalue())) + 2048
        else:
            pdf_signer.sign_pdf(writer, output=out)
        self.out[i] = out.getvalue()

    def verify(self, i: int) -> None:
        out = self.out.pop(i)
        if self.tuned and i >= 0 and len(_contents_hex(out)) != self.reserved:
            # tuned means the size is reserved, so pyHanko skips its dry-run estimate
            raise AssertionError(f"tuned pyHanko did not sign into {self.reserved} reserved bytes")
        check_signed(out, self.trust_roots, 1)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.session.close())
            self.loop.close()


def _cached_key_signer(base: Any) -> Any:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from pyhanko.sign.signers.pdf_cms import SimpleSigner

    class CachedKeySigner(SimpleSigner):
        """pyHanko's SimpleSigner with the private key parsed once."""

        def __init__(self) -> None:
            super().__init__(
                signing_cert=base.signing_cert,
                signing_key=base.signing_key,
                cert_registry=base.cert_registry,
            )
            self._key: Any = serialization.load_der_private_key(base.signing_key.dump(), None)

        def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
            algorithm = getattr(hashes, digest_algorithm.upper())()
            return bytes(self._key.sign(data, padding.PKCS1v15(), algorithm))

    return CachedKeySigner()


def _contents_hex(data: bytes) -> bytes:
    start = data.rindex(b"/Contents <") + len(b"/Contents <")
    return data[start : data.index(b">", start)]


class FloorStack:
    """One SHA-256 over the file and one RSA-2048 signature: the work no signer can skip."""

    def __init__(self, *, pki_dir: str, size: int) -> None:
        from cryptography.hazmat.primitives.serialization import pkcs12

        from core.signing.devpki import DevPki

        p12 = DevPki.at(Path(pki_dir)).signer_p12.read_bytes()
        self.key: Any = pkcs12.load_key_and_certificates(p12, PASSPHRASE)[0]
        self.pdf = _pdf(size)
        self.out: dict[int, bytes] = {}

    def run(self, i: int) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, utils

        digest = hashlib.sha256(self.pdf).digest()
        self.out[i] = self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

    def verify(self, i: int) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        self.key.public_key().verify(self.out.pop(i), self.pdf, padding.PKCS1v15(), hashes.SHA256())

    def close(self) -> None:
        pass


# --- the run ----------------------------------------------------------------------------------


def _specs(
    root: Path, pki_dir: str, tsa_url: str, size: int, stores: dict[str, str], n: int
) -> dict[str, tuple[str, dict[str, Any]]]:
    count = n + MEMORY_OPS  # the timed operations, then memory_pass's
    specs: dict[str, tuple[str, dict[str, Any]]] = {}
    for store, url in stores.items():
        specs[f"approval-{store}"] = (
            "bench.signing:ApprovalStack",
            {
                "work": str(root / f"approval-{store}"),
                "pki_dir": pki_dir,
                "tsa_url": tsa_url,
                "size": size,
                "database_url": url,
                "count": count,
            },
        )
        if store == next(iter(stores)):
            # the approval that completes the envelope, on the first store only (it seals)
            specs[f"approval-last-{store}"] = (
                "bench.signing:ApprovalStack",
                {
                    **specs[f"approval-{store}"][1],
                    "last": True,
                    "work": str(root / f"approval-last-{store}"),
                },
            )
    common = {"pki_dir": pki_dir, "size": size}
    specs["engine"] = ("bench.signing:EngineStack", {**common, "tsa_url": tsa_url})
    for tuned in (False, True):
        name = "pyhanko-tuned" if tuned else "pyhanko-doc"
        specs[name] = (
            "bench.signing:PyhankoStack",
            {**common, "tsa_url": tsa_url, "tuned": tuned},
        )
    specs["floor"] = ("bench.signing:FloorStack", common)
    return specs


def _workers(root: Path, pki_dir: str, tsa_url: str, size: int, per: int, rounds: int) -> dict:
    """Approval throughput of 2 processes against 1 (each with its own SQLite file, as two
    nodes' stores), the two measurements alternating round by round; each batch is timed
    with the flush of its staged revisions (:meth:`ApprovalStack.settle`); every output
    verified."""
    import statistics

    specs = {
        f"w{k}": (
            "bench.signing:ApprovalStack",
            {
                "work": str(root / f"workers-{k}"),
                "pki_dir": pki_dir,
                "tsa_url": tsa_url,
                "size": size,
                "database_url": f"sqlite:///{root / f'workers-{k}.db'}",
                "count": 2 * per * rounds,
            },
        )
        for k in range(2)
    }
    one: list[float] = []
    two: list[float] = []
    with stacks(specs) as procs:
        pair = [procs["w0"], procs["w1"]]
        for proc in pair:
            proc.ask("run", -1)  # warm-up
        used = [0, 0]

        def batch(k: int) -> list[int]:
            start, used[k] = used[k], used[k] + per
            return list(range(start, start + per))

        for r in range(rounds):
            order = ("one", "two") if r % 2 == 0 else ("two", "one")
            for kind in order:
                if kind == "one":
                    one.append(per / parallel_batches(pair[:1], [batch(0)]))
                else:
                    two.append(2 * per / parallel_batches(pair, [batch(0), batch(1)]))
        verified = 0
        for k, proc in enumerate(pair):
            for i in range(used[k]):
                proc.ask("verify", i)
                verified += 1
    one_rate, two_rate = statistics.median(one), statistics.median(two)
    return {
        "one_process_per_s": round(one_rate, 2),
        "two_processes_per_s": round(two_rate, 2),
        "two_vs_one": ratio(two_rate, one_rate),
        "verified": verified,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table or one JSON object."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="rounds (approvals per stack and size)")
    parser.add_argument("--sizes", default="100k,1m,10m", help=f"of {', '.join(SIZES)}")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--tsa-latency-ms", type=float, default=0.0)
    parser.add_argument("--no-workers", action="store_true", help="skip 2 processes vs 1")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",")]
    report: dict[str, Any] = {
        "bench": "signing",
        "n": args.n,
        "tsa_latency_ms": args.tsa_latency_ms,
        "machine_start": machine(),
        "sizes": {},
    }
    lines = [
        f"python {sys.version.split()[0]}, n={args.n} interleaved rounds, RSA-2048 dev PKI, "
        f"TSA over HTTP on loopback (+{args.tsa_latency_ms:g} ms), backup mirror on; "
        f"load {report['machine_start']['load']} on {report['machine_start']['cores']} cores",
        f"{'size':>5} {'stack':<20} {'p50 ms':>8} {'p90 ms':>8} {'peak MB':>8} {'idle MB':>8}",
    ]
    with tempfile.TemporaryDirectory(prefix="keiyaku-bench-") as tmp:
        root = Path(tmp)
        from core.signing.devpki import create_dev_pki

        pki_dir = str(create_dev_pki(root / "pki", passphrase=PASSPHRASE).directory)
        wanted = [s.strip() for s in args.stores.split(",")]
        with (
            loopback_tsa(Path(pki_dir), PASSPHRASE, args.tsa_latency_ms / 1000) as tsa,
            scratch_postgres() as pg_url,
        ):
            stores: dict[str, str] = {}
            if "sqlite" in wanted:
                stores["sqlite"] = f"sqlite:///{root / 'bench.db'}"
            if "postgresql" in wanted:
                if pg_url is None:
                    report["postgresql"] = "skipped: unreachable"
                    lines.append("postgresql: skipped (unreachable)")
                else:
                    stores["postgresql"] = pg_url
            for label in sizes:
                size = SIZES[label]
                with stacks(_specs(root / label, pki_dir, tsa.url, size, stores, args.n)) as procs:
                    interleave(list(procs.values()), args.n)
                    memory_pass(list(procs.values()), args.n)
                    figures = {name: proc.samples for name, proc in procs.items()}
                tuned, doc, floor = (
                    figures["pyhanko-tuned"],
                    figures["pyhanko-doc"],
                    figures["floor"],
                )
                main_store = next(iter(stores))
                approval = figures[f"approval-{main_store}"]
                pdf_mb = size / 2**20
                entry: dict[str, Any] = {
                    "pdf_bytes": size,
                    "stacks": {name: s.as_dict() for name, s in figures.items()},
                    "approval_vs_tuned": ratio(approval.p50_ms, tuned.p50_ms),
                    "approval_vs_doc": ratio(approval.p50_ms, doc.p50_ms),
                    "approval_vs_floor": ratio(approval.p50_ms, floor.p50_ms),
                    "engine_vs_tuned": ratio(figures["engine"].p50_ms, tuned.p50_ms),
                    # per operation: its peak over the resident size just before it
                    "approval_peak_above_idle_x_pdf": ratio(approval.above_idle_mb, pdf_mb),
                    "tuned_peak_above_idle_x_pdf": ratio(tuned.above_idle_mb, pdf_mb),
                }
                last = figures[f"approval-last-{main_store}"]
                entry["last_approval_p50_ms"] = last.p50_ms
                entry["last_approval_peak_above_idle_x_pdf"] = ratio(last.above_idle_mb, pdf_mb)
                for store in stores:
                    s = figures[f"approval-{store}"]
                    entry[f"approval_{store}_vs_tuned"] = ratio(s.p50_ms, tuned.p50_ms)
                report["sizes"][label] = entry
                for name, s in figures.items():
                    lines.append(
                        f"{label:>5} {name:<20} {s.p50_ms:8.1f} {s.p90_ms:8.1f} "
                        f"{s.peak_mb:8.1f} {s.idle_mb:8.1f}"
                    )
                per_store = ", ".join(
                    f"{store} {entry[f'approval_{store}_vs_tuned']:.2f}" for store in stores
                )
                lines.append(
                    f"{label:>5} approval/tuned p50 {per_store}; approval/doc "
                    f"{entry['approval_vs_doc']:.2f}; approval/floor "
                    f"{entry['approval_vs_floor']:.1f}; engine/tuned "
                    f"{entry['engine_vs_tuned']:.2f}; peak RSS above idle: approval "
                    f"{entry['approval_peak_above_idle_x_pdf']:.1f}x the PDF, tuned "
                    f"{entry['tuned_peak_above_idle_x_pdf']:.1f}x, the last approval (it "
                    f"seals) {entry['last_approval_peak_above_idle_x_pdf']:.1f}x; all "
                    f"{sum(s.verified for s in figures.values())} outputs verified"
                )
            if not args.no_workers:
                workers = _workers(
                    root / "workers", pki_dir, tsa.url, SIZES[sizes[0]], max(args.n // 2, 3), 2
                )
                report["workers"] = workers
                lines.append(
                    f"workers ({sizes[0]}): 1 process {workers['one_process_per_s']:.1f}/s, "
                    f"2 processes {workers['two_processes_per_s']:.1f}/s, "
                    f"ratio {workers['two_vs_one']:.2f}"
                )
            report["tsa_requests"] = tsa.requests
    report["machine_end"] = machine()
    lines.append(f"load at end {report['machine_end']['load']}")
    emit(report, lines, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
