"""Three nodes on one PostgreSQL: three `keiyaku jobs start` schedulers fire the same
every-two-seconds job and each tick runs exactly once; three `keiyaku outbox dispatch --loop`
workers share the outbox, one is killed with SIGKILL mid-dispatch, and every delivery still
arrives once (counted at the SOAP sink by idempotency key); three `keiyaku serve` processes
send the queued mail, one is killed mid-dispatch, and every mail arrives (by Message-ID)."""

from __future__ import annotations

import datetime as dt
import itertools
import mailbox
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.deadlines import NOTICE_TARGET
from core.model import Delivery, DeliveryState, JobRun
from core.outbox import enqueue
from core.pushback import delivery_key
from gateway.server import free_port
from tests.fixtures.pushback import enqueue_completed, make_completed_envelopes
from tests.fixtures.soap_sink import SoapSinkServer
from tests.schedules.test_dispatch_processes import (
    KEIYAKU,
    ROOT,
    _configure,
    _counts,
    _dispatcher,
    _env,
    home,
    pg_sessions,
)

__all__ = ["home", "pg_sessions"]

TICK = 2  # seconds between fire times of the test job


def _scheduler(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KEIYAKU, "--config", str(config), "jobs", "start"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


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


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.mark.postgres
@pytest.mark.slow
def test_three_nodes_run_each_tick_once_and_deliver_everything_once(
    home: Path,
    soap_sink_server: SoapSinkServer,
    pg_sessions: tuple[str, sessionmaker[Session]],
) -> None:
    url, sessions = pg_sessions
    config, blobs = _configure(home, "nodes", url, soap_sink_server)
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    settings["schedules"] = {
        "nightly_pull": None,
        "deadlines": f"*/{TICK} * * * * *",
        "retimestamp": None,
        "backup": None,
    }
    config.write_text(yaml.safe_dump(settings, allow_unicode=True), encoding="utf-8")

    n = 300
    with sessions() as s:
        ids = make_completed_envelopes(s, blobs, n)
        enqueue_completed(s, ["finance"], ids)

    schedulers = [_scheduler(config) for _ in range(3)]
    dispatchers = [_dispatcher(config, "--loop", "--sink", "finance") for _ in range(3)]
    try:
        # one dispatcher is killed while it holds claimed deliveries: some delivered, not all
        deadline = time.monotonic() + 60
        victim = None
        while victim is None or not 0 < _counts(sessions).get("delivered", 0) < n // 2:
            assert time.monotonic() < deadline, _counts(sessions)
            assert all(p.poll() is None for p in dispatchers)
            victim = _leasing(sessions, dispatchers)
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        killed_at = _counts(sessions)
        while _counts(sessions).get("delivered", 0) < n:  # the killed leases come back
            assert time.monotonic() < deadline, _counts(sessions)
            time.sleep(0.2)
        # the schedulers keep running for a few more ticks
        time.sleep(4 * TICK)
    finally:
        _stop(schedulers + dispatchers)
    assert killed_at.get("delivered", 0) < n
    assert _counts(sessions) == {"delivered": n}
    expected = {delivery_key("finance", i, "completed") for i in ids}
    assert set(soap_sink_server.applied) == expected
    # a repeat is possible only for the pushes in flight at the kill (the key absorbs it)
    assert soap_sink_server.duplicates() <= 10

    with sessions() as s:
        runs = s.scalars(select(JobRun).where(JobRun.job_id == "deadlines")).all()
    fire_times = sorted(r.fire_time for r in runs)
    assert len(fire_times) >= 4
    per_tick = Counter(fire_times)
    assert max(per_tick.values()) == 1  # never twice
    # no tick missed between the first and the last one, all on the two-second grid
    gaps = {b - a for a, b in itertools.pairwise(fire_times)}
    assert gaps == {dt.timedelta(seconds=TICK)}, sorted(fire_times)
    assert all(r.status == "succeeded" for r in runs)
    nodes = Counter(r.node for r in runs)
    print(f"ticks per node: {dict(nodes)}; repeats absorbed: {soap_sink_server.duplicates()}")


def _serve(config: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KEIYAKU, "--config", str(config), "serve", "--port", str(port)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_three_serve_nodes_send_every_mail_once_when_one_is_killed(
    home: Path,
    soap_sink_server: SoapSinkServer,
    pg_sessions: tuple[str, sessionmaker[Session]],
) -> None:
    url, sessions = pg_sessions
    config, _blobs = _configure(home, "mailnodes", url, soap_sink_server)
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    settings["mail"] = {
        "maildir": "mail-nodes",
        "sender": "keiyaku@city.example.jp",
        "dispatch_interval_seconds": 0.1,
    }
    config.write_text(yaml.safe_dump(settings, allow_unicode=True), encoding="utf-8")
    n = 150
    with sessions() as s:
        for i in range(n):
            enqueue(
                session=s,
                target=NOTICE_TARGET,
                idempotency_key=f"notice:{i}",
                payload={"to": [f"kacho{i}@city.example.jp"], "subject": "期限", "body": "本文"},
            )
        s.commit()

    def mail_counts() -> dict[str, int]:
        return _counts(sessions)

    nodes = [_serve(config, free_port()) for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        victim = None
        while victim is None or not 0 < mail_counts().get("delivered", 0) < n // 2:
            assert time.monotonic() < deadline, mail_counts()
            assert all(p.poll() is None for p in nodes), [p.returncode for p in nodes]
            victim = _leasing(sessions, nodes)
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)  # it holds claimed mail right now
        while mail_counts().get("delivered", 0) < n:  # its leases expire (2 s), others send
            assert time.monotonic() < deadline, mail_counts()
            time.sleep(0.2)
    finally:
        _stop(nodes)
    assert mail_counts() == {"delivered": n}
    box = mailbox.Maildir(home / "mail-nodes", create=False)
    ids = Counter(message["Message-ID"] for message in box)
    box.close()
    assert len(ids) == n  # every mail arrived
    # a repeat only for the mail in flight at the kill, with the same Message-ID
    assert sum(ids.values()) - n <= 1
