"""Text utilities shared by every stage: where a math text states its final answer.

``\\boxed{}`` is how gold solutions (MATH, Minerva), teacher outputs (distill) and synthetic
solutions (synth) mark their answer; every stage must read it the same way, so it lives here.
"""
from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def find_boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every outermost complete box, in order.

    Brace matching, not a regex, because contents nest (``\\boxed{\\frac{1}{2}}``). ``\\boxed 5``
    takes the next token. A box left open (a truncated generation) is skipped, not guessed at.
    """
    found: list[tuple[int, int, str]] = []
    pos = 0
    while (match := _BOX_RE.search(text, pos)) is not None:
        i = match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{" and text[j - 1] != "\\":
                    depth += 1
                elif text[j] == "}" and text[j - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth != 0:
                pos = i + 1
                continue
            content, end = text[i + 1 : j], j + 1
        elif i > match.end() and (token := re.match(r"[^\s$]+", text[i:])):
            content, end = token.group(0), i + token.end()
        else:
            pos = match.end()
            continue
        content = content.strip()
        inner = find_boxes(content) if content.startswith("\\") else []
        if len(inner) == 1 and inner[0][0] == 0 and inner[0][1] == len(content):
            content = inner[0][2]  # \boxed{\boxed{5}}
        if content:
            found.append((match.start(), end, content))
        pos = end
    return found


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x``, or None."""
    boxes = find_boxes(text)
    return boxes[-1][2] if boxes else None


# A fenced Python block, as tool-variant solutions and tool-integrated completions write them.
CODE_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)


def code_blocks(text: str) -> list[str]:
    """The code of every ```python block, in order: one program run as a notebook would."""
    return CODE_BLOCK.findall(text)


def last_code_block(text: str) -> str | None:
    """The code of the last ```python block, or None."""
    blocks = code_blocks(text)
    return blocks[-1] if blocks else None


# A whitespace-delimited token holding at least one letter or digit, matched whole: the greedy
# ``\S*`` on each side takes the rest of the token, so each such token matches exactly once.
_WORD_RE = re.compile(r"\S*[^\W_]\S*")


def count_words(text: str) -> int:
    """Whitespace tokens that hold a letter or digit ("$x+1=3$" is one word, "--" none)."""
    return len(_WORD_RE.findall(text))


# Math spans: $$..$$, $..$, \[..\], \(..\). Inside one, each command, number, name and operator
# is a token: "Evaluate $\binom{7}{3}$." says as much as an 4-word sentence, not 2 words.
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.DOTALL)
_MATH_TOKEN_RE = re.compile(r"\\[A-Za-z]+|\d+(?:\.\d+)?|[A-Za-z]+|[-+*/=<>^!|]")


_BARE_FORMULA_RE = re.compile(r"\d[-+*/=<>^]|[-+*/=<>^]\d")


def count_tokens(text: str) -> int:
    """Words outside math (:func:`count_words`) plus the tokens inside math spans, and inside a
    formula written without delimiters ("26-18=" is 4): the length measure of problems and
    solutions, fair to short formula-heavy problems."""
    total, pos = 0, 0
    for span in _MATH_SPAN_RE.finditer(text):
        total += _prose_tokens(text[pos:span.start()])
        total += len(_MATH_TOKEN_RE.findall(next(g for g in span.groups() if g is not None)))
        pos = span.end()
    return total + _prose_tokens(text[pos:])


def _prose_tokens(text: str) -> int:
    return sum(len(_MATH_TOKEN_RE.findall(word)) if _BARE_FORMULA_RE.search(word) else 1
               for word in _WORD_RE.findall(text))
