"""The one text-box rule (core.text_boxes), as create_envelope applies it to every caller."""

from __future__ import annotations

import csv
import io
import re

import pytest
from pyhanko.pdf_utils.reader import PdfFileReader
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.drafts import ContractorRef, UsageRequestDraft
from core.envelopes.creation import DocumentInput, FieldInput, PartyInput, create_envelope
from core.errors import StateError
from core.intake.awards import AwardItem, get_award, intake_awards
from core.intake.contractors import upsert_usage_request
from core.model import Envelope
from core.runtime import Runtime
from core.signing import MIN_FIELD_FONT_SIZE, FieldBox, PageArea
from core.states import PartyRole
from core.text_boxes import MIN_SIZE, MM, check_text_box, check_values_fit
from mapping import load_mapping
from tests.fixtures.intake import (
    AUTHORITIES,
    HEADER,
    MAPPINGS,
    award_rows,
    cp932,
    policy,
    register_officials,
)
from tests.fixtures.pdfs import make_pdf, with_page_box

A4 = PageArea(0, 0, 595.28, 841.89)
GOOD = (300.0, 700.0, 500.0, 720.0)

# The boxes every surface must refuse, with the Japanese reason the sender reads.
BAD_BOXES = [
    pytest.param((5000.0, 5000.0, 5180.0, 5020.0), "日付", 20, "ページの外にはみ出しています", id="off-page"),
    pytest.param((-30.0, 700.0, 100.0, 720.0), "日付", 20, "ページの外にはみ出しています", id="left-of-page"),
    pytest.param((300.0, 700.0, 301.0, 720.0), "日付", 20, "小さすぎます", id="too-narrow"),
    pytest.param((300.0, 720.0, 500.0, 700.0), "日付", 20, "位置と大きさ", id="upside-down"),
    pytest.param((300.0, float("nan"), 500.0, 720.0), "日付", 20, "位置と大きさ", id="nan"),
    pytest.param(GOOD, "長" * 101, 20, "項目名を100文字以内", id="long-label"),
    pytest.param(GOOD, "日付", 5000, "最大文字数は1～1000", id="max-length"),
]  # fmt: skip


def _problem(rect: tuple[float, float, float, float], label: str, most: int, **kw: object) -> str:
    args: dict[str, object] = {"page": 1, "pages": [A4], **kw}
    with pytest.raises(StateError) as refused:
        check_text_box(number=2, label=label, rect=rect, max_length=most, **args)  # type: ignore[arg-type]
    assert refused.value.code == "envelope.bad_field" and refused.value.details == {"field": 2}
    return refused.value.message_ja


@pytest.mark.parametrize(("rect", "label", "most", "reason"), BAD_BOXES)
def test_each_bad_box_is_refused_with_its_reason(
    rect: tuple[float, float, float, float], label: str, most: int, reason: str
) -> None:
    assert _problem(rect, label, most).startswith(f"2番目のテキストボックス: {reason}")


def test_a_good_box_passes_and_the_edges_are_exact() -> None:
    check_text_box(number=1, label="日付", rect=GOOD, max_length=20, page=1, pages=[A4])
    # 2 mm is enough; half a point out of the page is pointer rounding, more is off the page.
    square = (100.0, 100.0, 100 + 2 * MM, 100 + 2 * MM)
    check_text_box(number=1, label="日", rect=square, max_length=1, page=1, pages=[A4])
    check_text_box(number=1, label="日", rect=(-0.5, 0, 50, 20), max_length=1, page=1, pages=[A4])
    assert "はみ出し" in _problem((-0.6, 0, 50, 20), "日", 1)
    assert "ページは1～1" in _problem(GOOD, "日付", 20, page=2)
    # A page shown turned takes boxes (the signed PDF turns them with it); the check stays in
    # user space, the unrotated page, whatever the page looks like on screen.
    for rotation in (90, 180, 270):
        turned = [PageArea(0, 0, 595, 842, rotation)]
        check_text_box(number=1, label="日付", rect=GOOD, max_length=20, page=1, pages=turned)
        # inside the 842-point displayed width, but off the 595-point user-space width
        assert "はみ出し" in _problem((700, 100, 800, 120), "日付", 20, pages=turned)
    # A cropped page: only its visible area counts.
    cropped = [PageArea(100, 100, 400, 500)]
    assert "はみ出し" in _problem((50, 200, 150, 220), "日付", 20, pages=cropped)


