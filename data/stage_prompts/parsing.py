"""Reading a problem/solution text: the problem, the solution, its boxed answer and its program.

Two layouts are read the same way. The teacher is asked for (see ``prompts/variants.yaml``)::

    ## Problem
    <the problem>

    ## Solution
    <the solution, ending with \\boxed{...}>

and the JiuZhang3.0 pre-training text (:mod:`synth.text_format`, its released corpus, its eval
prompts) is ``## Question`` followed by ``## Solution`` or, for tool data, ``## Code Solution``.

Headers. A header is a line of ``#`` marks and a title, matched in any case, with an optional
colon, and only OUTSIDE code fences: a program's ``# Solution`` comment is code, not a header.
The problem header is titled "Problem" or "Question" (optionally "Problem Statement"); a
solution header is a title ending in "Solution" with at most three words before it ("Solution",
"Code Solution", "Step-by-Step Solution", "Python Solution"). Text after the colon on a solution
header line belongs to the solution. A title naming code or a program marks the tool layout
(``variant == "tool"``); any other solution header the chain-of-thought one.

The prompt itself ends with the problem header, so a completion usually starts with the
problem text; a chat teacher may repeat the header, or put a line of chatter before it: the
problem follows the LAST problem header before the solution (without one it is everything
before the solution). A text that goes on to a second problem header is cut there: only the
first pair counts. Sub-headers inside a solution ("### Step 1", "### Conclusion") are solution.
A text whose only solution header sits inside a fence that was never closed (a problem quoting
sample input that forgot its closing fence) is read again ignoring fences.

Round trip: ``parse_completion(pretraining_text(problem, solution, variant))`` gives back the
stripped problem and solution and the variant, for any problem and solution without header
lines of their own outside code fences.

:func:`parse_completion` never raises: garbage gives ``(None, reason)`` with reason one of
``"empty"``, ``"no_problem"``, ``"no_solution"``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from data.text import code_blocks, count_words, find_boxes, last_boxed

ParseFailure = Literal["empty", "no_problem", "no_solution"]

MAX_ANSWER_CHARS = 200  # a longer "answer" is a box left open around prose or garbage
MAX_ANSWER_WORDS = 8  # prose words (outside LaTeX commands): more is a sentence, not an answer

_HEADER = re.compile(r"[ \t]*#{1,6}[ \t]*(?P<title>[^\n]*?)[ \t]*$")
_PROBLEM_TITLE = re.compile(r"(?:problem|question)(?:[ \t]+statement)?[ \t]*:?", re.IGNORECASE)
# Up to three words before "solution"; group "rest" is solution text on the header line.
_SOLUTION_TITLE = re.compile(r"(?P<name>(?:[\w-]+[ \t]+){0,3}?solution)\b[ \t]*:?[ \t]*(?P<rest>.*)", re.IGNORECASE)
_TOOL_TITLE = re.compile(r"\b(?:code|python|program|tool)\b", re.IGNORECASE)
_FENCE = re.compile(r"[ \t]*(```|~~~)")
_PROGRAM_FENCE = re.compile(r"```[ \t]*(?:python|py)\b", re.IGNORECASE)
_OUTPUT_FENCE = re.compile(r"```[ \t]*output\b", re.IGNORECASE)


@dataclass
class ParsedOutput:
    problem: str
    solution: str
    final_answer: str | None  # the last \boxed{} of the solution, whitespace runs made one space
    code: str | None  # the solution's ```python blocks, in order, as one program (tool variant)
    variant: str | None = None  # "tool" / "cot" from the solution header's title
    code_blocks: list[str] = field(default_factory=list)


@dataclass
class _Header:
    kind: str  # "problem" or "solution"
    start: int  # offset of the header line
    body: int  # offset where the header's content starts
    tool: bool = False


def _headers(text: str, respect_fences: bool = True) -> list[_Header]:
    """Problem and solution header lines outside code fences (or anywhere), in order."""
    found: list[_Header] = []
    fence: str | None = None
    offset = 0
    for line in text.splitlines(keepends=True):
        start, offset = offset, offset + len(line)
        bare = line.rstrip("\r\n")
        if respect_fences and (opened := _FENCE.match(bare)) is not None:
            marker = opened.group(1)
            if fence is None:
                fence = marker
            elif marker == fence and not bare.strip().strip(marker[0]):
                fence = None
            continue
        if fence is not None or (header := _HEADER.fullmatch(bare)) is None:
            continue
        title = header.group("title").strip("*_ \t")
        if _PROBLEM_TITLE.fullmatch(title):
            found.append(_Header("problem", start, offset))
        elif (solution := _SOLUTION_TITLE.match(title)) is not None:
            rest = solution.group("rest").strip("*_ \t")
            body = start + bare.index(rest, bare.lower().index("solution")) if rest else offset
            found.append(_Header("solution", start, body, bool(_TOOL_TITLE.search(solution.group("name")))))
    return found


def parse_completion(text: str | None) -> tuple[ParsedOutput | None, ParseFailure | None]:
    """``(parsed, None)`` on success, ``(None, reason)`` when there is no problem/solution pair."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty"
    headers = _headers(text)
    if not any(h.kind == "solution" for h in headers):
        headers = _headers(text, respect_fences=False)  # a fence left open before the header
    first_solution = next((i for i, h in enumerate(headers) if h.kind == "solution"), None)
    if first_solution is None:
        return None, "no_solution"
    solution_header = headers[first_solution]
    problem_headers = [h for h in headers[:first_solution] if h.kind == "problem"]
    head = text[problem_headers[-1].body if problem_headers else 0: solution_header.start]
    problem = head.strip()
    if not problem:
        return None, "no_problem"
    end = next((h.start for h in headers[first_solution + 1:] if h.kind == "problem"), len(text))
    solution = text[solution_header.body: end].strip()
    if not solution:
        return None, "no_solution"
    blocks = code_blocks(solution)
    return ParsedOutput(problem, solution, normalized_answer(last_boxed(solution)),
                        "\n\n".join(blocks) if blocks else None,
                        "tool" if solution_header.tool else "cot", blocks), None


