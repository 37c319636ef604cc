"""Guarantee references over the API (認証キー write-only, masked on read), and the finance
update after completion: delivered once per change, never while the completion delivery itself
is still to be pushed (it reads the references fresh)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from sqlalchemy import select

from core.model import Delivery, Envelope, Party
from core.states import EnvelopeState, PartyState
from gateway.pages.guarantees import entry_open
from gateway.sinks import build_targets, close_targets, retry_policy
from schedules.pushback import run_until_idle
from tests.fixtures.gateway import complete_by_services, envelope_request
from tests.gateway.conftest import LiveGateway

KEY = "Q7xK2mP9aZ"
FINANCE = """
sinks:
  finance:
    kind: folder
    path: pushback/finance
    fsync: false
    content:
      documents: false
      certificate: false
      record:
        format: csv
        encoding: utf-8
        fields:
          管理番号: management_number
          イベント: event
          保証契約番号1: guarantees.1.contract_number
          認証キー1: guarantees.1.authentication_key
          保証契約番号2: guarantees.2.contract_number
"""


def _guarantee(number: str, key: str = KEY, kind: str = "advance") -> dict[str, str]:
    return {
        "kind": kind,
        "contract_number": number,
        "authentication_key": key,
        "issuer": "西日本建設業保証株式会社",
    }


def _push(live: LiveGateway) -> list[int]:
    settings = live.gateway.settings
    targets = build_targets(settings)
    try:
        result = run_until_idle(
            sessions=live.gateway.sessions,
            runtime=live.gateway.runtime,
            targets=targets,
            policy=retry_policy(settings),
        )
    finally:
        close_targets(targets)
    return result.delivered


def test_read_write_and_the_key_is_never_returned(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    with live.client(live.token("e-bid")) as api, live.client(live.token("other")) as other:
        envelope_id = api.post("/api/v1/envelopes", json=envelope_request()).json()["id"]
        url = f"/api/v1/envelopes/{envelope_id}/guarantees"
        created = api.post(url, json=_guarantee("2070004426"))
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["authentication_key"] == "********aZ" and body["kind_ja"] == "前払金保証"
        listed = api.get(url)
        assert [g["contract_number"] for g in listed.json()] == ["2070004426"]
        assert KEY not in created.text + listed.text
        refused = api.post(url, json=_guarantee("2070004427", key="x"))
        assert refused.status_code == 422 and refused.json()["error"]["code"].startswith(
            "guarantee."
        )
        assert other.get(url).status_code == 404  # another system's envelope
        assert other.post(url, json=_guarantee("2070004428")).status_code == 404
        gone = api.delete(f"{url}/{body['id']}", params={"reason": "番号の誤り"})
        assert gone.status_code == 204
        assert api.get(url).json() == []


def test_a_change_after_completion_reaches_finance_once_per_change(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(extra=FINANCE)
    with live.client(live.token("e-bid")) as api:
        created = api.post("/api/v1/envelopes", json=envelope_request(send=True)).json()
        envelope_id, number = created["id"], created["management_number"]
        url = f"/api/v1/envelopes/{envelope_id}/guarantees"
        complete_by_services(live.gateway, envelope_id)
        # the completion delivery is not pushed yet: it will carry this one, no update needed
        assert api.post(url, json=_guarantee("2070004426")).status_code == 201
        assert len(_push(live)) == 1
        second = api.post(url, json=_guarantee("2070009911", key="Zk3Lm8Pq2W", kind="contract"))
        assert second.status_code == 201
        assert len(_push(live)) == 1
        removed = api.delete(f"{url}/{second.json()['id']}", params={"reason": "重複登録"})
        assert removed.status_code == 204
    # each update carries the references as they are when it is pushed
    assert len(_push(live)) == 1
    assert _push(live) == []  # nothing twice

    folder = live.config.parent / "pushback" / "finance"

    def row(name: str) -> dict[str, str]:
        (only,) = csv.DictReader(io.StringIO((folder / name).read_text(encoding="utf-8")))
        return only

    assert row(f"{number}.csv")["保証契約番号1"] == "2070004426"
    assert row(f"{number}.csv")["認証キー1"] == KEY
    added = row(f"{number}_update1.csv")
    assert added["イベント"] == "guarantee_updated" and added["保証契約番号2"] == "2070009911"
    after_removal = row(f"{number}_update2.csv")
    assert after_removal["保証契約番号1"] == "2070004426" and after_removal["保証契約番号2"] == ""
    with live.gateway.sessions() as session:
        keys = session.scalars(
            select(Delivery.idempotency_key).where(Delivery.target == "finance")
        ).all()
    assert sorted(k.split(":", 3)[-1] for k in keys if ":guarantees:" in k) == sorted(
        [f"{second.json()['id']}:added", f"{second.json()['id']}:removed"]
    )


def test_the_buyer_chooses_when_the_contractor_may_enter_them() -> None:
    def party(envelope_state: EnvelopeState, party_state: PartyState) -> Party:
        return Party(state=party_state, envelope=Envelope(state=envelope_state))

    signing = party(EnvelopeState.SENT, PartyState.VIEWED)
    signed = party(EnvelopeState.COMPLETED, PartyState.COMPLETED)
    declined = party(EnvelopeState.DECLINED, PartyState.DECLINED)
    assert [entry_open(signing, m) for m in ("off", "before", "after", "both")] == [
        False,
        True,
        False,
        True,
    ]
    assert [entry_open(signed, m) for m in ("off", "before", "after", "both")] == [
        False,
        False,
        True,
        True,
    ]
    assert not any(entry_open(declined, m) for m in ("before", "after", "both"))
