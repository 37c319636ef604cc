"""Jobs run once per fire time across nodes; the deadline check adds each notice once."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.business_days import BusinessCalendar
from core.drafts import ContractorDraft, ContractorRef
from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.envelopes.lifecycle import send_envelope
from core.intake.contractors import upsert_contractor
from core.jobs import list_job_runs
from core.model import Award, AwardState, Contractor, Delivery, JobRun
from core.runtime import Runtime
from core.states import PartyRole
from core.timezone import JST
from schedules import deadlines
from schedules.runner import JobSpec, build_scheduler, cron_trigger, fire_time_of, run_once
from tests.fixtures.envelopes import give_access_codes
from tests.fixtures.pdfs import make_pdf


def test_each_tick_runs_on_one_node_only(sessions: sessionmaker[Session]) -> None:
    fire = dt.datetime(2025, 10, 1, 2, 0, tzinfo=JST)
    ran: list[str] = []
    barrier = threading.Barrier(4)

    def node(name: str) -> None:
        barrier.wait()
        run_once(sessions=sessions, job_id="nightly_pull", fire_time=fire, node=name,
                 job=lambda: ran.append(name))  # fmt: skip

    threads = [threading.Thread(target=node, args=(f"node{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ran) == 1
    with sessions() as session:
        (row,) = list_job_runs(session=session, job_id="nightly_pull")
        assert row.status == "succeeded" and row.node == ran[0]
        assert row.fire_time == fire.astimezone(dt.UTC)
    # The next tick runs again; a failing job is recorded as failed.
    later = run_once(sessions=sessions, job_id="nightly_pull", fire_time=fire + dt.timedelta(days=1),
                     node="node0", job=lambda: 1 / 0)  # fmt: skip
    assert later.status == "failed"
    with sessions() as session:
        assert [r.status for r in list_job_runs(session=session)] == ["failed", "succeeded"]


def test_fire_time_is_the_scheduled_tick() -> None:
    trigger = cron_trigger("0 2 * * *", "Asia/Tokyo")
    grace = dt.timedelta(minutes=10)
    late = dt.datetime(2025, 10, 1, 2, 0, 7, tzinfo=JST)
    assert fire_time_of(trigger, late, grace) == dt.datetime(2025, 10, 1, 2, 0, tzinfo=JST)
    every_minute = cron_trigger("* * * * *", "Asia/Tokyo")
    assert fire_time_of(every_minute, late.replace(minute=5), grace).minute == 5
    by_hand = dt.datetime(2025, 10, 1, 14, 3, 30, tzinfo=JST)
    assert fire_time_of(trigger, by_hand, grace) == by_hand.replace(second=0)


def test_scheduler_wires_guarded_cron_jobs(sessions: sessionmaker[Session]) -> None:
    done = threading.Event()
    scheduler = build_scheduler(
        sessions=sessions,
        jobs=[JobSpec("probe", "* * * * *", done.set)],
        scheduler=BackgroundScheduler(timezone=JST),
    )
    (job,) = scheduler.get_jobs()
    assert job.id == "probe" and str(job.trigger.timezone) == "Asia/Tokyo"
    scheduler.start()
    try:
        job.modify(next_run_time=dt.datetime.now(JST))
        assert done.wait(10)
    finally:
        scheduler.shutdown(wait=True)
    with sessions() as session:
        assert session.scalars(select(JobRun.job_id)).all() == ["probe"]


def test_deadline_notices_once_per_due_date(
    sessions: sessionmaker[Session], runtime: Runtime
) -> None:
    with sessions() as session:
        upsert_contractor(
            session=session,
            source="registry",
            draft=ContractorDraft(ContractorRef(name="㈱テスト", registry_code="1"),
                                  ("a@example.co.jp", "b@example.co.jp")),
        )  # fmt: skip
        contractor = session.scalars(select(Contractor)).one()
        for number, due in (("A1", dt.date(2025, 10, 3)), ("A2", dt.date(2025, 10, 1))):
            session.add(Award(source="s", award_id=number, title=f"工事{number}",
                              state=AwardState.WAITING_USAGE_REQUEST, contractor_id=contractor.id,
                              counterparty="㈱テスト", fingerprint="x", draft={},
                              usage_request_due=due))  # fmt: skip
        envelope = create_envelope(
            session=session, runtime=runtime, title="庁舎清掃業務", creator="契約課",
            amount=Decimal("1000000"),
            creator_email="keiyaku@city.example.lg.jp",
            documents=[DocumentInput("契約書.pdf", make_pdf(pages=1))],
            parties=[PartyInput(PartyRole.SIGNER, "髙橋 太郎", "t@example.co.jp")],
            deadline=dt.date(2025, 10, 3),
        )  # fmt: skip
        give_access_codes(session, envelope)
        send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="staff")
        session.commit()
    calendar = BusinessCalendar()
    friday = dt.date(2025, 10, 3)
    for _ in range(2):  # the second run adds nothing
        report = deadlines.run(sessions=sessions, calendar=calendar, buyer_name="開発市",
                               office_email="keiyaku@city.example.lg.jp", today=friday)  # fmt: skip
    assert report.usage_request_due == ["s:A1"] and report.usage_request_overdue == ["s:A2"]
    assert report.signing_due == [envelope.id]
    with sessions() as session:
        rows = session.scalars(select(Delivery).order_by(Delivery.id)).all()
        notices = {r.payload["notice"]: r.payload for r in rows if r.target == "notice"}
    assert sorted(notices) == ["signing_due", "usage_request_due", "usage_request_overdue"]
    assert notices["usage_request_due"]["to"] == ["a@example.co.jp", "b@example.co.jp"]
    assert "本日2025年10月3日" in notices["usage_request_due"]["body"]
    assert notices["usage_request_overdue"]["to"] == ["keiyaku@city.example.lg.jp"]
    assert notices["signing_due"]["to"] == ["t@example.co.jp"]
    saturday = deadlines.run(sessions=sessions, calendar=calendar, buyer_name="開発市",
                             today=dt.date(2025, 10, 4))  # fmt: skip
    assert saturday.notices == 0  # closed days send nothing
