"""Dispatcher *processes* (`keiyaku outbox dispatch`): killed with SIGKILL at random points and
restarted until done, and two at once on PostgreSQL. Counted at the sinks by idempotency key."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from core.blobs import BlobStore
from core.model import Base, Delivery, Envelope
from core.pushback.deliveries import delivery_key
from core.states import DeliveryState
from core.storage import create_database_engine, migrate
from tests.conftest import copy_site
from tests.fixtures.pushback import _pdf, enqueue_completed, make_completed_envelopes
from tests.fixtures.soap_sink import RECORD_FIELDS, SoapSinkServer

ROOT = Path(__file__).resolve().parents[2]
KEIYAKU = [sys.executable, "-m", "gateway.cli"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KEIYAKU_")}


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, initialised_site: Path, sqlite_template: Path
) -> Path:
    """A `keiyaku init` home (config, secrets, development PKI), copied for this module."""
    return copy_site(initialised_site, sqlite_template, tmp_path_factory.mktemp("nodes") / "home")


def _configure(
    home: Path, name: str, database_url: str, soap: SoapSinkServer
) -> tuple[Path, BlobStore]:
    config = yaml.safe_load((home / "config.yaml").read_text(encoding="utf-8"))
    config["database"] = {"url": database_url}
    config["blobs"]["path"] = f"blobs-{name}"
    config["outbox"] = {
        "max_attempts": 50,
        "base_delay_seconds": 0.1,
        "max_delay_seconds": 0.5,
        "lease_seconds": 2,
        "batch_size": 10,
        "poll_seconds": 0.2,
    }
    config["sinks"] = {
        "documents": {
            "kind": "folder",
            "path": f"drop-{name}",
            "trigger": "{management_number}.end",
        },
        "finance": {
            "kind": "soap",
            "wsdl": soap.wsdl,
            "operation": "DeliverContract",
            "attempts": 1,
            "timeout_seconds": 5,
            "content": {
                "documents": False,
                "certificate": False,
                "record": {"format": "json", "attach": False, "fields": RECORD_FIELDS},
            },
        },
    }
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    secrets = dict(
        line.split("=", 1)
        for line in (home / "secrets.env").read_text().splitlines()
        if "=" in line
    )
    return path, BlobStore(home / f"blobs-{name}", bytes.fromhex(secrets["KEIYAKU_MASTER_KEY"]))


def _dispatcher(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KEIYAKU, "--config", str(config), "outbox", "dispatch", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as s:
        rows = s.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all()
    return {state.value if hasattr(state, "value") else str(state): n for state, n in rows}


def _leasing(
    sessions: sessionmaker[Session], procs: list[subprocess.Popen[str]]
) -> subprocess.Popen[str] | None:
    """A process holding leased deliveries right now (worker names are ``host:pid[:...]``)."""
    with sessions() as s:
        owners = s.scalars(
            select(Delivery.lease_owner).where(Delivery.state == DeliveryState.LEASED.value)
        ).all()
    pids = {int(owner.split(":")[1]) for owner in owners if owner}
    return next((p for p in procs if p.pid in pids), None)


@pytest.mark.slow
def test_sigkilled_dispatchers_deliver_everything_once(
    home: Path, soap_sink_server: SoapSinkServer
) -> None:
    n = 500
    url = f"sqlite:///{home / 'crash.db'}"
    config, blobs = _configure(home, "crash", url, soap_sink_server)
    engine = create_database_engine(url)
    migrate(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions() as s:
        ids = make_completed_envelopes(s, blobs, n, documents=1)
        enqueue_completed(s, ["documents", "finance"], ids)
        numbers = {i: s.get_one(Envelope, i).management_number for i in ids}
    rng = random.Random(os.environ.get("KEIYAKU_CRASH_SEED", "5"))
    kills = mid_work = 0
    deadline = time.monotonic() + 300  # generous: start-ups are slow on a loaded machine
    procs: list[subprocess.Popen[str]] = []
    try:
        while _counts(sessions).get("delivered", 0) < 2 * n and kills < 15:
            assert time.monotonic() < deadline, _counts(sessions)
            before = _counts(sessions).get("delivered", 0)
            proc = _dispatcher(config, "--loop")
            procs.append(proc)
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.2, 1.0))  # during start-up, before any claim
            else:
                # Start-up takes one to a few seconds (more on a loaded machine): wait for this
                # process's first claim, then kill it a moment later, mid-batch.
                while _leasing(sessions, [proc]) is None and time.monotonic() < deadline:
                    if proc.poll() is not None or _counts(sessions).get("delivered", 0) >= 2 * n:
                        break
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.15))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                after = _counts(sessions).get("delivered", 0)
                mid_work += before < after < 2 * n
            proc.communicate(timeout=30)
        while _counts(sessions).get("delivered", 0) < 2 * n:  # leases of the killed come back
            assert time.monotonic() < deadline, _counts(sessions)
            proc = _dispatcher(config)
            procs.append(proc)
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    print(
        f"kills: {kills} ({mid_work} mid-work), "
        f"repeats absorbed by the key: {soap_sink_server.duplicates()}"
    )
    assert mid_work >= 3, "the test must actually kill dispatchers mid-work"
    assert _counts(sessions) == {"delivered": 2 * n}

    # SOAP: every key applied, no key the gateway should not have made; a repeat is possible
    # only for a push in flight at a kill (then the key made it harmless).
    expected = {delivery_key("finance", i, "completed") for i in ids}
    assert set(soap_sink_server.applied) == expected
    assert soap_sink_server.duplicates() <= kills
    assert {r.record["contractNumber"] for r in soap_sink_server.applied.values()} == set(
        numbers.values()
    )

    # Folder: one receipt per key, every file whole, a trigger per delivery, no leftovers.
    drop = home / "drop-crash"
    receipts = list((drop / ".keiyaku-receipts").iterdir())
    assert len(receipts) == n
    pdf = _pdf(1, None)
    triggers = list(drop.glob("*.end"))
    assert len(triggers) == n
    for number in numbers.values():
        assert (drop / f"{number}_契約書1.pdf").read_bytes() == pdf
        assert (drop / f"{number}_締結証明書.pdf").read_bytes() == pdf
    assert not list(drop.glob(".*.part"))
    digest = hashlib.sha256(pdf).hexdigest()
    assert digest in (drop / f"{next(iter(numbers.values()))}.end").read_text()
    engine.dispose()


@pytest.fixture
def pg_sessions(postgres_url: str) -> Iterator[tuple[str, sessionmaker[Session]]]:
    engine = create_database_engine(postgres_url)
    migrate(engine)
    try:
        yield postgres_url, sessionmaker(engine, expire_on_commit=False)
    finally:
        with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_two_dispatchers_on_postgresql_never_take_the_same_delivery(
    home: Path, soap_sink_server: SoapSinkServer, pg_sessions: tuple[str, sessionmaker[Session]]
) -> None:
    url, sessions = pg_sessions
    n = 200
    config, blobs = _configure(home, "pg", url, soap_sink_server)
    with sessions() as s:
        ids = make_completed_envelopes(s, blobs, n)
        enqueue_completed(s, ["finance"], ids)
    procs = [_dispatcher(config, "--sink", "finance", "--worker", f"w{i}") for i in range(2)]
    outputs: list[Any] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    delivered = [int(out.split("delivered:")[1].split()[0]) for out in outputs]
    assert sum(delivered) == n
    assert all(d > 0 for d in delivered), delivered  # both really worked at the same time
    assert _counts(sessions) == {"delivered": n}
    assert len(soap_sink_server.applied) == n
    assert soap_sink_server.duplicates() == 0  # no crash, so not one repeat: no row taken twice
