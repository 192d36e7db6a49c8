"""Whether a program prints the answer its solution boxes: the check that keeps tool-variant
problems honest, shared by distill (teacher outputs) and synth filter (synthesizer outputs).

A program is a solution's ```python blocks, run in order in one namespace as notebook cells
(:mod:`sandbox.notebook`); with ``echo_last_expression`` a block ending in a bare expression
shows its value as a notebook does. Its answer is the last value it printed
(:mod:`sandbox.printed`): the last printed line (with the lines above it that a multi-line
value needs), and failing that the value after its label ("Total: 7"). It is accepted when

* the boxed answer is a decimal number and the printed number rounds to it: within half a unit
  of the boxed value's last decimal place (boxed 3.14 for 3.14159, 9,581.70 for 9581.7012),
* both are plain numbers, equal within the grader's tolerances (decided here: math-verify
  compares numbers at 6 decimal places, so it finds 3.95e-22 equal to 3.95e-23), or
* the grader the caller passes in (the project's is ``eval.grading.Grader``: this package
  imports no stage) finds the boxed answer and the printed value equal: as answer type
  "expression", the value written as LaTeX (prose as printed); and as "text" when the box
  holds words (``\\text{...}``).

Reasons: ``code_missing_module`` (the program imports something the sandbox's interpreter
lacks: ModuleNotFoundError or ImportError; see :data:`sandbox.config.PACKAGES`),
``code_failed`` (any other error, a timeout, a kill), ``code_answer_mismatch`` (it prints
nothing, or a different value), None (accepted).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sandbox.notebook import notebook_program
from sandbox.printed import (
    answer_candidates,
    for_grader,
    last_printed_value,
    printed_number,
)
from sandbox.results import CodeRunner
from sandbox.zygote import TRUNCATION_MARK

__all__ = ["AnswerGrader", "CodeRunner", "ProgramCheck", "check_programs", "numbers_agree"]

# The exception line a traceback ends with when an import fails.
_MISSING_MODULE = re.compile(r"^(?:ModuleNotFoundError|ImportError)\b", re.MULTILINE)
# A boxed plain number and what may stand around it: "$9,581.70", "60.98 \\text{ m}", "x = 2.5",
# "6.674 \\times 10^{-11} \\, \\text{N}", "40.5\\%".
_BOXED_NUMBER = re.compile(
    r"\s*(?:[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|\\approx|≈)\s*|\\approx\s*)?"  # "x = ", "\\approx"
    r"(?P<sign>[-+]?)\s*(?:\\\$|\$)?\s*(?P<int>\d{1,3}(?:,\d{3})+|\d+|(?=\.))(?:\.(?P<frac>\d+))?"
    r"(?:\s*(?:\\times|\\cdot)\s*10\^\{?(?P<exp>[-+]?\d+)\}?)?"
    # units: "\\%", "^\\circ", "\\text{ m}^2", or words after a blank (never "2x": that is no number)
    r"(?:(?:\s|\\[,;:! ]|~)*(?:\\%|%|\^\\circ|\^\{\\circ\}|\\(?:text|mathrm)\{[^{}]*\})"
    r"|(?:\s|\\[,;:! ]|~)+[A-Za-z/]+)*(?:\^\{?\d\}?)?\s*\.?\s*")
# A boxed answer that is words ("\\text{The cipher is perfect.}") is also compared as text.
_TEXT_BOX = re.compile(r"\s*\\(?:text|textbf|mathrm)\{[^{}]*\}\s*\.?\s*")
REL_TOL = 1e-4  # as the project's grader: JiuZhang3.0's tolerance between non-integers
INTEGER_REL_TOL = 1e-9  # an integer on either side must be hit up to float noise (17.999999999999996)


class AnswerGrader(Protocol):
    def grade_many(self, pairs: list[tuple[str, str, str]]) -> list[Any]:
        """(gold, predicted, answer type) per pair -> objects with ``equal`` and ``reason``."""


@dataclass
class ProgramCheck:
    status: str  # the sandbox status
    stdout_tail: str
    stderr_tail: str | None  # only when the program failed
    printed_answer: str | None  # the last printed value (the program's answer as printed)
    grade: str | None  # "rounded", "equal", "numbers_differ", "output_truncated", or the grader's reason
    reason: str | None  # None: the program prints the boxed answer
    compared: str | None = None  # what was found equal to the boxed answer (or first compared)

    def details(self) -> dict[str, Any]:
        found = {"code_status": self.status, "code_stdout": self.stdout_tail}
        if self.stderr_tail is not None:
            found["code_stderr"] = self.stderr_tail
        if self.status == "ok":
            found["printed_answer"] = self.printed_answer
        if self.grade is not None:
            found["answer_grade"] = self.grade
        if self.compared is not None and self.compared != self.printed_answer:
            found["compared_as"] = self.compared
        return found


def check_programs(programs: Sequence[str | Sequence[str]], boxed_answers: Sequence[str], sandbox: CodeRunner,
                   grader: AnswerGrader, *, echo_last_expression: bool | None = None,
                   tail_chars: int = 500) -> list[ProgramCheck]:
    """One sandbox ``run_many`` and at most one ``grade_many`` call for the whole batch.

    A program is its code blocks in order (a plain string is one block). ``echo_last_expression``
    None takes the sandbox's ``config.echo_last_expression`` (True for a runner without one).
    """
    if echo_last_expression is None:
        echo_last_expression = getattr(getattr(sandbox, "config", None), "echo_last_expression", True)
    codes = [notebook_program(program, echo_last_expression) for program in programs]
    checks: list[ProgramCheck] = []
    pairs: list[tuple[str, str, str]] = []
    owners: list[tuple[ProgramCheck, str]] = []  # per pair: whose, and what was compared
    for result, boxed in zip(sandbox.run_many(codes), [answer or "" for answer in boxed_answers]):
        check = _outcome(result, tail_chars)
        checks.append(check)
        if check.printed_answer is not None:
            for shown, answer_type in _compare_here(check, boxed):
                pairs.append((f"\\boxed{{{boxed}}}", shown, answer_type))
                owners.append((check, shown))
    if pairs:
        for (check, shown), grade in zip(owners, grader.grade_many(pairs)):
            if check.grade is None or (grade.equal and check.reason is not None):
                check.grade, check.compared = grade.reason, shown
                if grade.equal:
                    check.reason = None
    return checks


def _outcome(result: Any, tail_chars: int) -> ProgramCheck:
    """The run's verdict before any comparison: why it failed, or what it printed last."""
    failed = result.status != "ok"
    stderr = result.stderr or ""
    check = ProgramCheck(result.status, result.stdout[-tail_chars:], stderr[-tail_chars:] if failed else None,
                         None, None, "code_answer_mismatch")  # (until something printed is found equal)
    if failed:
        check.reason = "code_missing_module" if _MISSING_MODULE.search(stderr) else "code_failed"
    elif result.stdout.endswith(TRUNCATION_MARK):  # the sandbox kept the head of a flood: the last line is lost
        check.grade = "output_truncated"
    else:
        check.printed_answer = last_printed_value(result.stdout)
    return check


