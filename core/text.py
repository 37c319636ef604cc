"""Text from outside (API, pages, intake records, CSV imports): control characters.

A line break in a one-line value (a title, a name, a document name) breaks the transports the
value later reaches: a mail header refuses it, a ``Content-Disposition`` becomes illegal. A NUL
cannot be stored at all on PostgreSQL. So every entry normalises or refuses before anything is
stored:

- :func:`one_line`: runs of line breaks and tabs become one space (procurement exports often
  carry multi-line titles); any other control character is refused with
  ``text.control_character``.
- :func:`multi_line`: CR LF and CR become LF, tabs stay; other control characters are refused.
- :func:`without_controls`: for search terms: control characters become spaces.
- :func:`printable`: for values that are only recorded (audit actors, search terms echoed back):
  control characters replaced, never refused.

"Control character" is Unicode category Cc (C0, DEL, C1) plus the line and paragraph
separators U+2028/U+2029.
"""

from __future__ import annotations

import re

from core.errors import GatewayError, InputError

__all__ = ["has_no_controls", "multi_line", "one_line", "printable", "without_controls"]

_BREAKS = re.compile(r"[\r\n\t\v\f\x85\u2028\u2029]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_OTHER_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


def has_no_controls(text: str) -> bool:
    """True when ``text`` holds no control character at all (not even a line break)."""
    return _CONTROLS.search(text) is None


def _refuse(
    text: str, match: re.Match[str], label_ja: str, field: str, error: type[GatewayError]
) -> GatewayError:
    char = f"U+{ord(match.group()):04X}"
    return error(
        "text.control_character",
        f"{field}: the control character {char} is not allowed (position {match.start() + 1})",
        f"「{label_ja}」に使用できない制御文字({char})が含まれています。",
        details={"field": field, "character": char, "position": match.start() + 1},
    )


def one_line(
    text: str, *, field: str, label_ja: str, error: type[GatewayError] = InputError
) -> str:
    """``text`` on one line (line breaks and tabs → one space), stripped; ``error`` with code
    ``text.control_character`` for any other control character (NUL, ESC, DEL, ...)."""
    text = _BREAKS.sub(" ", text)
    bad = _CONTROLS.search(text)
    if bad is not None:
        raise _refuse(text, bad, label_ja, field, error)
    return text.strip()


def multi_line(
    text: str, *, field: str, label_ja: str, error: type[GatewayError] = InputError
) -> str:
    """``text`` with LF line ends, stripped; ``error`` (``text.control_character``) for a control
    character other than a line break or tab."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    bad = _OTHER_CONTROLS.search(text)
    if bad is not None:
        raise _refuse(text, bad, label_ja, field, error)
    return text.strip()


def without_controls(text: str) -> str:
    """``text`` with every run of control characters turned into one space, stripped: for
    search terms, where refusing would only be in the way."""
    return re.sub(r"\s+", " ", _CONTROLS.sub(" ", text)).strip()


def printable(text: str) -> str:
    """``text`` with every control character replaced by U+FFFD: fit to record or echo."""
    return _CONTROLS.sub("\ufffd", text)