def normalized_answer(answer: str | None) -> str | None:
    """A box written over several lines (a matrix) as one line: LaTeX reads a newline as a space."""
    return None if answer is None else re.sub(r"\s*\n\s*", " ", answer).strip()


def solution_leaked(problem: str, final_answer: str | None = None) -> bool:
    """Part of the solution ended up in the problem: program output (an ```output block), a
    problem that ENDS in a program (no question after its last ```python block), a fence left
    open, or a box around the solution's own answer. A plain fence (a grid, a table, a tree), a
    program the question is about ("the following code prints a list; how many ...?") and a box
    used as a placeholder ("fill in $\\boxed{?}$") are part of a legitimate problem."""
    if _OUTPUT_FENCE.search(problem) or problem.count("```") % 2:
        return True
    programs = list(_PROGRAM_FENCE.finditer(problem))
    if programs and count_words(problem[problem.rfind("```") + 3:]) < 3:
        return True
    if final_answer is None:
        return False
    target = squash(final_answer)
    return any(squash(content) == target for _, _, content in find_boxes(problem))


def squash(text: str) -> str:
    """An answer without its spacing and dollar signs, for comparing two writings of it."""
    return re.sub(r"[\s$]+", "", text)


def is_answer(answer: str | None, max_chars: int = MAX_ANSWER_CHARS, max_words: int = MAX_ANSWER_WORDS) -> bool:
    """Whether a final answer is one: present, no blank line or code fence, braces balanced (no
    box left open inside it), at most ``max_chars`` once its whitespace runs count as one space
    (a matrix boxed over several lines is one), at most ``max_words`` prose words."""
    if answer is None or "```" in answer or re.search(r"\n[ \t]*\n", answer) or not _balanced(answer):
        return False
    return 0 < len(re.sub(r"\s+", " ", answer).strip()) <= max_chars and prose_words(answer) <= max_words


def prose_words(answer: str) -> int:
    """Words of two or more letters once LaTeX commands are gone ("\\text{Yes}" is one)."""
    return len(re.findall(r"[^\W\d_]{2,}", re.sub(r"\\[A-Za-z]+", " ", answer)))


def _balanced(text: str) -> bool:
    depth = 0
    for i, char in enumerate(text):
        if char in "{}" and i and text[i - 1] == "\\":
            continue  # \{ and \} are set braces, not grouping
        depth += 1 if char == "{" else -1 if char == "}" else 0
        if depth < 0:
            return False
    return depth == 0