def _create(session: Session, runtime: Runtime, pdf: bytes, field: FieldInput) -> Envelope:
    return create_envelope(
        session=session,
        runtime=runtime,
        title="市道１号線舗装補修工事",
        creator="開発市 契約課",
        documents=[DocumentInput("請書.pdf", pdf)],
        parties=[
            PartyInput(PartyRole.SIGNER, "髙橋 一郎", "ichiro@example.jp", "株式会社髙橋建設")
        ],
        fields=[field],
    )


@pytest.mark.parametrize(("rect", "label", "most", "reason"), BAD_BOXES)
def test_create_envelope_refuses_the_bad_box_and_stores_nothing(
    session: Session,
    dev_runtime: Runtime,
    rect: tuple[float, float, float, float],
    label: str,
    most: int,
    reason: str,
) -> None:
    field = FieldInput(document=0, party=0, label=label, page=1, rect=rect, max_length=most)
    with pytest.raises(StateError) as refused:
        _create(session, dev_runtime, make_pdf(pages=1), field)
    assert refused.value.code == "envelope.bad_field"
    assert reason in refused.value.message_ja
    assert session.scalar(select(func.count()).select_from(Envelope)) == 0


def test_create_envelope_holds_boxes_to_the_pages_own_area(
    session: Session, dev_runtime: Runtime
) -> None:
    good = FieldInput(document=0, party=0, label="記入日", page=1, rect=GOOD, max_length=20)
    envelope = _create(session, dev_runtime, make_pdf(pages=1), good)
    assert [(f.label, f.x1, f.y2) for f in envelope.fields] == [("記入日", 300, 720)]
    # The same box on a page cropped below it is refused.
    cropped = with_page_box(make_pdf(pages=1), crop=(0, 0, 595, 600))
    with pytest.raises(StateError, match="not on the page"):
        _create(session, dev_runtime, cropped, good)
    # On a page shown turned it is taken as it is, in user space (this was refused before the
    # signing and compose pages could show boxes on turned pages).
    for rotation in (90, 180, 270):
        turned = with_page_box(make_pdf(pages=1), rotate=rotation)
        envelope = _create(session, dev_runtime, turned, good)
        assert [(f.x1, f.y1, f.x2, f.y2) for f in envelope.fields] == [GOOD]


def test_a_value_fits_the_box_as_displayed_on_a_turned_page(
    session: Session, dev_runtime: Runtime
) -> None:
    # 16 points wide and 72 high in user space: on a page turned 90 or 270 degrees it is shown
    # 72 wide and 16 high, and the value runs along those 72 points in the signed PDF.
    upright = FieldInput(
        document=0, party=0, label="記入日", page=1, rect=(300, 600, 316, 672), max_length=100
    )
    turned = with_page_box(make_pdf(pages=1), rotate=90)
    envelope = _create(session, dev_runtime, turned, upright)
    party = envelope.parties[0]
    (field,) = party.fields
    engine = dev_runtime.signing
    for rotation in (90, 270):
        check_values_fit(
            engine=engine,
            party=party,
            values={field.id: "令" * 13},
            rotation_of=lambda f, r=rotation: r,
        )
        with pytest.raises(StateError) as refused:
            check_values_fit(
                engine=engine,
                party=party,
                values={field.id: "令" * 14},
                rotation_of=lambda f, r=rotation: r,
            )
        assert "およそ13文字以内" in refused.value.message_ja
    # read as an upright page, the same box holds hardly anything
    with pytest.raises(StateError):
        check_values_fit(engine=engine, party=party, values={field.id: "令和8年4月1日"})


