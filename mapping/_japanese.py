"""Japanese data as procurement exports write it: era dates, yen amounts, kanji numerals.

Every parser takes text and returns a value or raises :class:`ValueProblem` with an English and
a Japanese reason; nothing here knows about mappings.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from decimal import Decimal, InvalidOperation


class ValueProblem(Exception):
    """A value cannot be read as asked."""

    def __init__(self, code: str, reason: str, reason_ja: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.reason_ja = reason_ja


def nfkc(text: str) -> str:
    """NFKC-normalised and stripped (full-width digits and letters become ASCII, ㈱ → (株))."""
    return unicodedata.normalize("NFKC", text).strip()


# --- kanji numerals -------------------------------------------------------------------------

_KANJI_DIGITS = {"〇": 0, "零": 0, "一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
                 "八": 8, "九": 9}  # fmt: skip
_KANJI_UNITS = {"十": 10, "百": 100, "千": 1000}
_KANJI_RUN = re.compile("[〇零一二三四五六七八九十百千]+")


def kanji_number(run: str) -> int:
    """``二〇二五`` → 2025 (digit by digit), ``三十一`` → 31, ``十`` → 10."""
    if not any(ch in _KANJI_UNITS for ch in run):
        return int("".join(str(_KANJI_DIGITS[ch]) for ch in run))
    total, digit = 0, None
    for ch in run:
        if ch in _KANJI_UNITS:
            total += (digit if digit is not None else 1) * _KANJI_UNITS[ch]
            digit = None
        else:
            digit = _KANJI_DIGITS[ch]
    return total + (digit or 0)


def replace_kanji_numerals(text: str) -> str:
    """Every run of kanji numerals in ``text`` as arabic digits."""
    return _KANJI_RUN.sub(lambda m: str(kanji_number(m.group(0))), text)


# --- dates ----------------------------------------------------------------------------------


class Era:
    """One Japanese era: its names and the days it covers."""

    def __init__(self, name: str, letter: str, start: dt.date, end: dt.date | None) -> None:
        self.name, self.letter, self.start, self.end = name, letter, start, end


ERAS = (
    Era("令和", "R", dt.date(2019, 5, 1), None),
    Era("平成", "H", dt.date(1989, 1, 8), dt.date(2019, 4, 30)),
    Era("昭和", "S", dt.date(1926, 12, 25), dt.date(1989, 1, 7)),
    Era("大正", "T", dt.date(1912, 7, 30), dt.date(1926, 12, 24)),
)
_ERA_BY_KEY = {key: era for era in ERAS for key in (era.name, era.letter, era.name[0])}

_WEEKDAY = re.compile(r"[(（]\s*[月火水木金土日](?:曜日?)?\s*[)）]")
_TIME = re.compile(r"[ T]+\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?$")
_ERA_DATE = re.compile(
    r"^(?P<era>令和|平成|昭和|大正|[RHSTrhst令平昭大])\s*\.?\s*(?P<y>\d{1,2}|元)\s*"
    r"(?:年\s*(?P<m1>\d{1,2})\s*月\s*(?P<d1>\d{1,2})\s*日?"
    r"|[./\-]\s*(?P<m2>\d{1,2})\s*[./\-]\s*(?P<d2>\d{1,2}))$"
)
_WESTERN = re.compile(
    r"^(?P<y>\d{4})\s*(?:年\s*(?P<m1>\d{1,2})\s*月\s*(?P<d1>\d{1,2})\s*日?"
    r"|[./\-]\s*(?P<m2>\d{1,2})\s*[./\-]\s*(?P<d2>\d{1,2}))$"
)
_COMPACT = re.compile(r"^(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})$")


def _bad_date(text: str, why: str, why_ja: str) -> ValueProblem:
    return ValueProblem(
        "mapping.bad_date",
        f"{text!r} is not a date: {why}",
        f"「{text}」は日付として読めません({why_ja})。",
    )


def _make_date(text: str, year: int, month: int, day: int) -> dt.date:
    try:
        return dt.date(year, month, day)
    except ValueError as exc:
        raise _bad_date(text, "no such day", "存在しない日付です") from exc


def parse_date(text: str) -> dt.date:
    """Read a date as Japanese exports write it.

    ``2025-10-01``, ``2025/10/01``, ``2025年10月1日``, ``20251001``, ``令和7年10月1日``,
    ``令和元年5月1日``, ``R7.10.1``, ``R07.10.01``, ``H31/4/30``, kanji numerals
    (``令和七年十月一日``), full-width digits, a weekday in brackets and an Excel time part
    (``2025/10/01 0:00:00``) are accepted. An era date outside its era (``平成32年``,
    ``令和元年4月1日``) is refused.
    """
    original = text
    text = _WEEKDAY.sub("", nfkc(text))
    text = _TIME.sub("", text).strip()
    text = replace_kanji_numerals(text)
    if not text:
        raise _bad_date(original, "empty", "空欄です")
    match = _ERA_DATE.match(text)
    if match:
        era = _ERA_BY_KEY[match["era"].upper() if len(match["era"]) == 1 else match["era"]]
        era_year = 1 if match["y"] == "元" else int(match["y"])
        if era_year < 1:
            raise _bad_date(original, "era year 0", "元号の年が0です")
        month = int(match["m1"] or match["m2"])
        day = int(match["d1"] or match["d2"])
        value = _make_date(original, era.start.year + era_year - 1, month, day)
        if value < era.start or (era.end is not None and value > era.end):
            end = era.end.isoformat() if era.end else ""
            raise ValueProblem(
                "mapping.date_outside_era",
                f"{original!r} is outside the {era.letter} era ({era.start.isoformat()}..{end})",
                f"「{original}」は{era.name}の期間({era.start:%Y年%m月%d日}〜"
                f"{era.end.strftime('%Y年%m月%d日') if era.end else ''})の外の日付です。",
            )
        return value
    match = _WESTERN.match(text)
    if match:
        month = int(match["m1"] or match["m2"])
        day = int(match["d1"] or match["d2"])
        return _make_date(original, int(match["y"]), month, day)
    match = _COMPACT.match(text)
    if match:
        return _make_date(original, int(match["y"]), int(match["m"]), int(match["d"]))
    raise _bad_date(original, "unknown form", "形式が分かりません")


# --- amounts --------------------------------------------------------------------------------

_MULTIPLIERS = {"億": Decimal(100_000_000), "万": Decimal(10_000), "千": Decimal(1_000)}
_AMOUNT_NOISE = re.compile(r"[\s,円¥\\]|JPY|税込|税抜", re.IGNORECASE)


def parse_decimal(text: str) -> Decimal:
    """Read a number: full-width digits, thousands commas (, and ，), spaces, 円, ¥/￥, a
    leading △ / ▲ / - or (brackets) for negative, and a 万/億/千 unit (``3,138.9万円``)."""
    original = text
    text = nfkc(text)
    negative = False
    if text[:1] in ("△", "▲", "-", "−"):
        negative, text = True, text[1:]
    elif text.startswith("(") and text.endswith(")"):
        negative, text = True, text[1:-1]
    text = _AMOUNT_NOISE.sub("", text)
    if text[:1] in ("△", "▲", "-"):  # ¥-1,000 / ￥△1,000
        negative, text = True, text[1:]
    multiplier = Decimal(1)
    if text[-1:] in _MULTIPLIERS:
        multiplier, text = _MULTIPLIERS[text[-1]], text[:-1]
    if not re.fullmatch(r"\d+(\.\d+)?", text):
        raise ValueProblem(
            "mapping.bad_number",
            f"{original!r} is not a number",
            f"「{original}」は数値として読めません。",
        )
    try:
        value = Decimal(text) * multiplier
    except InvalidOperation as exc:  # pragma: no cover - the pattern above rules it out
        raise ValueProblem(
            "mapping.bad_number",
            f"{original!r} is not a number",
            f"「{original}」は数値として読めません。",
        ) from exc
    return -value if negative else value


def parse_yen(text: str) -> Decimal:
    """A yen amount as a whole number of yen (``"31389000.00"`` is fine, ``"10.5"`` is not)."""
    value = parse_decimal(text)
    if value != value.to_integral_value():
        raise ValueProblem(
            "mapping.bad_amount",
            f"{text!r} has a fraction of a yen",
            f"「{text}」に円未満の端数があります。",
        )
    return value.quantize(Decimal(1))
