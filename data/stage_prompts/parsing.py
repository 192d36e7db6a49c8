"""Reading a teacher's completion: the problem, the solution, its boxed answer and its program.

The teacher is asked for (see ``prompts/variants.yaml``)::

    ## Problem
    <the problem>

    ## Solution
    <the solution, ending with \\boxed{...}>

The prompt itself ends with the "## Problem" line, so a completion usually starts with the
problem text; a chat teacher may repeat the header, or put a line of chatter before it. A
teacher that keeps going and starts a second "## Problem" is cut there: only the first pair
counts. Headers are matched at the start of a line, in any case, with any number of ``#`` and
an optional colon ("##Solution", "### solution:").

:func:`parse_completion` never raises: garbage gives ``(None, reason)`` with reason one of
``"empty"``, ``"no_problem"``, ``"no_solution"``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from data.text import find_boxes, last_boxed, last_code_block

ParseFailure = Literal["empty", "no_problem", "no_solution"]

MAX_ANSWER_CHARS = 200  # a longer "answer" is a box left open around prose or garbage

# A header line; for "Solution" the text after the colon on the same line belongs to the solution.
_PROBLEM_HEADER = re.compile(r"^[ \t]*#+[ \t]*problem[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE)
_SOLUTION_HEADER = re.compile(r"^[ \t]*#+[ \t]*solution\b[ \t]*:?[ \t]*", re.IGNORECASE | re.MULTILINE)


@dataclass
class ParsedOutput:
    problem: str
    solution: str
    final_answer: str | None  # the last \boxed{} of the solution
    code: str | None  # the last ```python block of the solution (tool variant)


def parse_completion(text: str | None) -> tuple[ParsedOutput | None, ParseFailure | None]:
    """``(parsed, None)`` on success, ``(None, reason)`` when there is no problem/solution pair."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty"
    solution_header = _SOLUTION_HEADER.search(text)
    if solution_header is None:
        return None, "no_solution"
    head = text[: solution_header.start()]
    # The problem follows the last "## Problem" before the solution (a repeated header, or
    # chatter before it); without one it is everything before the solution.
    problem_headers = list(_PROBLEM_HEADER.finditer(head))
    problem = (head[problem_headers[-1].end():] if problem_headers else head).strip()
    if not problem:
        return None, "no_problem"
    solution = text[solution_header.end():]
    second_problem = _PROBLEM_HEADER.search(solution)
    if second_problem is not None:
        solution = solution[: second_problem.start()]
    solution = solution.strip()
    if not solution:
        return None, "no_solution"
    return ParsedOutput(problem, solution, last_boxed(solution), last_code_block(solution)), None


def solution_leaked(problem: str) -> bool:
    """A code block or a box in the problem: part of the solution ended up in it."""
    return "```" in problem or bool(find_boxes(problem))


def is_answer(answer: str | None, max_chars: int = MAX_ANSWER_CHARS) -> bool:
    """Whether a boxed answer is one: present, one line, no code fence, at most ``max_chars``."""
    return answer is not None and "\n" not in answer and "```" not in answer and len(answer) <= max_chars