_PYTHON_LIST = re.compile(r"\s*\[[^\[\]]*,[^\[\]]*\]\s*")


def _compare_here(check: ProgramCheck, boxed: str) -> list[tuple[str, str]]:
    """Decide plain numbers here (accepting ``check`` when one agrees); the rest, as (what to
    compare, answer type), is for the grader."""
    to_grade = []
    for candidate in answer_candidates(check.printed_answer):
        numbers = numbers_agree(candidate, boxed)
        if numbers in ("rounded", "equal"):
            check.grade, check.compared, check.reason = numbers, candidate, None
            return []
        if numbers == "different":
            check.grade, check.compared = check.grade or "numbers_differ", check.compared or candidate
        elif (shown := for_grader(candidate)) is not None:
            to_grade.append((shown, "expression"))
            if _PYTHON_LIST.fullmatch(candidate):  # a boxed "[0, 1, 0]" is a list too, not the interval a bracket reads as
                to_grade.append((f"\\boxed{{{candidate.strip()}}}", "expression"))
        if _TEXT_BOX.fullmatch(boxed):
            to_grade.append((candidate, "text"))
    return to_grade


def numbers_agree(printed: str, boxed: str) -> str | None:
    """When both are plain numbers: "rounded" (the printed number rounds to the boxed one: within
    half a unit of its last shown decimal place; a box without a decimal point is a count, not
    a rounding), "equal" (within the grader's tolerances), or "different"; None otherwise (the
    grader decides). Numbers are decided here because math-verify compares at 6 decimal places:
    it finds 3.95e-22 equal to 3.95e-23."""
    match = _BOXED_NUMBER.fullmatch(boxed)
    value = printed_number(printed)
    if match is None or value is None:
        return None
    decimals = len(match.group("frac") or "")
    digits = f"{match.group('int').replace(',', '') or '0'}.{match.group('frac') or '0'}"
    try:  # (a box's "10^{99999}" is no float)
        exponent = int(match.group("exp") or 0)
        target = float(digits) * 10.0 ** exponent * (-1 if match.group("sign") == "-" else 1)
        half_unit = 0.5 * 10.0 ** (exponent - decimals)
    except (OverflowError, ValueError):
        return None
    values = [value]
    if "%" in boxed and "%" not in printed:  # a percentage printed as a fraction: 0.405 for 40.5%
        values.append(value * 100)
    if decimals and any(abs(v - target) <= half_unit * (1 + 1e-9) for v in values):
        return "rounded"
    integer = not decimals and exponent >= 0 or any(v == int(v) for v in values)
    tolerance = INTEGER_REL_TOL if integer else REL_TOL
    if any(abs(v - target) <= tolerance * max(abs(v), abs(target)) for v in values):
        return "equal"
    return "different"
