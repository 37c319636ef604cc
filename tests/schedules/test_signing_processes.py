"""The signing worker under SIGKILL, on SQLite and PostgreSQL: approvals committed while workers
(`keiyaku signing run --loop`, each its own process) are killed mid-signing again and again; every
approval ends signed exactly once, every envelope sealed, every PDF valid."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from core.envelopes.approvals import record_approval
from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.envelopes.documents import current_documents
from core.envelopes.lifecycle import get_envelope, send_envelope
from core.model import Delivery, DocumentRevision, Envelope
from core.signing import verify_pdf
from core.signing.tasks import SIGNING_TARGET
from core.states import DeliveryState, EnvelopeState, PartyRole
from gateway.runtime import load_trust_roots, open_gateway
from gateway.settings import load_settings
from tests.conftest import copy_site
from tests.fixtures.envelopes import give_access_codes
from tests.fixtures.pdfs import make_pdf
from tests.schedules.test_dispatch_processes import KEIYAKU, ROOT, _env, pg_sessions

__all__ = ["pg_sessions"]

N = 10  # envelopes, two signing parties each


def _worker(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KEIYAKU, "--config", str(config), "signing", "run", "--loop"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_sigkilled_signing_workers_leave_no_approval_unsigned(
    store: str,
    tmp_path: Path,
    initialised_site: Path,
    sqlite_template: Path,
    request: pytest.FixtureRequest,
) -> None:
    home = copy_site(initialised_site, sqlite_template, tmp_path / "home")
    config_path = home / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    if store == "postgresql":
        url = request.getfixturevalue("postgres_url")
        config["database"] = {"url": url}
        request.getfixturevalue("pg_sessions")  # empty tables before and after
    config["signing"]["worker"] = {"interval_seconds": 0.1, "lease_seconds": 2}
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    secrets = dict(
        line.split("=", 1)
        for line in (home / "secrets.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    settings = load_settings(config_path, environ=secrets)
    gateway = open_gateway(settings)
    rng = random.Random(os.environ.get("KEIYAKU_CRASH_SEED", "7"))
    procs: list[subprocess.Popen[str]] = []
    try:
        ids = []
        with gateway.sessions() as session:
            for i in range(N):
                envelope = create_envelope(
                    session=session,
                    runtime=gateway.runtime,
                    title=f"強制終了試験{i}",
                    amount=Decimal("1000000"),
                    creator="staff",
                    documents=[DocumentInput("契約書.pdf", make_pdf(pages=1))],
                    parties=[
                        PartyInput(PartyRole.SIGNER, "髙橋 一郎", f"c{i}@example.co.jp"),
                        PartyInput(PartyRole.SIGNER, "開発 太郎", f"s{i}@city.example.jp"),
                    ],
                )
                give_access_codes(session, envelope)
                send_envelope(
                    session=session, runtime=gateway.runtime, envelope_id=envelope.id, actor="t"
                )
                session.commit()
                ids.append(envelope.id)

        def approve_all(index: int) -> None:
            with gateway.sessions() as session:
                for envelope_id in ids:
                    party = get_envelope(session=session, envelope_id=envelope_id).parties[index]
                    record_approval(
                        session=session,
                        envelope_id=envelope_id,
                        party_id=party.id,
                        values={},
                        auth_method="email+access_code",
                        ip="192.0.2.9",
                    )

        def open_tasks() -> int:
            with gateway.sessions() as session:
                return int(
                    session.scalar(
                        select(func.count())
                        .select_from(Delivery)
                        .where(
                            Delivery.target == SIGNING_TARGET,
                            Delivery.state != DeliveryState.DELIVERED.value,
                        )
                    )
                    or 0
                )

        def leased_by(proc: subprocess.Popen[str]) -> bool:
            with gateway.sessions() as session:
                owners = session.scalars(
                    select(Delivery.lease_owner).where(Delivery.state == DeliveryState.LEASED.value)
                ).all()
            return any(o and o.split(":")[1] == str(proc.pid) for o in owners)

        kills = mid_work = 0
        deadline = time.monotonic() + 240
        for index in (0, 1):
            approve_all(index)  # committed approvals, each with its task
            for _round in range(3):  # kill a worker while it holds leases, three times
                if open_tasks() == 0:
                    break
                proc = _worker(config_path)
                procs.append(proc)
                while not leased_by(proc) and open_tasks() and proc.poll() is None:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.2))
                if proc.poll() is None:
                    before = open_tasks()
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate(timeout=30)
                    kills += 1
                    mid_work += before > 0
            survivor = _worker(config_path)  # takes what the killed held once leases expire
            procs.append(survivor)
            while open_tasks():
                assert time.monotonic() < deadline, open_tasks()
                assert survivor.poll() is None, survivor.communicate()
                time.sleep(0.1)
            survivor.send_signal(signal.SIGTERM)
            survivor.communicate(timeout=30)
        assert kills >= 2 and mid_work >= 2, "the test must kill workers mid-work"

        roots = load_trust_roots(settings)
        with gateway.sessions() as session:
            for envelope_id in ids:
                envelope = get_envelope(session=session, envelope_id=envelope_id)
                assert envelope.state is EnvelopeState.COMPLETED, envelope.last_error
                assert envelope.documents[0].signature_count == 2  # never signed twice
                reasons = [
                    r.reason
                    for r in session.scalars(
                        select(DocumentRevision).where(
                            DocumentRevision.document_id == envelope.documents[0].id
                        )
                    )
                ]
                assert reasons.count("signature") == 2 and reasons.count("seal") == 1
                ((_name, data),) = current_documents(runtime=gateway.runtime, envelope=envelope)
                report = verify_pdf(data, trust_roots=roots)
                assert report.ok, report.as_dict()
                assert sum(1 for s in report.signatures if s.kind == "approval") == 2
            assert (
                session.scalar(
                    select(func.count())
                    .select_from(Envelope)
                    .where(Envelope.last_error.is_not(None))
                )
                == 0
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        gateway.close()
