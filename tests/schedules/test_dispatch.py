"""The dispatch job against real sinks: outages retried until delivered once, refusals dead."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from connectors.folder import FolderSink
from connectors.outbound import ContentSpec, RecordSpec
from connectors.soap import SoapCall, SoapSink
from core.model import Envelope
from core.pushback.deliveries import delivery_key
from core.pushback.outbox import RetryPolicy, list_deliveries
from core.runtime import Runtime
from core.states import DeliveryState
from schedules.pushback import JOB_ID, Target, run, run_until_idle
from tests.fixtures.pushback import enqueue_completed, make_completed_envelopes
from tests.fixtures.soap_sink import RECORD_FIELDS, SoapSinkServer

FAST = RetryPolicy(max_attempts=4, base_delay=0.05, max_delay=0.2)


def _soap(server: SoapSinkServer) -> Target:
    call = SoapCall(wsdl=server.wsdl, operation="DeliverContract", attempts=1, timeout=5)
    spec = ContentSpec(record=RecordSpec(format="json", fields=RECORD_FIELDS, attach=False))
    return Target(SoapSink(name="finance", call=call), spec)


def _states(session: Session) -> dict[str, DeliveryState]:
    return {d.idempotency_key: d.state for d in list_deliveries(session=session, limit=1000)}


def test_sink_down_then_up_delivers_each_once(
    sessions: sessionmaker[Session], runtime: Runtime, soap_sink_server: SoapSinkServer
) -> None:
    with sessions() as s:
        ids = make_completed_envelopes(s, runtime.blobs, 5)
        enqueue_completed(s, ["finance"], ids)
    target = _soap(soap_sink_server)
    soap_sink_server.down = True
    try:
        first = run(sessions=sessions, runtime=runtime, targets={"finance": target}, policy=FAST)
        assert len(first.retrying) == 5 and first.delivered == []
        with sessions() as s:
            rows = list_deliveries(session=s)
            assert {d.state for d in rows} == {DeliveryState.PENDING}
            assert all(d.attempts == 1 and "503" in (d.last_error or "") for d in rows)
        soap_sink_server.down = False
        time.sleep(0.25)  # past the backoff
        totals = run_until_idle(
            sessions=sessions, runtime=runtime, targets={"finance": target}, policy=FAST
        )
    finally:
        target.sink.close()
    assert len(totals.delivered) == 5
    keys = {delivery_key("finance", i, "completed") for i in ids}
    assert set(soap_sink_server.applied) == keys
    assert all(soap_sink_server.received[k] == 1 for k in keys)  # once each, no duplicate
    with sessions() as s:
        assert set(_states(s).values()) == {DeliveryState.DELIVERED}
        assert all(d.last_error is None for d in list_deliveries(session=s))
    assert JOB_ID == "outbox.dispatch"


def test_a_refused_record_is_dead_with_its_error_and_the_rest_go_on(
    sessions: sessionmaker[Session],
    runtime: Runtime,
    soap_sink_server: SoapSinkServer,
    tmp_path: Path,
) -> None:
    with sessions() as s:
        ids = make_completed_envelopes(s, runtime.blobs, 4)
        enqueue_completed(s, ["finance", "documents"], ids)
        refused = s.get_one(Envelope, ids[2]).management_number
    soap_sink_server.reject = lambda r: (
        f"契約番号 {r['contractNumber']} は登録できません"
        if r["contractNumber"] == refused
        else None
    )
    targets = {
        "finance": _soap(soap_sink_server),
        "documents": Target(FolderSink(name="documents", root=tmp_path / "dms"), ContentSpec()),
    }
    try:
        totals = run_until_idle(sessions=sessions, runtime=runtime, targets=targets, policy=FAST)
    finally:
        targets["finance"].sink.close()
    dead_key = delivery_key("finance", ids[2], "completed")
    assert len(totals.delivered) == 7 and len(totals.dead) == 1
    with sessions() as s:
        states = _states(s)
        assert states.pop(dead_key) is DeliveryState.DEAD
        assert set(states.values()) == {DeliveryState.DELIVERED}
        (dead,) = list_deliveries(session=s, state=DeliveryState.DEAD)
        assert dead.attempts == 1  # refused: not retried
        assert dead.last_error is not None and dead.last_error.startswith("soap.rejected")
        assert f"契約番号 {refused} は登録できません" in dead.last_error
    assert dead_key not in soap_sink_server.applied and len(soap_sink_server.applied) == 3
    assert len(list((tmp_path / "dms").glob("*.pdf"))) == 8  # documents sink got all four


def test_an_outage_that_lasts_ends_dead_after_the_bound(
    sessions: sessionmaker[Session], runtime: Runtime, soap_sink_server: SoapSinkServer
) -> None:
    with sessions() as s:
        ids = make_completed_envelopes(s, runtime.blobs, 1)
        enqueue_completed(s, ["finance"], ids)
    soap_sink_server.down = True
    target = _soap(soap_sink_server)
    policy = RetryPolicy(max_attempts=3, base_delay=0.02, max_delay=0.05)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            result = run(
                sessions=sessions, runtime=runtime, targets={"finance": target}, policy=policy
            )
            if result.dead:
                break
            time.sleep(0.06)
    finally:
        target.sink.close()
    with sessions() as s:
        (row,) = list_deliveries(session=s)
        assert row.state is DeliveryState.DEAD and row.attempts == 3
        assert row.last_error is not None and "HTTP 503" in row.last_error
    assert soap_sink_server.calls == 3 and soap_sink_server.applied == {}


def test_a_delivery_pushed_before_a_crash_is_not_written_again(
    sessions: sessionmaker[Session], runtime: Runtime, tmp_path: Path
) -> None:
    """A worker pushed, then died before marking: the next worker's attempt finds the receipt."""
    import datetime as dt

    from core.model import utcnow
    from core.pushback.outbox import claim
    from schedules.pushback import push_delivery

    with sessions() as s:
        ids = make_completed_envelopes(s, runtime.blobs, 1)
        enqueue_completed(s, ["documents"], ids)
    target = Target(FolderSink(name="documents", root=tmp_path / "dms"), ContentSpec())
    with sessions() as s:
        (delivery,) = claim(session=s, worker="dies", lease=dt.timedelta(seconds=1))
        push_delivery(sessions=sessions, runtime=runtime, target=target, delivery=delivery)
    inodes = {p.name: p.stat().st_ino for p in (tmp_path / "dms").glob("*.pdf")}
    assert len(inodes) == 2
    with sessions() as s:  # the lease runs out
        (again,) = claim(session=s, worker="next", now=utcnow() + dt.timedelta(seconds=5))
        assert again.attempts == 2
        push_delivery(sessions=sessions, runtime=runtime, target=target, delivery=again)
    assert {p.name: p.stat().st_ino for p in (tmp_path / "dms").glob("*.pdf")} == inodes


def test_a_waiting_dispatcher_woken_pushes_at_once_not_at_its_next_poll(
    sessions: sessionmaker[Session], runtime: Runtime, tmp_path: Path
) -> None:
    import threading

    targets = {
        "documents": Target(FolderSink(name="documents", root=tmp_path / "dms"), ContentSpec())
    }
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=run_until_idle,
        kwargs={
            "sessions": sessions,
            "runtime": runtime,
            "targets": targets,
            "policy": FAST,
            "poll_seconds": 60.0,  # a poll would come long after the test gave up
            "stop": stop,
            "forever": True,
            "wake": wake,
        },
    )
    thread.start()
    try:
        time.sleep(0.3)  # the first pass found nothing: the dispatcher waits
        with sessions() as s:
            ids = make_completed_envelopes(s, runtime.blobs, 1)
            enqueue_completed(s, ["documents"], ids)
        wake.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with sessions() as s:
                if set(_states(s).values()) == {DeliveryState.DELIVERED}:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("the woken dispatcher did not push within 20 s")
    finally:
        stop.set()
        wake.set()  # as PushbackWorker.stop does: the wait ends now
        thread.join(timeout=30)
    assert not thread.is_alive()
