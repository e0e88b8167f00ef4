"""Money and data values as text: exact, never through a float, never rounded.

Every stage that writes an amount for people (classify's reason sentences, the report, the
warning log) formats it here, so "1,249.99" means the same thing everywhere. ``one_line`` is the
one escaper for data values written into a line of text.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

import polars as pl

# Python's int() refuses text past 4,300 digits; an i128 has at most 39.
_INTEGER_TEXT: Final = re.compile(r"[+-]?[0-9]{1,4000}")
_DECIMAL_TEXT: Final = re.compile(r"(-?)([0-9]{1,4000})(?:\.([0-9]{1,4000}))?")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def format_major(base_units: int, decimals: int) -> str:
    """``base_units`` of a token with ``decimals`` as major units, exactly, with thousands
    separators and at least two fraction digits (fewer only if the token has fewer):
    ``format_major(12499900000, 7) == "1,249.99"``."""
    sign = "-" if base_units < 0 else ""
    digits = str(abs(base_units))
    if decimals <= 0:
        return f"{sign}{int(digits):,}"
    digits = digits.rjust(decimals + 1, "0")
    whole, fraction = digits[:-decimals], digits[-decimals:]
    keep = max(len(fraction.rstrip("0")), min(2, decimals))
    return f"{sign}{int(whole):,}.{fraction[:keep]}"


def format_major_expr(base_units: pl.Expr, decimals: pl.Expr) -> pl.Expr:
    """:func:`format_major` as a polars expression over exact integer text and decimals (>= 0).

    The vectorised path for the common reason sentences; tested against :func:`format_major`.
    """
    negative = base_units.str.starts_with("-")
    padded = base_units.str.strip_chars_start("-").str.pad_start(decimals + 1, "0")
    split = padded.str.len_chars() - decimals
    whole = padded.str.slice(0, split)
    # Thousands separators: group the reversed digits in threes, join, reverse back.
    grouped = whole.str.reverse().str.extract_all(r"\d{1,3}").list.join(",").str.reverse()
    fraction = padded.str.slice(split).str.strip_chars_end("0")
    fraction = (
        pl.when(decimals >= 2).then(fraction.str.pad_end(2, "0")).otherwise(fraction.str.pad_end(1, "0"))
    )
    text = pl.when(decimals > 0).then(pl.concat_str(grouped, pl.lit("."), fraction)).otherwise(grouped)
    # "-0" cannot arise: BIGNUM and HUGEINT print zero unsigned.
    return pl.when(negative).then(pl.lit("-") + text).otherwise(text)


def format_base_units(base_units: str | int | None, decimals: int | None, *, signed: bool = False) -> str:
    """Exact major-unit text of an integer amount: ``("12500000000", 7) -> "1,250.00"``.

    The digits come from :func:`format_major` (at least two decimals, trailing zeros past
    them dropped: ``1,249.9999999``); this adds a typographic minus, an optional plus, and "n/a"
    for text that is not an integer, so bad input never crashes the report.
    """
    if base_units is None:
        return "n/a"
    text = str(base_units).strip()
    if not _INTEGER_TEXT.fullmatch(text):
        return "n/a"
    value = int(text)
    if decimals is None or decimals < 0:
        body = f"{abs(value):,} base units"
    else:
        body = format_major(abs(value), decimals)
    if value < 0:
        return "\u2212" + body
    return "+" + body if signed and value > 0 else body


def format_token_amount(base_units: str | int | None, decimals: int | None, symbol: str | None) -> str:
    """:func:`format_base_units` followed by the token's symbol, when it has one (control
    characters escaped: a symbol is chain data)."""
    text = format_base_units(base_units, decimals)
    return f"{text} {one_line(symbol)}" if symbol else text


def format_decimal(text: str | None) -> str:
    """Exact decimal text, as a database prints a numeric, as major units at its own scale:
    ``"155560.584999" -> "155,560.584999"``, ``"-0.10" -> "\u22120.10"``; "n/a" for anything else."""
    parts = split_decimal(text)
    if parts is None:
        return "n/a"
    sign, whole, fraction = parts
    return format_base_units(sign + whole + fraction, len(fraction))


def split_decimal(text: str | None) -> tuple[str, str, str] | None:
    """``(sign, whole digits, fraction digits)`` of exact decimal text, or None when it is not one."""
    if text is None:
        return None
    match = _DECIMAL_TEXT.fullmatch(text.strip())
    if match is None:
        return None
    sign, whole, fraction = match.groups()
    return sign, whole, fraction or ""


def one_line(text: str) -> str:
    """``text`` with control characters shown as escapes, so it cannot forge log lines."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def major_units(base_units: str | None, decimals: int | None) -> str | None:
    """Exact major-unit text of an integer amount in base units (``"12345", 2 -> "123.45"``)."""
    if base_units is None or decimals is None:
        return None
    try:
        # Built from text, not scaleb(): Decimal arithmetic rounds to the context's 28 digits.
        value = Decimal(f"{int(base_units)}E-{decimals}")
    except ValueError:
        return None
    return format(value, "f")
