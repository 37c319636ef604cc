"""Real-world PDFs (``tests/corpus/``) through the gateway as users put them through it.

Each file is uploaded with the API to the served app (one text box for the contractor on page 1),
both parties act (a few through the mailed links and the signing pages in Chromium, the rest
through the services the pages call), the envelope is sealed and the signed file downloaded. It
must then pass poppler's ``pdfsig``, ``qpdf --check``, MuPDF's ``mutool`` and ``keiyaku verify``;
or the upload is refused with a coded ``document.*`` error and a Japanese message. Never a 500,
a hang, or an output a validator rejects. ``tests/corpus/expected.json`` pins which outcome each
file has, so that a file cannot slip from signed to refused unnoticed.
"""

from __future__ import annotations

import faulthandler
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pikepdf
import pytest
from click.testing import CliRunner
from playwright.sync_api import BrowserContext, Page, expect

from gateway.cli import main
from gateway.pages.render import PageBox, rect_at
from tests.e2e.conftest import Site, link_in, wait_for_visible_images
from tests.fixtures.gateway import SECRETS, b64, complete_by_services

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
# scripts/pdf-corpus DIR runs another folder of PDFs the same way (a broad sweep of a test suite's
# files: outcomes are reported, not compared); KEIYAKU_CORPUS_ONLY names a file listing which
PDFS = Path(os.environ.get("KEIYAKU_CORPUS_DIR") or CORPUS / "pdfs")
SWEEP = PDFS != CORPUS / "pdfs"
FILES = sorted(p.name for p in PDFS.glob("*.pdf"))
if os.environ.get("KEIYAKU_CORPUS_ONLY"):
    _ONLY = set(Path(os.environ["KEIYAKU_CORPUS_ONLY"]).read_text(encoding="utf-8").split("\n"))
    FILES = [f for f in FILES if f in _ONLY]
EXPECTED: dict[str, str] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
# scripts/pdf-corpus sets this: one JSON line per file with its outcome, for the summary
REPORT = os.environ.get("KEIYAKU_CORPUS_REPORT")
# signed through the mailed links and the pages (the rest through the services the pages call)
THROUGH_PAGES = {"qpdf-inherited-rotate.pdf", "pdfminer-jo.pdf", "pyhanko-no-mediabox.pdf"}
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def _field_rect(data: bytes) -> list[float] | None:
    """A small text box near the top-left of page 1 as displayed, in user space (turned back
    through the page's /Rotate, as the compose page does); None when the file is unreadable to
    qpdf too (such a file must be refused anyway) or page 1 is too small for a 2 mm box."""
    try:
        with pikepdf.open(io.BytesIO(data)) as pdf:
            page = pdf.pages[0]
            box = [float(v) for v in page.cropbox]
            node, rotate = page.obj, 0
            while node is not None:
                if "/Rotate" in node:
                    rotate = int(node.Rotate) % 360
                    break
                node = node.get("/Parent")
    except Exception:
        return None
    x1, y1, x2, y2 = (
        min(box[0], box[2]),
        min(box[1], box[3]),
        max(box[0], box[2]),
        max(box[1], box[3]),
    )
    visible = PageBox(x1, y1, x2, y2, rotate if rotate in (90, 180, 270) else 0)
    shown_width, shown_height = visible.size
    width, height = min(120.0, shown_width / 2), min(18.0, shown_height / 4)
    if min(width, height) < 6:
        return None
    return list(rect_at(visible, 10, 10, width, height))


def _request(name: str, data: bytes, tag: str) -> dict:
    rect = _field_rect(data)
    return {
        "title": f"実文書テスト {name}",
        "contract_type": "other",  # not construction: no usage request needed for the corpus
        "documents": [{"name": "契約書.pdf", "content_base64": b64(data)}],
        "parties": [
            {
                "role": "signer",
                "name": "髙橋 一郎",
                "email": f"contractor-{tag}@example.co.jp",
                "company": "株式会社髙橋建設",
                "access_code": "2468",
            },
            {
                "role": "signer",
                "name": "開発 太郎",
                "email": f"buyer-{tag}@city.example.jp",
                "company": "開発市長",
                "access_code": "3333",
            },
        ],
        "fields": (
            [{"document": 0, "party": 0, "label": "記入日", "page": 1, "rect": rect}]
            if rect is not None
            else []
        ),
        "metadata": {"amount": 1000, "counterparty": "株式会社髙橋建設"},
        "sender_email": "keiyaku@city.example.jp",
        "creator": "開発市 契約課",
        "send": True,
    }


def _sign_through_pages(page: Page, site: Site, email: str, code: str, value: str | None) -> None:
    (mail,) = site.inbox.wait_for(email)
    page.goto(link_in(mail))
    page.fill("#access_code", code)
    page.click("#next")
    page.wait_for_url("**/documents")
    wait_for_visible_images(page)
    if value is not None:
        page.get_by_label("記入日", exact=True).fill(value)
    page.click("#complete-button")
    page.click("#confirm-complete")
    page.wait_for_url("**/done")
    expect(page.locator("h1")).to_have_text("署名手続きが完了しました")


