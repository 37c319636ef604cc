"""The signing page's page images for a phone line, through HTTP and in Chromium: palette PNGs
of at most 60 KB a page at every width offered, lazy-loaded, cached privately with an ETag and
revalidated with 304; page navigation and zoom on the page."""

from __future__ import annotations

import io
import re

import httpx
from PIL import Image
from playwright.sync_api import BrowserContext, expect

from gateway.pages.render import PAGE_WIDTHS
from tests.e2e.conftest import Site, link_in
from tests.fixtures.gateway import envelope_request
from tests.fixtures.pdfs import make_pdf

PAGE_LIMIT = 60_000  # bytes per page image (issue 17: a 10-page document on Fast 3G)


def _ten_page_envelope(site: Site, tag: str) -> str:
    emails = (f"kacho-{tag}@city.example.jp", f"i-{tag}@example.co.jp", f"s-{tag}@city.example.jp")
    body = envelope_request(
        emails=emails,
        send=True,
        sender_email=f"sender-{tag}@city.example.jp",
        # a scanned-seal-like noise image on page 1 makes it the hardest page to compress
        pdfs=[make_pdf(pages=10, size_target=300_000, title="工事請負契約書"), make_pdf(pages=1)],
    )
    answer = site.api.post("/api/v1/envelopes", json=body)
    assert answer.status_code == 201, answer.text
    (mail,) = site.inbox.wait_for(emails[0])
    return link_in(mail)


def _sign_in(site: Site, url: str, code: str) -> httpx.Client:
    client = httpx.Client(base_url=site.url, timeout=120, follow_redirects=False)
    page = client.get(url)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    answer = client.post(url, data={"access_code": code, "csrf_token": token.group(1)})
    assert answer.status_code == 303, answer.text
    return client


def test_page_images_are_small_cached_and_revalidated(site: Site) -> None:
    url = _ten_page_envelope(site, "img")
    client = _sign_in(site, url, "1111")
    try:
        _check_images(client, url)
    finally:
        client.close()


def _check_images(client: httpx.Client, url: str) -> None:
    html = client.get(f"{url}/documents").text
    images = re.findall(r"<img [^>]*>", html)
    assert len(images) == 11  # 10 + 1 pages
    for tag in images:
        assert 'loading="lazy"' in tag
        for width in PAGE_WIDTHS:
            assert f"&amp;w={width} {width}w" in tag
    first = re.search(r'src="([^"]+)"', images[0])
    assert first is not None
    src = first.group(1).replace("&amp;", "&")
    revision = re.search(r"v=(\d+)", src)  # a new signature gives new URLs
    assert revision is not None

    for page in range(1, 11):
        for width in PAGE_WIDTHS:
            path = f"{url}/documents/0/pages/{page}.png?v={revision.group(1)}&w={width}"
            answer = client.get(path)
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "image/png"
            assert len(answer.content) <= PAGE_LIMIT, (page, width, len(answer.content))
            image = Image.open(io.BytesIO(answer.content))
            assert image.mode == "P" and image.width == width
            cache = answer.headers["cache-control"]
            assert "private" in cache and re.search(r"max-age=\d+", cache), cache
            etag = answer.headers["etag"]
            again = client.get(path, headers={"If-None-Match": etag})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == etag
            assert "private" in again.headers["cache-control"]
            # Another width is another image with its own tag.
            assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    # A width not offered snaps to the next one up; the default is 960.
    odd = client.get(f"{url}/documents/0/pages/1.png?w=700")
    assert Image.open(io.BytesIO(odd.content)).width == 720
    plain = client.get(f"{url}/documents/0/pages/1.png")
    assert Image.open(io.BytesIO(plain.content)).width == 960
    # No session, no image, not even a 304.
    with httpx.Client(base_url=str(client.base_url)) as stranger:
        tag = plain.headers["etag"]
        refused = stranger.get(f"{url}/documents/0/pages/1.png", headers={"If-None-Match": tag})
        assert refused.status_code == 403


def test_page_navigation_and_zoom(site: Site, context: BrowserContext) -> None:
    url = _ten_page_envelope(site, "nav")
    page = context.new_page()
    page.goto(url)
    page.fill("#access_code", "1111")
    page.click("#next")
    page.wait_for_url("**/documents")
    tools = page.locator(".doc:not([hidden]) .viewer-tools")
    jump = tools.locator(".page-jump")
    expect(jump).to_have_value("1")
    tools.get_by_role("button", name="次のページ").click()
    expect(jump).to_have_value("2")
    jump.fill("7")
    jump.dispatch_event("change")
    page.wait_for_function(
        "() => { const r = document.getElementById('doc-0-page-7').getBoundingClientRect();"
        " return r.top < window.innerHeight / 2 && r.bottom > 0; }"
    )
    expect(jump).to_have_value("7")
    seventh = page.locator("#doc-0-page-7 img")
    expect(seventh).to_have_js_property("complete", True)
    before = page.evaluate("document.getElementById('doc-0-page-7').clientWidth")
    tools.get_by_role("button", name="拡大").click()
    tools.get_by_role("button", name="拡大").click()
    expect(tools.locator(".zoom-level")).to_have_text("150%")
    after = page.evaluate("document.getElementById('doc-0-page-7').clientWidth")
    assert after > 1.4 * before
    # The browser picks a wider image for the wider page.
    page.wait_for_function(
        "() => { const i = document.querySelector('#doc-0-page-7 img');"
        " return i.complete && /w=1200/.test(i.currentSrc); }"
    )
    expect(jump).to_have_value("7")
