"""Guarantees end to end in headless Chromium, with mail through a real SMTP server and a real
finance folder sink pushed by the served gateway: the contractor registers a guarantee on the
signing pages during signing; the completion record carries it; staff add a second one on the
envelope's page after completion; the finance sink receives that update once."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect
from sqlalchemy import select

from core.model import Delivery, DeliveryState, Envelope, VisibilityScope
from core.signing.devpki import DevPki
from tests.e2e.conftest import Site, link_in, served_site
from tests.e2e.test_admin_pages import PASSWORD, _login, _staff
from tests.e2e.test_signing_pages import _complete, _emails, _open_documents
from tests.fixtures.gateway import envelope_request

FINANCE = """
outbox:
  poll_seconds: 0.2
  base_delay_seconds: 0.2
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
          認証キー2: guarantees.2.authentication_key
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, devpki: DevPki) -> Iterator[Site]:
    """The e2e site with a finance folder sink and the push-back worker running."""
    home = tmp_path_factory.mktemp("e2e-guarantees")
    with served_site(home, devpki, extra=FINANCE, run_pushback=True) as served:
        yield served


def _wait_for(path: Path, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never arrived")
        time.sleep(0.2)
    return path


def _row(path: Path) -> dict[str, str]:
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert len(rows) == 1
    return rows[0]


def test_contractor_and_staff_register_guarantees_and_finance_gets_the_update_once(
    site: Site, context: BrowserContext
) -> None:
    emails = _emails("guarantee")
    answer = site.api.post(
        "/api/v1/envelopes",
        json=envelope_request(emails=emails, send=True, sender_email="s@city.example.jp"),
    )
    assert answer.status_code == 201, answer.text
    envelope = answer.json()
    page = context.new_page()

    (mail,) = site.inbox.wait_for(emails[0])
    _open_documents(page, site, link_in(mail), "1111", "g1")
    _complete(page, site, "g1")

    # The contractor registers its 前払金保証 while signing.
    (mail,) = site.inbox.wait_for(emails[1])
    _open_documents(page, site, link_in(mail), "2468", "g2")
    page.click("#guarantees-link")
    expect(page.locator("h1")).to_have_text("電子保証の登録")
    page.select_option("#kind", "advance")
    page.fill("#contract_number", "2070004426")
    page.fill("#authentication_key", "Q7xK2mP9aZ")
    page.fill("#issuer", "西日本建設業保証株式会社")
    page.click("#save-guarantee")
    expect(page.locator("#saved")).to_be_visible()
    expect(page.locator("#guarantees .guarantee")).to_have_count(1)
    expect(page.locator("#guarantees")).to_contain_text("********aZ")
    expect(page.locator("#guarantees")).not_to_contain_text("Q7xK2mP9aZ")
    site.shot(page, "g2-guarantee")
    page.click("#back")
    page.wait_for_url("**/documents")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.doc:not([hidden]) img'))"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    _complete(page, site, "g2", {"現場代理人氏名": "鈴木 次郎", "記入日": "令和7年10月1日"})

    (mail,) = site.inbox.wait_for(emails[2])
    _open_documents(page, site, link_in(mail), "3333", "g3")
    _complete(page, site, "g3")

    finance = site.config.parent / "pushback" / "finance"
    number = envelope["management_number"]
    first = _row(_wait_for(finance / f"{number}.csv"))
    assert first["イベント"] == "completed"
    assert (first["保証契約番号1"], first["認証キー1"]) == ("2070004426", "Q7xK2mP9aZ")
    assert first["保証契約番号2"] == ""

    # After completion, staff add the 契約保証 on the envelope's page.
    _staff(
        site,
        "keiyaku@city.example.jp",
        "契約課",
        roles="sender",
        scope=VisibilityScope.ALL,
    )
    _login(page, site, "keiyaku@city.example.jp", PASSWORD)
    page.wait_for_url("**/admin/envelopes")
    page.goto(f"{site.url}/admin/envelopes/{envelope['id']}")
    page.click("#guarantees-link")
    expect(page.locator("#guarantees .guarantee")).to_have_count(1)
    page.select_option("select[name=kind]", "contract")
    page.fill("input[name=contract_number]", "2070009911")
    page.fill("input[name=authentication_key]", "Zk3Lm8Pq2W")
    page.fill("input[name=issuer]", "西日本建設業保証株式会社")
    page.click("#add")
    expect(page.locator("#guarantees .guarantee")).to_have_count(2)
    page.click("#guarantees .guarantee >> nth=1 >> .verify")
    expect(page.locator("#guarantees .verified")).to_have_count(1)
    site.shot(page, "staff-guarantees")

    update = _row(_wait_for(finance / f"{number}_update1.csv"))
    assert update["イベント"] == "guarantee_updated"
    assert {update["保証契約番号1"], update["保証契約番号2"]} == {"2070004426", "2070009911"}
    assert "Zk3Lm8Pq2W" in (update["認証キー1"], update["認証キー2"])
    time.sleep(1.5)  # a few more push-back polls: nothing is sent twice
    assert sorted(p.name for p in finance.glob(f"{number}*.csv")) == [
        f"{number}.csv",
        f"{number}_update1.csv",
    ]
    with site.gateway.sessions() as session:
        keys = session.scalars(
            select(Delivery.idempotency_key).where(
                Delivery.envelope_id == envelope["id"],
                Delivery.target == "finance",
                Delivery.state == DeliveryState.DELIVERED,
            )
        ).all()
        assert session.get_one(Envelope, envelope["id"]).state.value == "completed"
    assert len(keys) == 2 and sum(":guarantees:" in k for k in keys) == 1
