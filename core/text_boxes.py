"""Where a text box may go and what it may say: the one rule that the API, the compose page and
the mappings obey (each through :func:`check_text_box` or :func:`shape_problem`).

A box's rectangle is in PDF user space (points, origin bottom-left of the *unrotated* page),
on every surface (API, mappings, the stored field), whatever the page's /Rotate: a page shown
turned by 90, 180 or 270 degrees takes boxes like any other, and the signed PDF turns each box
with its page (``/MK /R``) so that its value reads upright. Only the pages drawn for people (the
signing and compose pages) convert between user space and the turned image they show.

A value typed into a box must fit it in the signed PDF: it is drawn smaller to fit the width as
displayed (the user-space height on a page turned 90 or 270 degrees), but one that would need
less than ``MIN_FIELD_FONT_SIZE`` is refused when entered (:func:`check_values_fit`,
``envelope.field_too_wide``) rather than clipped.

A box is refused (``envelope.bad_field``, Japanese message for the sender) when its rectangle is
not a finite, upright rectangle of at least :data:`MIN_SIZE` on each side, when it does not lie
on the page's displayed area (a pointer may round it :data:`EDGE` points out), when its label is
empty or longer than :data:`LABEL_MAX`, or when its ``max_length`` is outside :data:`MAX_LENGTH`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from core.errors import InputError

if TYPE_CHECKING:
    # Types only: mapping/ checks its boxes with shape_problem and must not load pyHanko.
    from core.model import Field, Party
    from core.signing import PageArea, SigningEngine

__all__ = [
    "EDGE",
    "LABEL_MAX",
    "MAX_LENGTH",
    "MIN_SIZE",
    "MM",
    "Problem",
    "check_text_box",
    "check_values_fit",
    "displayed_size",
    "placement_problem",
    "shape_problem",
]

MM = 72 / 25.4  # PDF points per millimetre
MIN_SIZE = 2 * MM  # a smaller box cannot hold a character
EDGE = 0.5  # points a box may stick out of the page (rounding of the pointer position)
LABEL_MAX = 100  # characters of a box's label (項目名)
MAX_LENGTH = (1, 1000)  # the bounds of a box's max_length (最大文字数)

Problem = tuple[str, str]  # (English for logs and systems, Japanese for the sender)

Rect = tuple[float, float, float, float]


def shape_problem(*, label: str, rect: Rect, max_length: int) -> Problem | None:
    """What is wrong with a box whatever page it is on (rectangle, size, label, length), or
    None. A mapping checks this when it is loaded; the page is known only at creation."""
    if len(rect) != 4 or not all(math.isfinite(v) for v in rect):
        return ("the rectangle is not four finite numbers", "位置と大きさが正しくありません。")
    x1, y1, x2, y2 = rect
    if not (x2 > x1 and y2 > y1):
        return (
            "the rectangle is empty or not x1 < x2, y1 < y2",
            "位置と大きさが正しくありません。",
        )
    if x2 - x1 < MIN_SIZE or y2 - y1 < MIN_SIZE:
        return (
            "the box is smaller than 2 mm on a side",
            "小さすぎます（幅・高さとも2mm以上にしてください）。",
        )
    if not label.strip() or len(label) > LABEL_MAX:
        return (
            f"the label is empty or longer than {LABEL_MAX} characters",
            f"項目名を{LABEL_MAX}文字以内で入力してください。",
        )
    low, high = MAX_LENGTH
    if not low <= max_length <= high:
        return (
            f"max_length is not {low}..{high}",
            f"最大文字数は{low}～{high}で指定してください。",
        )
    return None


def placement_problem(*, rect: Rect, page: PageArea) -> Problem | None:
    """What is wrong with the box's place on ``page`` (outside the displayed area), or None.
    Both are in user space, so the page's rotation does not matter."""
    x1, y1, x2, y2 = rect
    if (
        x1 < page.left - EDGE
        or y1 < page.bottom - EDGE
        or x2 > page.right + EDGE
        or y2 > page.top + EDGE
    ):
        return ("the box is not on the page", "ページの外にはみ出しています。")
    return None


def check_text_box(
    *, number: int, label: str, rect: Rect, max_length: int, page: int, pages: Sequence[PageArea]
) -> None:
    """Refuse box ``number`` (1-based, for the message) with ``envelope.bad_field`` unless it
    obeys every rule on ``page`` (1-based) of a document whose pages are ``pages``."""
    problem: Problem | None
    if not 1 <= page <= len(pages):
        problem = ("page out of range", f"ページは1～{len(pages)}で指定してください。")
    else:
        problem = shape_problem(label=label, rect=rect, max_length=max_length)
        problem = problem or placement_problem(rect=rect, page=pages[page - 1])
    if problem is not None:
        message_en, message_ja = problem
        raise InputError(
            "envelope.bad_field",
            f"field {number}: {message_en}",
            f"{number}番目のテキストボックス: {message_ja}",
            details={"field": number},
        )


def displayed_size(rect: Rect, rotation: int) -> tuple[float, float]:
    """(width, height) of ``rect`` as shown on a page turned by ``rotation`` degrees: the value
    runs along the displayed width, which is the user-space height on a page turned 90 or 270."""
    x1, y1, x2, y2 = rect
    width, height = abs(x2 - x1), abs(y2 - y1)
    return (height, width) if rotation % 180 == 90 else (width, height)


def check_values_fit(
    *,
    engine: SigningEngine,
    party: Party,
    values: Mapping[str, str],
    rotation_of: Callable[[Field], int] | None = None,
) -> None:
    """Refuse (``envelope.field_too_wide``, with about how many characters fit) a value of one
    of ``party``'s boxes that would not fit the box whole and legible in the signed PDF.
    ``rotation_of`` gives the /Rotate of a box's page (all upright when None)."""
    from core.signing import MIN_FIELD_FONT_SIZE

    for f in party.fields:
        value = (values.get(f.id) or "").strip()
        rotation = rotation_of(f) if rotation_of is not None else 0
        width, height = displayed_size((f.x1, f.y1, f.x2, f.y2), rotation)
        if not value or engine.text_fits(value, width=width, height=height):
            continue
        # Full-width characters are one em wide: about this many fit at the smallest size.
        size = min(MIN_FIELD_FONT_SIZE, max(height - 4, 4.0))
        fit = max(1, int((width - 4) // size))
        raise InputError(
            "envelope.field_too_wide",
            f"the value of field {f.label!r} does not fit its box",
            f"「{f.label}」が枠に収まりません。全角でおよそ{fit}文字以内に短くしてください。",
            details={"field": f.id, "characters": fit},
        )
