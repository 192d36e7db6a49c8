"""Which teacher outputs to keep. Every rejection has one stable reason string.

Checks run in this order; the first that fails names the reason:

``empty``                 the completion is blank.
``no_problem``            nothing before the "## Solution" header, or a solution leaked into
                          the problem (:func:`~data.stage_prompts.parsing.solution_leaked`).
``no_solution``           no "## Solution" header, or nothing after it.
``no_boxed_answer``       the solution has no complete ``\\boxed{...}``, or the last one is not an
                          answer: over 200 characters, a blank line or a code fence in it.
``problem_too_short``     the problem has fewer than ``min_problem_words`` words outside math
                          plus tokens inside it (:func:`data.text.count_tokens`).
``copies_source``         at least ``copy_max_fraction`` of the problem's word ``copy_ngram``-grams
                          (lowercased alphanumeric tokens) occur in the source window.
``cheating``              the solution states the answer without working. Any of:
                          (a) fewer than ``min_solution_words`` words before the last box;
                          (b) it is the answer restated: outside its boxes, fewer than
                          ``max(3, min_solution_words // 3)`` distinct words that are neither filler
                          ("the answer is", "therefore", ...) nor part of the answer;
                          (c) the problem already gives the answer as the thing asked for: a
                          "show/prove/verify/check that ... is|=|equals <answer>" sentence, or
                          "the answer is <answer>", with the answer verbatim;
                          (d) tool variant: the program is just ``print(<the boxed answer>)``.
``no_code``               tool variant without a ```python block.
``near_duplicate``        word 5-gram shingle Jaccard (:func:`data.dedup.words`: alphanumeric runs and
                          math operators) >= ``near_duplicate_jaccard`` with a problem
                          already accepted (earlier in the batch, an earlier batch, or
                          :meth:`Validator.remember`-ed from an earlier run). Checked against the
                          earlier ones before running code, so duplicates cost no sandbox time.
``code_failed``           the sandbox status of the program is not "ok".
``code_answer_mismatch``  the program's last printed line is not equal to the boxed answer
                          (:class:`eval.grading.Grader`, answer type "expression"; Python's ``**``
                          is read as ``^``); printing nothing is a mismatch.

Code runs only when ``check_code`` is on and a sandbox is given, one ``run_many`` call per batch;
otherwise tool outputs skip that check and ``details["code_checked"]`` is False.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from data.config_base import StrictConfig
from data.dedup import NearDuplicateIndex, ngrams
from data.stage_prompts.parsing import (
    ParsedOutput,
    is_answer,
    parse_completion,
    solution_leaked,
    squash,
)
from data.text import count_tokens, count_words, find_boxes
from eval.grading import Grader
from sandbox.program_answers import CodeRunner, check_programs


class ValidationConfig(StrictConfig):
    min_problem_words: int = Field(3, ge=0, description="words + math tokens: 'Evaluate $\\binom{7}{3}$.' is 4")
    min_solution_words: int = Field(15, ge=0, description="words of working before the final box")
    copy_ngram: int = Field(8, ge=1)
    copy_max_fraction: float = Field(0.5, gt=0, le=1, description="reject at or above this copied n-gram fraction")
    near_duplicate_jaccard: float = Field(0.8, gt=0, le=1, description="on word 5-gram shingles")
    check_code: bool = True


@dataclass
class CandidateOutput:
    key: str
    completion: str
    source_text: str
    variant: str  # "cot" or "tool"


@dataclass
class Verdict:
    accepted: bool
    reason: str | None
    parsed: ParsedOutput | None
    details: dict[str, Any] = field(default_factory=dict)


# --- words -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")


def tokens(text: str) -> list[str]:
    """Lowercased alphanumeric runs: the unit of n-grams, blind to punctuation and LaTeX markup."""
    return _TOKEN.findall(text.lower())


def copied_fraction(problem: str, source: str, n: int) -> float:
    """The share of the problem's word n-grams that also occur in the source."""
    grams = ngrams(tokens(problem), n)
    if not grams:
        return 0.0
    return len(grams & ngrams(tokens(source), n)) / len(grams)


# --- cheating ----------------------------------------------------------------------------------

# Words that restate an answer without working: "so the final answer is therefore ..."
_FILLER = frozenset({
    "the", "a", "an", "answer", "final", "result", "is", "are", "was", "so", "thus", "therefore", "hence",
    "we", "get", "got", "have", "find", "found", "our", "this", "that", "it", "of", "to", "and", "which",
    "equals", "equal", "gives", "value", "solution",
})
_GIVES_AWAY = re.compile(r"\b(show|prove|verify|confirm|check|demonstrate)\b[^.?!]*?\bthat\b|\bthe answer is\b", re.IGNORECASE)


