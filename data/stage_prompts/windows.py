"""Which part of a source text the teacher sees, recorded as character offsets.

``head``: the first N characters (the paper's choice for web text). ``sections``: cut at
Markdown headings or LaTeX sectioning commands and pack consecutive sections into windows of at
most N characters (the paper splits arXiv papers on sections and textbooks on headings), so a
window never starts in the middle of a thought; one text may then give several windows.
"""
from __future__ import annotations

import re
from typing import Literal

WindowMode = Literal["head", "sections"]
Window = tuple[int, int]  # [start, end) in characters

_SECTION_START = re.compile(r"^(?:#{1,6}\s|\\(?:sub)*section\*?\{|\\chapter\*?\{)", re.MULTILINE)


def section_starts(text: str) -> list[int]:
    starts = [m.start() for m in _SECTION_START.finditer(text)]
    return starts if starts and starts[0] == 0 else [0, *starts]


def windows(text: str, max_chars: int, mode: WindowMode = "head", *, max_windows: int | None = None) -> list[Window]:
    """Windows of ``text``, each at most ``max_chars`` long; empty for a blank text."""
    if not text.strip():
        return []
    if mode == "head":
        return [(0, min(len(text), max_chars))]
    bounds = section_starts(text) + [len(text)]
    found: list[Window] = []
    start = bounds[0]
    for end, following in zip(bounds[1:], bounds[2:] + [None]):
        # Grow the window while the next section still fits; close it otherwise.
        if following is not None and following - start <= max_chars:
            continue
        found.extend(_cut(start, end, max_chars))
        start = end
        if max_windows is not None and len(found) >= max_windows:
            return found[:max_windows]
    return [w for w in found if text[w[0]:w[1]].strip()]


def _cut(start: int, end: int, max_chars: int) -> list[Window]:
    """A section longer than the window is cut into consecutive pieces."""
    return [(s, min(s + max_chars, end)) for s in range(start, end, max_chars)]