def _validators(signed: Path) -> list[str]:
    """What independent tools say is wrong with ``signed`` (empty when nothing)."""
    problems = []
    pdfsig = subprocess.run(
        ["pdfsig", str(signed)], capture_output=True, text=True, errors="replace", timeout=60
    )
    approvals = pdfsig.stdout.count("Signature is Valid.")
    if pdfsig.returncode != 0 or approvals != 2:
        problems.append(f"pdfsig: {approvals} valid approvals: {pdfsig.stdout[-600:]}")
    qpdf = subprocess.run(
        ["qpdf", "--check", str(signed)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
    )
    if qpdf.returncode != 0:  # 3 = warnings: a rebuilt file must not need them either
        problems.append(f"qpdf --check {qpdf.returncode}: {(qpdf.stdout + qpdf.stderr)[-600:]}")
    if shutil.which("mutool"):
        mutool = subprocess.run(
            ["mutool", "info", str(signed)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
        )
        errors = [ln for ln in mutool.stderr.splitlines() if ln.startswith("error")]
        if mutool.returncode != 0 or errors:
            problems.append(f"mutool info {mutool.returncode}: {mutool.stderr[-600:]}")
    return problems


def _record(name: str, outcome: str, detail: str = "") -> None:
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as out:
            out.write(json.dumps({"file": name, "outcome": outcome, "detail": detail[:300]}) + "\n")


def _keiyaku_verify(site: Site, signed: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["--config", str(site.config), "verify", str(signed)], env=SECRETS
    )
    return result.exit_code, result.output


@pytest.mark.parametrize("name", FILES)
def test_real_world_pdf(name: str, site: Site, request: pytest.FixtureRequest) -> None:
    if SWEEP:
        # a hang ends the run with the stacks printed; scripts/pdf-corpus records it and goes on
        _record(name, "started")
        faulthandler.dump_traceback_later(
            float(os.environ.get("KEIYAKU_CORPUS_TIMEOUT", 180)), exit=True
        )
    try:
        _put_through(name, site, request)
    except Exception as exc:
        if not isinstance(exc, AssertionError):
            _record(name, "crashed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if SWEEP:
            faulthandler.cancel_dump_traceback_later()


def _put_through(name: str, site: Site, request: pytest.FixtureRequest) -> None:
    data = (PDFS / name).read_bytes()
    tag = re.sub(r"[^a-z0-9]", "-", name.lower())[:40]
    answer = site.api.post("/api/v1/envelopes", json=_request(name, data, tag))
    expected = EXPECTED.get(name)
    if answer.status_code != 201:
        clear = answer.status_code == 422 and _clear_refusal(answer.json())
        code = answer.json().get("error", {}).get("code", "") if clear else ""
        _record(name, f"refused:{code}" if clear else "crashed", answer.text)
        assert clear, (answer.status_code, answer.text[:500])
        assert expected == f"refused:{code}", (name, answer.text[:500])
        return
    envelope = answer.json()
    if name in THROUGH_PAGES and not SWEEP:
        # the browser starts only for these (the other files go through the API and services)
        context: BrowserContext = request.getfixturevalue("context")
        page = context.new_page()
        value = "令和7年10月1日" if envelope.get("fields") or _field_rect(data) else None
        _sign_through_pages(page, site, f"contractor-{tag}@example.co.jp", "2468", value)
        _sign_through_pages(page, site, f"buyer-{tag}@city.example.jp", "3333", None)
    else:
        complete_by_services(site.gateway, envelope["id"], value="令和7年10月1日")
    status = site.api.get(f"/api/v1/envelopes/{envelope['id']}").json()
    if status["state"] != "completed":
        _record(name, "crashed", f"accepted but not completed: {json.dumps(status)[:250]}")
    assert status["state"] == "completed", status
    download = site.api.get(f"/api/v1/envelopes/{envelope['id']}/documents/0")
    if download.status_code != 200:
        _record(name, "crashed", f"download {download.status_code}: {download.text[:250]}")
    assert download.status_code == 200, download.text[:300]
    signed = site.shots.parent / f"signed-{name}"
    signed.write_bytes(download.content)
    problems = _validators(signed)
    code, output = _keiyaku_verify(site, signed)
    if code != 0:
        problems.append(f"keiyaku verify: {output[-600:]}")
    _record(name, "broken" if problems else "signed", "; ".join(problems))
    if expected is not None and expected.startswith("known-broken"):
        # pinned with the reason in expected.json; fails loudly once it is fixed
        assert problems, f"{name} now passes: pin it as signed in tests/corpus/expected.json"
        pytest.xfail(expected)
    assert problems == []
    assert expected == "signed", name


def _clear_refusal(body: dict) -> bool:
    """A coded ``document.*`` error with a Japanese message."""
    error = body.get("error", {})
    return str(error.get("code", "")).startswith("document.") and bool(
        JAPANESE.search(str(error.get("message_ja", "")))
    )
