"""Document retention on SQLite and PostgreSQL: what is deleted (every blob behind an expired
envelope), what stays (facts, audit trail), and what holds a purge (an unfinished envelope, an
undelivered outbox row, an amendment that still has its documents)."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.envelopes.amendments import record_amendment
from core.envelopes.documents import read_document
from core.envelopes.lifecycle import cancel_envelope, get_envelope, send_envelope
from core.envelopes.sealing import completion_certificate
from core.errors import DocumentError
from core.model import (
    AuditEvent,
    Award,
    AwardDocument,
    AwardState,
    Delivery,
    Document,
    Envelope,
    GuaranteeKind,
    GuaranteeReference,
    StagedBlob,
)
from core.pushback.outbox import enqueue
from core.records.archive import RenewalPolicy, list_documents_due
from core.records.audit import list_events, verify_chain
from core.records.retention import (
    PurgeReport,
    RetentionPolicy,
    envelope_blob_ids,
    find_expired,
    purge_documents,
    purged_blob_ids,
)
from core.runtime import Runtime
from core.staged_blobs import flush_staged
from core.states import DeliveryState
from core.timezone import JST
from schedules import retimestamp
from tests.fixtures.envelopes import complete_parties, one_signer_envelope

POLICY = RetentionPolicy(years=10)  # from April 1 after the fiscal year
NOW = dt.datetime(2026, 4, 1, 0, 0, tzinfo=JST)  # first day of fiscal 2026
OLD = dt.datetime(2014, 6, 1, 10, 0, tzinfo=JST)  # fiscal 2014: period ended 2025-03-31
YOUNG = dt.datetime(2016, 4, 1, 0, 0, tzinfo=JST)  # fiscal 2016: kept until 2027-03-31


def _completed(session: Session, runtime: Runtime, title: str, at: dt.datetime) -> str:
    envelope = one_signer_envelope(session, runtime, title)
    send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor="開発市")
    session.commit()
    complete_parties(session, runtime, envelope.id)
    _age(session, envelope.id, completed_at=at, updated_at=at)
    return envelope.id


def _purge(session: Session, runtime: Runtime, now: dt.datetime = NOW) -> PurgeReport:
    return purge_documents(session=session, runtime=runtime, policy=POLICY, now=now)


def _age(session: Session, envelope_id: str, **values: dt.datetime) -> None:
    session.execute(update(Envelope).where(Envelope.id == envelope_id).values(**values))
    session.commit()


def _blob_ids(session: Session, envelope_id: str) -> list[str]:
    envelope = get_envelope(session=session, envelope_id=envelope_id)
    ids = [rev.blob_id for doc in envelope.documents for rev in doc.revisions]
    return ids + ([envelope.certificate_blob_id] if envelope.certificate_blob_id else [])


def _award_copy_and_notice(session: Session, runtime: Runtime, envelope_id: str) -> list[str]:
    """The award's staged copy of the contract PDF and an issuer's guarantee notice: documents
    of the envelope too. Returns their blob ids."""
    copy, notice = runtime.blobs.put(b"%PDF award copy"), runtime.blobs.put(b"%PDF notice")
    award = Award(source="inbox", award_id="A-1", state=AwardState.SENT, title="旧契約",
                  fingerprint="0" * 64, envelope_id=envelope_id)  # fmt: skip
    award.documents.append(
        AwardDocument(position=0, name="契約書.pdf", origin="attachment", blob_id=copy,
                      sha256=hashlib.sha256(b"%PDF award copy").hexdigest(), size=15)
    )  # fmt: skip
    session.add(award)
    session.add(
        GuaranteeReference(envelope_id=envelope_id, kind=GuaranteeKind.CONTRACT,
                           contract_number="12-345", issuer="保証会社", key_ciphertext="x",
                           key_hint="ab", source="notice", notice_blob_id=notice, created_by="t")
    )  # fmt: skip
    session.commit()
    return [copy, notice]


def _files(runtime: Runtime) -> set[str]:
    return {p.name for p in Path(runtime.blobs.root).rglob("*") if p.is_file()}


def _purges(session: Session) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "retention.purged")))


def test_expired_documents_are_deleted_and_the_record_stays(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    with sessions() as session:
        old = _completed(session, dev_runtime, "旧契約", OLD)
        young = _completed(session, dev_runtime, "新契約", YOUNG)
        cancelled = one_signer_envelope(session, dev_runtime, "取消契約").id
        cancel_envelope(
            session=session,
            runtime=dev_runtime,
            envelope_id=cancelled,
            actor="開発市",
            reason="金額誤り",
        )
        session.commit()
        _age(session, cancelled, updated_at=OLD - dt.timedelta(days=200))
        running = one_signer_envelope(session, dev_runtime, "署名中").id
        send_envelope(session=session, runtime=dev_runtime, envelope_id=running, actor="開発市")
        session.commit()
        _age(session, running, updated_at=OLD)  # old but never finished: never purged
        envelope = get_envelope(session=session, envelope_id=old)
        signed = read_document(runtime=dev_runtime, document=envelope.documents[0])
        certificate = completion_certificate(runtime=dev_runtime, envelope=envelope)
        old_blobs = _blob_ids(session, old) + _blob_ids(session, cancelled)
        old_blobs += _award_copy_and_notice(session, dev_runtime, old)
        kept_blobs = _blob_ids(session, young) + _blob_ids(session, running)
    assert set(old_blobs) <= _files(dev_runtime)

    with sessions() as session:  # a dry run lists, oldest first, and deletes nothing
        dry = purge_documents(session=session, runtime=dev_runtime, policy=POLICY, now=NOW,
                              dry_run=True)  # fmt: skip
        assert [e.envelope_id for e in dry.expired] == [cancelled, old]
        assert [e.ends_on for e in dry.expired] == [dt.date(2024, 4, 1), dt.date(2025, 4, 1)]
        assert dry.purged == [] and dry.held == []
        assert set(old_blobs) <= _files(dev_runtime)
        assert _purges(session) == []
        assert session.get_one(Envelope, old).documents_purged_at is None

    with sessions() as session:  # a day before the young one's period ends: still kept
        report = _purge(session, dev_runtime)
        assert sorted(report.purged) == sorted([cancelled, old]) and report.failed == {}
    files = _files(dev_runtime)
    assert not set(old_blobs) & files, "blobs of purged envelopes left on disk"
    assert set(kept_blobs) <= files

    with sessions() as session:
        envelope = get_envelope(session=session, envelope_id=old)
        assert envelope.documents_purged_at is not None
        # the facts stay: title, counterparty, parties, dates, documents' names and revisions
        assert envelope.title == "旧契約" and envelope.counterparty == "株式会社一"
        assert envelope.completed_at == OLD and envelope.updated_at == OLD
        assert [p.name for p in envelope.parties] == ["署名者 一郎"]
        assert [d.name for d in envelope.documents] == ["契約書.pdf"]
        assert len(envelope.documents[0].revisions) >= 3
        # every reader answers the coded error, in Japanese with the date (JST)
        with pytest.raises(DocumentError) as info:
            read_document(runtime=dev_runtime, document=envelope.documents[0])
        assert info.value.code == "document.purged"
        purged_on = envelope.documents_purged_at.astimezone(JST).strftime("%Y年%m月%d日")
        assert info.value.message_ja.startswith("保存期間の満了により文書は削除されました（")
        assert purged_on in info.value.message_ja and info.value.message_ja.endswith(" JST）")
        with pytest.raises(DocumentError, match="document.purged"):
            completion_certificate(runtime=dev_runtime, envelope=envelope)
        # the audit trail stays, plus one event naming what existed with its SHA-256
        actions = [e.action for e in list_events(session=session, envelope_id=old)]
        assert {"envelope.created", "party.approved", "envelope.completed"} <= set(actions)
        assert actions.count("retention.purged") == 1
        event = next(e for e in _purges(session) if e.envelope_id == old)
        (document,) = event.detail["documents"]
        assert document["name"] == "契約書.pdf"
        assert document["sha256"] == hashlib.sha256(signed).hexdigest()
        assert event.detail["certificate"]["sha256"] == hashlib.sha256(certificate).hexdigest()
        assert event.detail["award_documents"] == [
            {"name": "契約書.pdf", "sha256": hashlib.sha256(b"%PDF award copy").hexdigest()}
        ]
        assert event.detail["guarantee_notices"] == [
            {"contract_number": "12-345", "sha256": hashlib.sha256(b"%PDF notice").hexdigest()}
        ]
        assert event.detail["retention_ended_on"] == "2025-04-01"
        assert event.detail["basis"] == "completed"
        assert verify_chain(session=session).ok
        # the young and the running envelope are untouched and readable
        kept = get_envelope(session=session, envelope_id=young)
        assert read_document(runtime=dev_runtime, document=kept.documents[0]).startswith(b"%PDF")
        assert session.get_one(Envelope, running).documents_purged_at is None

    with sessions() as session:  # again: nothing more to do, nothing recorded twice
        again = _purge(session, dev_runtime)
        assert again.expired == [] and again.purged == []
        assert len(_purges(session)) == 2
    with sessions() as session:  # a year on, the young one's period has ended too
        later = _purge(session, dev_runtime, NOW.replace(year=2027))
        assert later.purged == [young]


def test_an_undelivered_delivery_holds_the_purge_until_delivered(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    with sessions() as session:
        held = _completed(session, dev_runtime, "未配信", OLD)
        mailed = _completed(session, dev_runtime, "メール不達", OLD)
        push = enqueue(session=session, target="documents", idempotency_key=f"documents:{held}",
                       payload={}, envelope_id=held)  # fmt: skip
        dead_mail = enqueue(session=session, target="mail", idempotency_key=f"mail:{mailed}",
                            payload={}, envelope_id=mailed)  # fmt: skip
        dead_mail.state = DeliveryState.DEAD  # a bounced notification holds nothing
        session.commit()
        push_id = push.id

    for state in (DeliveryState.PENDING, DeliveryState.LEASED, DeliveryState.DEAD):
        with sessions() as session:
            session.execute(update(Delivery).where(Delivery.id == push_id).values(state=state))
            session.commit()
            report = _purge(session, dev_runtime)
            assert [(e.envelope_id, e.held) for e in report.held] == [(held, "outbox")]
            # the one with only a dead mail goes in the first run
            assert report.purged == ([mailed] if state is DeliveryState.PENDING else [])
            assert session.get_one(Envelope, held).documents_purged_at is None
            envelope = get_envelope(session=session, envelope_id=held)
            assert read_document(runtime=dev_runtime, document=envelope.documents[0])

    with sessions() as session:
        assert [e.envelope_id for e in find_expired(session=session, policy=POLICY, now=NOW)] == [
            held
        ]
        session.execute(
            update(Delivery).where(Delivery.id == push_id).values(state=DeliveryState.DELIVERED)
        )
        session.commit()
        report = _purge(session, dev_runtime)
        assert report.purged == [held] and report.held == []


def test_an_original_waits_for_its_amendments(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    with sessions() as session:
        original = _completed(session, dev_runtime, "原契約", OLD)
        amendment = one_signer_envelope(session, dev_runtime, "変更契約")
        record_amendment(session=session, envelope=amendment, original_id=original, actor="t")
        session.commit()
        cancel_envelope(
            session=session,
            runtime=dev_runtime,
            envelope_id=amendment.id,
            actor="開発市",
            reason="誤登録",
        )
        session.commit()
        _age(session, amendment.id, updated_at=YOUNG)
        report = _purge(session, dev_runtime)
        assert [(e.envelope_id, e.held) for e in report.held] == [(original, "amendment")]
        assert report.purged == []
        later = NOW.replace(year=2027)
        report = _purge(session, dev_runtime, later)
        assert report.purged == [amendment.id]  # the original goes the run after
        report = _purge(session, dev_runtime, later)
        assert report.purged == [original]


def test_two_nodes_purging_at_once_purge_each_envelope_once(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    with sessions() as session:
        ids = [_completed(session, dev_runtime, f"契約{i}", OLD) for i in range(4)]
    barrier = threading.Barrier(2)
    purged: list[str] = []
    errors: list[BaseException] = []

    def node() -> None:
        try:
            with sessions() as session:
                barrier.wait()
                report = _purge(session, dev_runtime)
                purged.extend(report.purged)
                assert report.failed == {}
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=node) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(purged) == sorted(ids)
    with sessions() as session:
        assert sorted(e.envelope_id or "" for e in _purges(session)) == sorted(ids)
        assert verify_chain(session=session).ok


def test_retimestamping_skips_purged_documents(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    with sessions() as session:
        old = _completed(session, dev_runtime, "旧契約", OLD)
        young = _completed(session, dev_runtime, "新契約", YOUNG)
        _purge(session, dev_runtime)
        # as if sealed before the expiry column existed: the backfill must not read it either
        session.execute(
            update(Document).where(Document.envelope_id == old).values(timestamp_expires_at=None)
        )
        session.commit()
        century = dt.timedelta(days=36500)
        due = list_documents_due(session=session, margin=century)
        assert {d.envelope_id for d in due} == {young}
    # a flagged algorithm makes the young document renewable with the same dev TSA
    policy = RenewalPolicy(margin=century, flagged_algorithms=frozenset({"sha256"}))
    report = retimestamp.run(sessions=sessions, runtime=dev_runtime, policy=policy)
    assert report.failed == {} and len(report.renewed) == 1 and report.backfilled == 0


@pytest.mark.parametrize("count_from", ["next_fiscal_year", "date"])
@pytest.mark.parametrize("years", [1, 5, 7])
def test_the_period_ends_neither_a_day_early_nor_late(count_from: str, years: int) -> None:
    policy = RetentionPolicy(years=years, count_from=count_from)  # type: ignore[arg-type]
    day = dt.date(2023, 1, 1)
    while day < dt.date(2025, 1, 1):  # two years of basis days, 29 February included
        basis = dt.datetime.combine(day, dt.time(23, 59), JST)
        ends = policy.ends_on(basis)
        first = dt.datetime.combine(ends, dt.time(0, 0), JST)
        assert basis < policy.cutoff(first), (day, ends)
        assert not basis < policy.cutoff(first - dt.timedelta(minutes=1)), (day, ends)
        try:
            anniversary = day.replace(year=day.year + years)
        except ValueError:  # 29 February
            anniversary = dt.date(day.year + years, 2, 28)
        assert ends > anniversary, (day, ends)  # never inside the period
        day += dt.timedelta(days=1)
    if count_from == "date":  # 民法 140条: the day of conclusion itself does not count
        basis = dt.datetime(2020, 5, 10, 9, 0, tzinfo=JST)
        assert policy.ends_on(basis) == dt.date(2020 + years, 5, 11)
        leap = dt.datetime(2024, 2, 29, 9, 0, tzinfo=JST)
        assert policy.ends_on(leap) == dt.date(2024 + years, 3, 1)
    else:  # 翌年度4月1日起算: March and April of the same year fall in different fiscal years
        assert policy.ends_on(dt.datetime(2020, 3, 31, tzinfo=JST)) == dt.date(2020 + years, 4, 1)
        assert policy.ends_on(dt.datetime(2020, 4, 1, tzinfo=JST)) == dt.date(2021 + years, 4, 1)


def test_a_retention_under_one_year_is_refused() -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="config.retention_years"):
        RetentionPolicy(years=0)


def test_purged_blob_ids_name_every_blob_of_the_envelopes_purged_in_the_window(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    """What a backup forgets (core.records.backup.delete_purged_copies): by purge time, half-open."""
    with sessions() as session:
        first = _completed(session, dev_runtime, "旧契約", OLD)
        second = _completed(session, dev_runtime, "旧契約2", OLD)
        kept = _completed(session, dev_runtime, "新契約", YOUNG)
        extra = _award_copy_and_notice(session, dev_runtime, first)
        blobs = {e: set(envelope_blob_ids(session=session, envelope_id=e)) for e in (first, second)}
        assert set(_blob_ids(session, first)) | set(extra) == blobs[first]  # notices too
    later = NOW + dt.timedelta(days=3)
    with sessions() as session:
        assert sorted(_purge(session, dev_runtime).purged) == sorted([first, second])
        _age(session, second, documents_purged_at=later)  # as if purged three days later

    def ids(since: dt.datetime | None, before: dt.datetime) -> set[str]:
        with sessions() as session:
            found = purged_blob_ids(session=session, since=since, before=before)
        assert len(found) == len(set(found))  # each once
        return set(found)

    assert ids(None, NOW) == set()  # purged at NOW: not before it
    assert ids(None, NOW + dt.timedelta(seconds=1)) == blobs[first]
    assert ids(None, later + dt.timedelta(seconds=1)) == blobs[first] | blobs[second]
    assert ids(NOW + dt.timedelta(seconds=1), later + dt.timedelta(seconds=1)) == blobs[second]
    assert ids(later + dt.timedelta(seconds=1), NOW + dt.timedelta(days=30)) == set()
    with sessions() as session:  # the envelope still in its period is never named
        assert not set(envelope_blob_ids(session=session, envelope_id=kept)) & ids(
            None, NOW + dt.timedelta(days=365)
        )


def test_a_purge_takes_the_signature_blobs_not_yet_flushed_with_it(
    sessions: sessionmaker[Session], dev_runtime: Runtime
) -> None:
    """An approval's signature blob waits in the database for the signing worker's flush
    (core.staged_blobs); a purge before that flush must not leave it for the flush to write
    back into the store."""
    with sessions() as session:
        old = _completed(session, dev_runtime, "旧契約", OLD)
        signatures = {
            rev.blob_id
            for doc in get_envelope(session=session, envelope_id=old).documents
            for rev in doc.revisions
            if rev.reason == "signature"
        }
        assert signatures <= set(session.scalars(select(StagedBlob.blob_id)))
        assert _purge(session, dev_runtime).purged == [old]
    with sessions() as session:
        assert not signatures & set(session.scalars(select(StagedBlob.blob_id)))
    flush_staged(sessions=sessions, runtime=dev_runtime)
    assert not signatures & _files(dev_runtime)
