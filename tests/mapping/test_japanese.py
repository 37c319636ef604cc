"""Japanese data as exports write it: era dates, yen amounts, codes and addresses."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from mapping._japanese import ValueProblem, kanji_number, parse_date, parse_yen
from mapping.transforms import TRANSFORMS, Env

ENV = Env(lambda name: None, {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-10-01", dt.date(2025, 10, 1)),
        ("2025/10/01", dt.date(2025, 10, 1)),
        ("2025.10.1", dt.date(2025, 10, 1)),
        ("2025年10月1日", dt.date(2025, 10, 1)),
        ("20251001", dt.date(2025, 10, 1)),
        ("２０２５／１０／０１", dt.date(2025, 10, 1)),
        ("令和7年10月1日", dt.date(2025, 10, 1)),
        ("令和７年１０月１日", dt.date(2025, 10, 1)),
        ("令和七年十月一日", dt.date(2025, 10, 1)),
        ("令和元年5月1日", dt.date(2019, 5, 1)),
        ("R7.10.1", dt.date(2025, 10, 1)),
        ("R07.10.01", dt.date(2025, 10, 1)),
        ("r7/10/1", dt.date(2025, 10, 1)),
        ("令7.10.1", dt.date(2025, 10, 1)),
        ("H31.4.30", dt.date(2019, 4, 30)),
        ("平成31年4月30日", dt.date(2019, 4, 30)),
        ("S64.1.7", dt.date(1989, 1, 7)),
        ("2025/10/01 0:00:00", dt.date(2025, 10, 1)),
        ("令和7年10月1日(水)", dt.date(2025, 10, 1)),
        ("二〇二五年十月三十一日", dt.date(2025, 10, 31)),
    ],
)
def test_dates(text: str, expected: dt.date) -> None:
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("令和元年4月30日", "mapping.date_outside_era"),
        ("平成31年5月1日", "mapping.date_outside_era"),
        ("平成32年1月1日", "mapping.date_outside_era"),
        ("H1.1.7", "mapping.date_outside_era"),
        ("2025/2/30", "mapping.bad_date"),
        ("R7.13.1", "mapping.bad_date"),
        ("令和7年10月", "mapping.bad_date"),
        ("来週", "mapping.bad_date"),
    ],
)
def test_bad_dates(text: str, code: str) -> None:
    with pytest.raises(ValueProblem) as info:
        parse_date(text)
    assert info.value.code == code and info.value.reason_ja


def test_kanji_numbers() -> None:
    assert [kanji_number(t) for t in ("十", "十一", "二十", "三十一", "二〇二五", "七")] == [
        10, 11, 20, 31, 2025, 7,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("31389000.00", 31389000),
        ("１２，３４５，０００円", 12345000),
        ("￥12,345,000", 12345000),
        ("¥1,000", 1000),
        ("\\1,000", 1000),  # a yen sign decoded from CP932 0x5C
        ("△1,000円", -1000),
        ("▲５００", -500),
        ("(2,000)", -2000),
        ("3,138.9万円", 31389000),
        ("1億", 100000000),
        (" 980 000 ", 980000),
    ],
)
def test_yen(text: str, expected: int) -> None:
    assert parse_yen(text) == Decimal(expected)


@pytest.mark.parametrize("text", ["10.5", "千円くらい", "1,000ドル", ""])
def test_bad_yen(text: str) -> None:
    with pytest.raises(ValueProblem):
        parse_yen(text)


def test_corporate_number_check_digit() -> None:
    check = TRANSFORMS["corporate_number"].apply
    assert check("７０００－０１２０５－０００２", None, ENV) == "7000012050002"
    with pytest.raises(ValueProblem) as info:
        check("7000012050003", None, ENV)
    assert info.value.code == "mapping.bad_corporate_number"
    with pytest.raises(ValueProblem):
        check("700001205000", None, ENV)


def test_several_addresses_in_one_cell() -> None:
    emails = TRANSFORMS["emails"].apply
    cell = "keiyaku@Example.CO.JP、ｓｈｉｎｓａ＠example.co.jp;\nkeiyaku@example.co.jp"
    assert emails(cell, None, ENV) == ["keiyaku@example.co.jp", "shinsa@example.co.jp"]
    with pytest.raises(ValueProblem) as info:
        emails("keiyaku@example, other", None, ENV)
    assert info.value.code == "mapping.bad_email"


def test_access_code() -> None:
    assert TRANSFORMS["access_code"].apply("１２３４", None, ENV) == "1234"
    with pytest.raises(ValueProblem):
        TRANSFORMS["access_code"].apply("12a4", None, ENV)