def cheating_rule(parsed: ParsedOutput, min_solution_words: int) -> str | None:
    """Which rule (see the module docstring) calls the solution cheating, or None."""
    solution, answer = parsed.solution, parsed.final_answer or ""
    boxes = find_boxes(solution)
    if boxes and count_words(solution[: boxes[-1][0]]) < min_solution_words:
        return "too_little_working"
    outside, pos = [], 0
    for start, end, _ in boxes:
        outside.append(solution[pos:start])
        pos = end
    outside.append(solution[pos:])
    answer_words = set(tokens(answer))
    distinct = {w for w in tokens(" ".join(outside)) if w not in _FILLER and w not in answer_words}
    if len(distinct) < max(3, min_solution_words // 3):
        return "restates_answer"
    if _problem_gives_answer(parsed.problem, answer):
        return "answer_in_problem"
    if parsed.code is not None and _just_prints(parsed.code, answer):
        return "prints_constant"
    return None


def _problem_gives_answer(problem: str, answer: str) -> bool:
    target = squash(answer)
    if not target:
        return False
    # The answer verbatim (spacing and $ aside) right after "is", "=", "equals", ..., and not
    # followed by more of a number or word ("is 12" is not "is 125").
    answer_re = r"[\s$]*".join(re.escape(c) for c in target)
    stated = re.compile(r"(?:=|\b(?:is|equals?|equal\s+to|be)\b)[\s$]*" + answer_re + r"(?!\w|\.\d)", re.IGNORECASE)
    for sentence in re.split(r"(?<=[.?!])\s+|\n+", problem):
        gives = _GIVES_AWAY.search(sentence)
        if gives and stated.search(sentence, gives.start()):
            return True
    return False


def _just_prints(code: str, answer: str) -> bool:
    lines = [line.strip() for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) != 1:
        return False
    match = re.fullmatch(r"print\(\s*(['\"]?)(.*?)\1\s*\)", lines[0])
    return bool(match) and squash(match.group(2)) == squash(answer)


# --- near duplicates -------------------------------------------------------------------------


# NearDuplicateIndex (exact shingle Jaccard, MinHash + LSH candidates) lives in data.dedup, shared
# with synth's cross-shard dedup; imported above.


# --- the validator ---------------------------------------------------------------------------


class Validator:
    """Validates batches of teacher outputs and remembers the accepted problems across batches.

    ``sandbox`` runs tool-variant programs (None: not checked); ``grader`` compares printed and
    boxed answers (None: one is started on first need and closed by :meth:`close`).
    """

    def __init__(self, config: ValidationConfig | None = None, sandbox: CodeRunner | None = None,
                 grader: Grader | None = None) -> None:
        self.config = config or ValidationConfig()
        self.sandbox = sandbox
        self._grader, self._own_grader = grader, grader is None
        self.index = NearDuplicateIndex(threshold=self.config.near_duplicate_jaccard)

    def remember(self, problem: str) -> None:
        """Seed the near-duplicate index with a problem accepted by an earlier run (resume)."""
        self.index.add(problem)

    def check_many(self, items: list[CandidateOutput]) -> list[Verdict]:
        verdicts = [self._check_text(item) for item in items]
        self._check_code(items, verdicts)
        for verdict in verdicts:  # in order: the first of two duplicates in a batch wins
            if verdict.reason is None and not self._is_duplicate(verdict):
                verdict.accepted = True
                self.index.add(verdict.parsed.problem)
        return verdicts

    def close(self) -> None:
        if self._own_grader and self._grader is not None:
            self._grader.close()
            self._grader = None

    def __enter__(self) -> Validator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- steps

    def _check_text(self, item: CandidateOutput) -> Verdict:
        """Every check that needs no code execution; a surviving verdict has reason None."""
        config = self.config
        parsed, failure = parse_completion(item.completion)
        if parsed is None:
            return Verdict(False, failure, None, {})
        details: dict[str, Any] = {"problem_words": count_tokens(parsed.problem)}
        verdict = Verdict(False, None, parsed, details)
        if solution_leaked(parsed.problem, parsed.final_answer):
            verdict.reason = "no_problem"  # a solution leaked into it: the format is broken
            return verdict
        answer = parsed.final_answer
        if not is_answer(answer):
            verdict.reason = "no_boxed_answer"
            return verdict
        if details["problem_words"] < config.min_problem_words:
            verdict.reason = "problem_too_short"
            return verdict
        details["copy_fraction"] = round(copied_fraction(parsed.problem, item.source_text or "", config.copy_ngram), 4)
        if details["copy_fraction"] >= config.copy_max_fraction:
            verdict.reason = "copies_source"
        elif (rule := cheating_rule(parsed, config.min_solution_words)) is not None:
            details["cheating_rule"] = rule
            verdict.reason = "cheating"
        elif item.variant == "tool" and parsed.code is None:
            verdict.reason = "no_code"
        else:
            self._is_duplicate(verdict)  # against the problems accepted before this batch
        return verdict

    def _is_duplicate(self, verdict: Verdict) -> bool:
        jaccard, _ = self.index.nearest(verdict.parsed.problem)
        verdict.details["nearest_jaccard"] = round(jaccard, 4)
        if jaccard >= self.config.near_duplicate_jaccard:
            verdict.reason = "near_duplicate"
            return True
        return False

    def _check_code(self, items: list[CandidateOutput], verdicts: list[Verdict]) -> None:
        todo = [i for i, (item, verdict) in enumerate(zip(items, verdicts))
                if verdict.reason is None and item.variant == "tool" and verdict.parsed.code is not None]
        run = self.config.check_code and self.sandbox is not None
        for i in todo:
            verdicts[i].details["code_checked"] = run
        if not run or not todo:
            return
        if self._grader is None:
            self._grader = Grader(workers=1)
        # All the solution's code blocks, run as notebook cells: a later block uses an earlier one's names.
        checks = check_programs([verdicts[i].parsed.code_blocks for i in todo],
                                [verdicts[i].parsed.final_answer for i in todo], self.sandbox, self._grader)
        for i, check in zip(todo, checks):
            verdicts[i].details.update(check.details())
            if check.reason is not None:
                verdicts[i].reason = check.reason
