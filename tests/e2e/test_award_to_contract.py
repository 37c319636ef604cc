"""The headline flow as real people and systems do it, in headless Chromium: a CP932 award
export, a bidder registry and a usage request (電子契約利用申出書) land in folder sources; `keiyaku
sync` (the CLI, another process) turns the award into a draft naming the official of the
signing-authority register; the clerk logs in and sends it; the contractor signs by the mailed
link and the access code it wrote on its usage request; the official logs in to the staff pages
and signs. The same again with an internal approver (a staff member named by the mapping)
before the contractor. The signed PDFs pass `keiyaku verify`, pdfsig and qpdf --check."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from core.model import VisibilityScope
from core.signing.devpki import DevPki
from core.staff.accounts import PasswordPolicy, add_staff, set_password
from gateway.demo import CONTRACTOR_CODE, write_sample
from tests.e2e.conftest import Site, body_of, link_in, served_site, wait_for_visible_images
from tests.fixtures.gateway import run_keiyaku

JST = ZoneInfo("Asia/Tokyo")
PASSWORD = "Kei-yaku-2026!"
STAFF_LINK = re.compile(r"https?://[^\s/]+/admin/sign/[A-Za-z0-9]+")
CLERK = "clerk-award@city.example.jp"
OFFICIAL = ("shicho-award@city.example.jp", "開発市長 開発 太郎")
APPROVER = ("shinsa-award@city.example.jp", "契約課 審査担当")
CONTRACTOR = "ichiro@takahashi-kensetsu.example.co.jp"  # the usage request's signer (demo sample)
AWARDS = {"awards": "R8-101", "awards-approver": "R8-102"}
# In the subject of every request (署名依頼, 承認依頼), never of a completion notice: the first
# envelope's 電子署名完了のお知らせ may reach a party before or after the second's request.
REQUEST = "依頼"


def _source(name: str, mapping: Path, folder: Path, documents: Path | None = None) -> str:
    lines = [
        f"  {name}:",
        "    kind: folder",
        f"    mapping: {mapping}",
        f"    path: {folder}",
        "    read_lock: {mode: none}",
    ]
    if documents is not None:
        lines.append(f"    documents_dir: {documents}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def award_site(tmp_path_factory: pytest.TempPathFactory, devpki: DevPki) -> Iterator[Site]:
    """A served site whose config has the exports' folders as sources and the register."""
    home = tmp_path_factory.mktemp("award")
    day = dt.datetime.now(JST).date()
    plain, approved = home / "export", home / "export-approver"
    write_sample(plain, buyer="開発市", award_id=AWARDS["awards"], day=day)
    write_sample(approved, buyer="開発市", award_id=AWARDS["awards-approver"], day=day)
    # The second office's mapping puts its internal approver (a staff member) first.
    mapping = (approved / "mappings" / "municipal.yaml").read_text(encoding="utf-8")
    assert "parties:\n  - role: signer\n    from: contractor\n" in mapping
    mapping = mapping.replace(
        "parties:\n",
        f"parties:\n  - role: approver\n    name: {APPROVER[1]}\n    email: {APPROVER[0]}\n"
        "    staff: true\n",
    ).replace("party: 1,", "party: 2,")
    (approved / "mappings" / "municipal-approver.yaml").write_text(mapping, encoding="utf-8")
    extra = (
        "intake:\n"
        "  creator_email: keiyaku@city.example.jp\n"
        "  signing_authorities:\n"
        '    - department: "*"\n'
        "      max_amount: null\n"
        f'      name: "{OFFICIAL[1]}"\n'
        "      title: null\n"
        f'      email: "{OFFICIAL[0]}"\n'
        "sources:\n"
        + _source("registry", plain / "mappings" / "registry.yaml", plain / "registry")
        + _source(
            "usage-requests", plain / "mappings" / "usage_requests.yaml", plain / "usage_requests"
        )
        + _source("awards", plain / "mappings" / "municipal.yaml", plain / "awards", plain)
        + _source(
            "awards-approver",
            approved / "mappings" / "municipal-approver.yaml",
            approved / "awards",
            approved,
        )
    )
    with served_site(home, devpki, extra=extra) as site:
        with site.gateway.sessions() as session:
            for email, name, roles in (
                (CLERK, "契約 係員", "sender"),
                (OFFICIAL[0], OFFICIAL[1], "signer"),
                (APPROVER[0], APPROVER[1], "signer"),
            ):
                staff = add_staff(
                    session=session,
                    name=name,
                    email=email,
                    roles=roles,
                    scope=VisibilityScope.ALL,
                    department="契約課",
                    actor="test",
                )
                set_password(
                    session=session,
                    staff=staff,
                    password=PASSWORD,
                    policy=PasswordPolicy(),
                    actor="test",
                )
            session.commit()
        yield site


