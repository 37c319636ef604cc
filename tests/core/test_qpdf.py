"""qpdf one document at a time per process (core.qpdf): concurrent readings segfaulted."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pikepdf
import pytest

from core.qpdf import open_pdf
from tests.fixtures.pdfs import make_pdf

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_thread_waits_until_the_first_closes_its_document() -> None:
    pdf = make_pdf(pages=1)
    inside, release, order = threading.Event(), threading.Event(), []

    def first() -> None:
        with open_pdf(pdf) as doc:
            order.append(("first opened", len(doc.pages)))
            inside.set()
            release.wait(10)
            order.append(("first closing", 0))

    def second() -> None:
        inside.wait(10)
        with open_pdf(pdf) as doc:
            order.append(("second opened", len(doc.pages)))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(10)
    threads[1].join(0.3)  # the second is blocked while the first holds its document
    assert threads[1].is_alive()
    release.set()
    for t in threads:
        t.join(10)
    assert order == [("first opened", 1), ("first closing", 0), ("second opened", 1)]


def test_the_same_thread_may_open_a_second_document_inside_the_first() -> None:
    pdf = make_pdf(pages=2)
    with open_pdf(pdf) as outer, open_pdf(pdf) as inner:
        assert len(outer.pages) == len(inner.pages) == 2


def test_pikepdf_errors_pass_through_and_the_turn_is_given_back() -> None:
    with pytest.raises(pikepdf.PdfError), open_pdf(b"not a pdf at all"):
        pass
    done = threading.Event()

    def other() -> None:
        with open_pdf(make_pdf(pages=1)):
            done.set()

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert done.is_set()


def _opens_outside(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("open", "new")
        and isinstance(node.func.value, ast.Name | ast.Attribute)
        and ast.unparse(node.func.value) in ("pikepdf", "pikepdf.Pdf", "Pdf")
    ]


def test_every_pikepdf_open_in_the_product_takes_its_turn() -> None:
    found = {
        str(path.relative_to(ROOT)): lines
        for package in ("core", "connectors", "mapping", "schedules", "gateway")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "core" / "qpdf.py" and (lines := _opens_outside(path))
    }
    assert found == {}
    # the scan itself finds such a call
    assert _opens_outside(ROOT / "core" / "qpdf.py")
