"""String templates: ``"{調達案件名称}（{工区}）"``, ``"/pdf/{1}.pdf"``; ``{{`` and ``}}`` are
literal braces. A template that is exactly one placeholder yields the value itself (not text)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class TemplateProblem(Exception):
    """The template text is malformed."""


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True)
class Template:
    """A parsed template: literal parts and placeholder names, alternating."""

    parts: tuple[str | tuple[str], ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse ``text``; raise :class:`TemplateProblem` on an unbalanced brace."""
        parts: list[str | tuple[str]] = []
        literal: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "{" and text.startswith("{{", i):
                literal.append("{")
                i += 2
            elif ch == "}" and text.startswith("}}", i):
                literal.append("}")
                i += 2
            elif ch == "{":
                end = text.find("}", i)
                if end < 0:
                    raise TemplateProblem(f"unclosed '{{' in {text!r}")
                name = text[i + 1 : end].strip()
                if not name or "{" in name:
                    raise TemplateProblem(f"empty or nested placeholder in {text!r}")
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append((name,))
                i = end + 1
            elif ch == "}":
                raise TemplateProblem(f"single '}}' in {text!r} (write '}}}}' for a brace)")
            else:
                literal.append(ch)
                i += 1
        if literal:
            parts.append("".join(literal))
        return cls(tuple(parts))

    @property
    def names(self) -> list[str]:
        """The placeholder names, in order."""
        return [p[0] for p in self.parts if isinstance(p, tuple)]

    @property
    def is_literal(self) -> bool:
        """True when there is no placeholder."""
        return not self.names

    def render(self, resolve: Callable[[str], Any]) -> Any:
        """Fill the placeholders. One placeholder alone returns its value unchanged; when every
        placeholder is empty the result is None."""
        if len(self.parts) == 1 and isinstance(self.parts[0], tuple):
            return resolve(self.parts[0][0])
        out: list[str] = []
        filled = False
        for part in self.parts:
            if isinstance(part, tuple):
                value = resolve(part[0])
                if value is not None and value != "":
                    filled = True
                out.append(_as_text(value))
            else:
                out.append(part)
        if self.names and not filled:
            return None
        return "".join(out)
