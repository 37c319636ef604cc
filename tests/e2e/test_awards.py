"""Waiting awards on /admin/awards in headless Chromium, with mail through a real SMTP server:
an award whose contractor signer the mapping names (no access code) waits as アクセスコード未設定
until staff type a code on the page; its envelope is then sent, the contractor gets the request
mail and opens the documents with that code. An award without an amount waits as 契約金額待ち
until the admin fixes the mapping and staff click 再マッピング."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, expect

from core.model import VisibilityScope
from core.signing.devpki import DevPki
from tests.e2e.conftest import Site, link_in, served_site
from tests.e2e.test_admin_pages import PASSWORD, _login, _staff
from tests.e2e.test_signing_pages import _open_documents
from tests.fixtures.envelopes import ensure_staff
from tests.gateway.test_awards_api import AWARD, MAPPED_SIGNER

FIXED = MAPPED_SIGNER.replace(
    "{column: 落札金額, transforms: [yen]}", "{column: 予定総額, transforms: [yen]}"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, devpki: DevPki) -> Iterator[Site]:
    """The e2e site with an API award source whose mapping names the contractor's signer."""
    home = tmp_path_factory.mktemp("e2e-awards")
    (home / "itaku.yaml").write_text(MAPPED_SIGNER, encoding="utf-8")
    extra = f"""
sources:
  itaku:
    kind: api
    mapping: {home / "itaku.yaml"}
intake:
  signing_authorities:
    - department: "*"
      name: 開発 太郎
      email: shicho@city.example.jp
"""
    with served_site(home, devpki, extra=extra, client="itaku") as served:
        with served.gateway.sessions() as session:
            ensure_staff(session, "shicho@city.example.jp", "開発 太郎")
            session.commit()
        yield served


def _push(site: Site, number: str, **fields: str) -> None:
    award = {**AWARD, "案件番号": number, "業者番号": "000555", "案件名": "公園清掃業務委託",
             "担当者氏名": "公園 次郎", "担当者メール": "jiro@kouen.example.jp", **fields}  # fmt: skip
    answer = site.api.post("/api/v1/awards/itaku", json=award)
    assert answer.status_code == 200 and answer.json()["waiting"] == 1, answer.text


def test_staff_set_the_access_code_on_the_page_and_the_contractor_signs_in_with_it(
    site: Site, context: BrowserContext
) -> None:
    _push(site, "E-1")
    _staff(site, "awards-admin@city.example.jp", "総務課", roles="admin",
           scope=VisibilityScope.ALL)  # fmt: skip
    page = context.new_page()
    _login(page, site, "awards-admin@city.example.jp", PASSWORD)
    page.goto(f"{site.url}/admin/awards")
    row = page.locator('tr[data-award="itaku:E-1"]')
    expect(row).to_have_attribute("data-reason", "no_access_code")
    expect(row).to_contain_text("アクセスコード未設定")
    expect(row.locator(".release")).to_contain_text("アクセスコードを設定すると送信します")
    site.shot(page, "awards-waiting-code")
    row.locator('input[name="access_code"]').fill("7531")
    row.locator("button.set-code").click()
    page.wait_for_url("**/admin/awards")
    expect(page.locator('tr[data-award="itaku:E-1"]')).to_have_count(0)

    (mail,) = site.inbox.wait_for("jiro@kouen.example.jp")
    assert "7531" not in mail.as_string()  # the code is never mailed
    contractor = context.browser.new_context(locale="ja-JP")  # type: ignore[union-attr]
    try:
        signer = contractor.new_page()
        _open_documents(signer, site, link_in(mail), "7531", "awards-contractor")
        expect(signer.locator("#complete-button")).to_be_visible()
    finally:
        contractor.close()


def test_staff_remap_an_award_waiting_for_its_amount_after_the_mapping_is_fixed(
    site: Site, context: BrowserContext
) -> None:
    _push(site, "E-2", 落札金額="", 予定総額="8,800,000")
    _staff(site, "remap-admin@city.example.jp", "総務課", roles="admin",
           scope=VisibilityScope.ALL)  # fmt: skip
    page = context.new_page()
    _login(page, site, "remap-admin@city.example.jp", PASSWORD)
    page.goto(f"{site.url}/admin/awards")
    row = page.locator('tr[data-award="itaku:E-2"]')
    expect(row).to_have_attribute("data-reason", "no_amount")
    expect(row).to_contain_text("契約金額待ち")
    (Path(site.config).parent / "itaku.yaml").write_text(FIXED, encoding="utf-8")
    row.locator("button.remap").click()
    page.wait_for_url("**/admin/awards")
    row = page.locator('tr[data-award="itaku:E-2"]')
    expect(row).to_have_attribute("data-reason", "no_access_code")  # on to the next wait
    site.shot(page, "awards-remapped")
