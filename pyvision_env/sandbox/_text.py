"""Text that crosses the sandbox boundary: bounded in length and always valid Unicode (stdlib only)."""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def truncate_middle(text: str, max_chars: int) -> str:
    """Keep the head and the tail of ``text`` with a marker saying how much was cut."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters truncated] ...\n{text[-half:]}"


def replace_surrogates(text: str) -> tuple[str, int]:
    """``text`` with every lone surrogate (which no UTF-8 encoder accepts) replaced by U+FFFD, and the count."""
    return _SURROGATE.subn("\ufffd", text)
