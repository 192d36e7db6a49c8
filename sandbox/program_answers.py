"""Whether a program prints the answer its solution boxes: the check that keeps tool-variant
problems honest, shared by distill (teacher outputs) and synth filter (synthesizer outputs).

The program's last non-blank printed line is its answer; it is graded against the boxed answer
by the grader the caller passes in (the project's is ``eval.grading.Grader``: this package imports
no stage), with answer type "expression" and Python's ``**`` read as ``^``. A program that fails
(error, timeout, killed) is ``code_failed``; one that prints nothing, or a different value, is
``code_answer_mismatch``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sandbox.results import CodeRunner


class AnswerGrader(Protocol):
    def grade_many(self, pairs: list[tuple[str, str, str]]) -> list[Any]:
        """(gold, predicted, answer type) per pair -> objects with ``equal`` and ``reason``."""


@dataclass
class ProgramCheck:
    status: str  # the sandbox status
    stdout_tail: str
    stderr_tail: str | None  # only when the program failed
    printed_answer: str | None
    grade: str | None  # the grader's reason, when it compared
    reason: str | None  # None: the program prints the boxed answer

    def details(self) -> dict[str, Any]:
        found = {"code_status": self.status, "code_stdout": self.stdout_tail}
        if self.stderr_tail is not None:
            found["code_stderr"] = self.stderr_tail
        if self.status == "ok":
            found["printed_answer"] = self.printed_answer
        if self.grade is not None:
            found["answer_grade"] = self.grade
        return found


def check_programs(codes: Sequence[str], boxed_answers: Sequence[str], sandbox: CodeRunner, grader: AnswerGrader,
                   tail_chars: int = 500) -> list[ProgramCheck]:
    """One sandbox ``run_many`` and one ``grade_many`` call for the whole batch."""
    checks: list[ProgramCheck] = []
    to_grade: list[int] = []
    for result in sandbox.run_many(list(codes)):
        failed = result.status != "ok"
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        printed = lines[-1] if lines and not failed else None
        reason = "code_failed" if failed else (None if printed is not None else "code_answer_mismatch")
        checks.append(ProgramCheck(result.status, result.stdout[-tail_chars:],
                                   (result.stderr or "")[-tail_chars:] if failed else None, printed, None, reason))
        if not failed and printed is not None:
            to_grade.append(len(checks) - 1)
    if to_grade:
        pairs = [(f"\\boxed{{{boxed_answers[i]}}}", checks[i].printed_answer.replace("**", "^"), "expression")
                 for i in to_grade]
        for i, grade in zip(to_grade, grader.grade_many(pairs)):
            checks[i].grade = grade.reason
            if not grade.equal:
                checks[i].reason = "code_answer_mismatch"
    return checks