def test_a_value_fits_its_box_in_the_signed_pdf_or_is_refused_with_how_much_fits(
    session: Session, dev_runtime: Runtime
) -> None:
    narrow = FieldInput(
        document=0, party=0, label="記入日", page=1, rect=(300, 700, 372, 716), max_length=100
    )
    envelope = _create(session, dev_runtime, make_pdf(pages=1), narrow)
    party = envelope.parties[0]
    (field,) = party.fields
    engine = dev_runtime.signing
    check_values_fit(engine=engine, party=party, values={field.id: "令和8年4月1日"})
    check_values_fit(engine=engine, party=party, values={})  # nothing typed: nothing to fit
    with pytest.raises(StateError) as refused:
        check_values_fit(engine=engine, party=party, values={field.id: "令" * 14})
    assert refused.value.code == "envelope.field_too_wide"
    assert (
        refused.value.message_ja
        == "「記入日」が枠に収まりません。全角でおよそ13文字以内に短くしてください。"
    )
    check_values_fit(engine=engine, party=party, values={field.id: "令" * 13})  # as promised
    # A box only as high as the rule's minimum takes whatever its width holds at that height.
    assert engine.text_fits("令和", width=30, height=MIN_SIZE)
    assert not engine.text_fits("令" * 8, width=30, height=MIN_SIZE)


def test_the_filled_value_is_drawn_whole_at_the_size_the_check_promised(
    dev_runtime: Runtime,
) -> None:
    engine = dev_runtime.signing
    prepared = engine.prepare(
        make_pdf(pages=1),
        certificate_id="0" * 32,
        fields=[FieldBox(name="kg_text_1", page=1, rect=(300, 700, 372, 716))],
    )
    value = "令" * 13
    assert engine.text_fits(value, width=72, height=16)
    signed = engine.sign_approval(
        prepared, signature_field="kg_sig_1", reason="承認", values={"kg_text_1": value}
    )
    reader = PdfFileReader(io.BytesIO(signed))
    (field,) = [
        f.get_object()
        for f in reader.root["/AcroForm"]["/Fields"]
        if f.get_object().get("/T") == "kg_text_1"
    ]
    stream = field["/AP"]["/N"].get_object().data.decode("latin-1")
    size = float(re.search(r"/KgFieldFont ([\d.]+) Tf", stream).group(1))  # type: ignore[union-attr]
    assert MIN_FIELD_FONT_SIZE <= size <= 10
    assert 13 * size <= 72 - 4 + 0.01  # 13 full-width glyphs of one em each, inside the padding


def test_a_mapping_box_off_the_delivered_page_keeps_the_award_waiting_with_the_reason(
    session: Session, dev_runtime: Runtime
) -> None:
    """A mapping cannot know the page before the PDF arrives; intake holds the box to the same
    rule when it makes the envelope, and the award says why it waits."""
    text = (MAPPINGS / "municipal.yaml").read_text(encoding="utf-8")
    off_page = load_mapping(
        text.replace("rect: [380, 60, 560, 80]", "rect: [5000, 5000, 5180, 5020]"),
        name="municipal.yaml",
    )
    header, *rows = cp932([HEADER, award_rows()[0]]).decode("cp932").splitlines()
    record = dict(zip(header.split(","), next(csv.reader([rows[0]])), strict=True))
    draft = off_page.apply(record, source="ebid", authorities=AUTHORITIES).draft
    assert draft is not None
    register_officials(session)
    upsert_usage_request(
        session=session,
        source="uketsuke",
        draft=UsageRequestDraft(
            contractor=ContractorRef(registry_code="000123"),
            signer_name="髙橋 太郎",
            signer_email="takahashi@example.co.jp",
            access_code="1234",
        ),
        policy=policy(),
    )
    counts = intake_awards(
        session=session,
        runtime=dev_runtime,
        policy=policy(),
        source="ebid",
        items=[AwardItem(draft)],
        fetch=lambda _ref: make_pdf(pages=1),
    )
    award = get_award(session=session, source="ebid", award_id="R7-001")
    assert counts.released == 0 and award.envelope_id is None
    assert (
        award.note == "envelope.bad_field: 1番目のテキストボックス: ページの外にはみ出しています。"
    )
    assert session.scalar(select(func.count()).select_from(Envelope)) == 0