def _login(page: Page, site: Site, email: str) -> None:
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#login")


def _clerk_sends(page: Page, site: Site) -> str:
    """The clerk finds the award's draft in the list and sends it; the envelope's page URL."""
    page.goto(f"{site.url}/admin/envelopes")
    _login(page, site, CLERK)
    page.wait_for_url("**/admin/envelopes")
    title = "市道１号線舗装補修工事"
    row = page.locator("tr", has_text=title).filter(has_text="下書き")
    expect(row).to_have_count(1)
    row.locator("a").first.click()
    page.wait_for_url(re.compile(r".*/admin/envelopes/[0-9a-f]+$"))
    detail = page.url
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#send-draft")
    expect(page.locator("body")).to_contain_text("署名依頼中")
    return detail


def _staff_signs(page: Page, site: Site, email: str, count: int = 1) -> None:
    """A staff party follows its ``count``-th request's link, logs in, and signs with its
    password again."""
    mails = site.inbox.wait_for(email, count=count, subject=REQUEST)
    body = body_of(mails[-1])
    assert "アクセスコード" not in body.replace("このメールにアクセスコードはありません", "")
    (url,) = STAFF_LINK.findall(body)
    page.goto(url)
    _login(page, site, email)
    page.wait_for_url(re.compile(r".*/admin/sign/[A-Za-z0-9]+$"))
    wait_for_visible_images(page)
    page.click("#complete-button")
    page.fill("#reauth-password", PASSWORD)
    page.click("#confirm-complete")
    page.wait_for_url("**/done")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)


def _contractor_signs(page: Page, site: Site, count: int) -> None:
    """The contractor opens its ``count``-th request's link, types the usage request's code,
    fills and signs."""
    mails = site.inbox.wait_for(CONTRACTOR, count=count, subject=REQUEST)
    page.goto(link_in(mails[-1]))
    page.fill("#access_code", CONTRACTOR_CODE)
    page.click("#next")
    page.wait_for_url("**/documents")
    tabs = page.locator(".tab")
    for index in range(tabs.count()):
        tabs.nth(index).click()
        box = page.get_by_label("契約締結日", exact=True)
        if box.count() and box.is_visible():
            box.fill("令和8年12月7日")
    page.click("#complete-button")
    page.click("#confirm-complete")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました", timeout=30_000)


def _check_signed(page: Page, site: Site, name: str, signatures: int) -> None:
    files = []
    for index in range(page.locator(".downloads li a").count()):
        link = page.locator(".downloads li a").nth(index)
        if "pdf" not in (link.get_attribute("href") or "") and "documents" not in (
            link.get_attribute("href") or ""
        ):
            continue
        with page.expect_download() as info:
            link.click()
        path = site.shots.parent / f"{name}-{index}.pdf"
        info.value.save_as(str(path))
        files.append(path)
    assert files
    for path in files:
        verify = run_keiyaku(site.config, "verify", str(path))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        pdfsig = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
        assert pdfsig.stdout.count("Signature is Valid.") >= signatures, pdfsig.stdout
        qpdf = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, text=True)
        assert qpdf.returncode == 0, qpdf.stdout + qpdf.stderr


@pytest.mark.slow
def test_an_award_export_becomes_a_contract_both_sides_sign_through_the_pages(
    award_site: Site, context: BrowserContext
) -> None:
    site = award_site
    for source in ("registry", "usage-requests", "awards"):
        synced = run_keiyaku(site.config, "sync", "run", source)
        assert synced.returncode == 0, synced.stdout + synced.stderr
    page = context.new_page()

    # 1. Contractor + official.
    detail = _clerk_sends(page, site)
    context.clear_cookies()
    _contractor_signs(page, site, count=1)
    context.clear_cookies()
    _staff_signs(page, site, OFFICIAL[0])
    expect(page.locator(".downloads li")).not_to_have_count(0)
    _check_signed(page, site, "award", signatures=2)
    context.clear_cookies()
    page.goto(detail)
    _login(page, site, CLERK)
    expect(page.locator("body")).to_contain_text("締結済み")

    # 2. With the internal approver first.
    synced = run_keiyaku(site.config, "sync", "run", "awards-approver")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    context.clear_cookies()
    _clerk_sends(page, site)
    context.clear_cookies()
    _staff_signs(page, site, APPROVER[0])
    context.clear_cookies()
    _contractor_signs(page, site, count=2)
    context.clear_cookies()
    _staff_signs(page, site, OFFICIAL[0], count=2)
    _check_signed(page, site, "award-approver", signatures=3)
