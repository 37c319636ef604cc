"""The admins' operations pages over HTTP (SQLite and PostgreSQL): sync runs with their line
errors and the jobs' runs, the outbox by state and target with its retry (CSRF, audit), and
403 for everyone who is not an admin."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from core.intake.runs import finish_run, start_run
from core.model import AuditEvent, Delivery, VisibilityScope
from core.states import DeliveryState
from tests.fixtures.operations import dead_and_due_deliveries, sync_run_with_line_errors
from tests.gateway.conftest import LiveGateway
from tests.gateway.test_admin_pages import _csrf, _login, _staff

ADMIN, CLERK = "admin@city.example.jp", "clerk@city.example.jp"


def _people(live: LiveGateway) -> None:
    _staff(live, ADMIN, "総務課", roles="admin", scope=VisibilityScope.ALL)
    _staff(live, CLERK, "契約課", roles="sender,signer", scope=VisibilityScope.ALL)


def test_sync_runs_and_their_line_errors(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _people(live)
    run_id = sync_run_with_line_errors(live.gateway.sessions)
    with live.client() as client:
        assert _login(client, ADMIN).status_code == 303
        listing = client.get("/admin/sync-runs")
        assert listing.status_code == 200
        runs = listing.text.split('id="runs"')[1].split("</table>")[0]
        assert f'href="/admin/sync-runs/{run_id}"' in runs and "定期実行" in runs
        assert "2026年04月02日 02:00" in runs  # JST
        jobs = listing.text.split('id="jobs"')[1].split("</table>")[0]
        assert "nightly_pull" in jobs and "失敗" in jobs and "SFTP unreachable" in jobs

        detail = client.get(f"/admin/sync-runs/{run_id}")
        assert detail.status_code == 200
        rows = detail.text.split('id="line-errors"')[1].split("</tbody>")[0].split("<tr>")[2:]
        assert len(rows) == 2
        assert '<td class="num">4</td>' in rows[0] and "落札金額がありません" in rows[0]
        assert '<td class="num">17</td>' in rows[1] and "開札日が日付として読めません" in rows[1]
        assert "awards_20260401.csv" in rows[1] and "23" in rows[1]
        assert client.get("/admin/sync-runs/999999").status_code == 404
        assert (
            client.get("/admin/sync-runs", params={"source": "other"}).text.count(
                'href="/admin/sync-runs/'
            )
            == 0
        )


def test_sync_runs_are_paginated(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _people(live)
    with live.gateway.sessions() as session:
        for _ in range(55):
            finish_run(
                session=session,
                run=start_run(session=session, source="registry", trigger="cli"),
                status="succeeded",
            )
        session.commit()
    with live.client() as client:
        assert _login(client, ADMIN).status_code == 303
        first = client.get("/admin/sync-runs").text
        assert first.count('<td><a href="/admin/sync-runs/') == 50 and 'id="next-page"' in first
        second = client.get("/admin/sync-runs", params={"page": 2}).text
        assert second.count('<td><a href="/admin/sync-runs/') == 5
        assert "2 / 2 ページ" in second
        assert client.get("/admin/sync-runs", params={"page": 0}).status_code == 422


def test_outbox_counts_filters_and_retry(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _people(live)
    dead_id, due_id = dead_and_due_deliveries(live.gateway.sessions)
    with live.client() as client:
        assert _login(client, ADMIN).status_code == 303
        page = client.get("/admin/outbox")
        assert page.status_code == 200
        assert 'id="count-dead">1<' in page.text and 'id="count-pending">1<' in page.text
        assert "契約番号が不正です" in page.text and page.text.count('class="retry"') == 1
        dead_only = client.get("/admin/outbox", params={"state": "dead"}).text
        assert "finance" in dead_only.split('id="deliveries"')[1]
        assert "folder</td>" not in dead_only.split('id="deliveries"')[1]
        folder = client.get("/admin/outbox", params={"target": "folder"}).text
        assert 'id="count-dead">0<' in folder and 'class="retry"' not in folder
        assert client.get("/admin/outbox", params={"state": "lost"}).status_code == 422

        refused = client.post(f"/admin/outbox/{dead_id}/retry", data={})
        assert refused.status_code == 403
        retried = client.post(
            f"/admin/outbox/{dead_id}/retry",
            data={"csrf_token": _csrf(page.text)},
            follow_redirects=False,
        )
        assert retried.status_code == 303
        not_dead = client.post(
            f"/admin/outbox/{due_id}/retry", data={"csrf_token": _csrf(page.text)}
        )
        assert not_dead.status_code == 422 and "再送できるのは" in not_dead.text
    with live.gateway.sessions() as session:
        delivery = session.get(Delivery, dead_id)
        assert delivery is not None
        assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "outbox.retry")).one()
    assert event.actor == ADMIN and event.detail == {"delivery": dead_id, "target": "finance"}


def test_operations_pages_are_for_admins_only(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    _people(live)
    run_id = sync_run_with_line_errors(live.gateway.sessions)
    dead_id, _ = dead_and_due_deliveries(live.gateway.sessions)
    with live.client() as client:  # logged out: the login page
        answer = client.get("/admin/outbox", follow_redirects=False)
        assert answer.headers["location"] == "/admin/login?next=/admin/outbox"
    with live.client() as client:
        assert _login(client, CLERK).status_code == 303
        envelopes = client.get("/admin/envelopes").text
        assert "/admin/outbox" not in envelopes and "/admin/sync-runs" not in envelopes
        for path in ("/admin/sync-runs", f"/admin/sync-runs/{run_id}", "/admin/outbox"):
            answer = client.get(path)
            assert answer.status_code == 403 and "権限がありません" in answer.text
        retry = client.post(f"/admin/outbox/{dead_id}/retry", data={"csrf_token": _csrf(envelopes)})
        assert retry.status_code == 403
    with live.gateway.sessions() as session:
        delivery = session.get(Delivery, dead_id)
        assert delivery is not None and delivery.state is DeliveryState.DEAD
