"""The per-record filters of ``synth filter``: each optional, each with stable reject reasons.

They run on a batch of the synthesizer's records in this order; a record's first failing check
names its reason, and later checks skip it (so the sandbox never runs a program whose problem is
contaminated or malformed):

``format``           ``empty`` / ``no_problem`` / ``no_solution`` (the text does not parse into a
                     problem and a solution; or the problem holds a program or its own answer
                     boxed, so a solution leaked into it: :func:`~data.stage_prompts.parsing.solution_leaked`);
                     ``truncated`` (generation hit ``max_tokens``); ``no_answer`` (no final answer
                     in the form ``format.answer`` asks for, or one that is not an answer: a
                     blank line, a code fence or an open brace in it, over ``max_answer_chars``
                     or ``max_answer_words``: :func:`~data.stage_prompts.parsing.is_answer`); ``no_code``
                     (tool variant without a python block).
``length``           ``problem_too_short`` / ``problem_too_long`` / ``solution_too_short`` /
                     ``solution_too_long``: words outside math plus tokens inside it
                     (:func:`data.text.count_tokens`), so "Evaluate $\\binom{7}{3}$." counts 4.
``judge``            ``judge_missing`` / ``judge_score``: selection by the scores ``mathsynth judge``
                     wrote into the records (``judge.column``, default ``judge.score``): a record
                     without a score (the judge's answer was unreadable, or it was never judged)
                     cannot be ranked; one below ``min_score`` goes. Off by default. Its top-k per
                     source text (``judge_top_k``) needs every shard: it runs with the dedup.
``decontamination``  ``contaminated``: the problem or the solution is a shipped benchmark test
                     question (normalised whole match), copies one verbatim, or shares 13-grams
                     covering 40% of its distinctive words (:class:`data.decontamination.Decontaminator`);
                     with ``embedding.enabled``, also a problem whose embedding has cosine >=
                     ``embedding.threshold`` with a benchmark question (:mod:`synth.embedding_match`).
``code_check``       ``code_failed`` / ``code_missing_module`` / ``code_answer_mismatch``: the tool
                     solution's python blocks run in order in one sandboxed interpreter (a final
                     bare expression echoed, as a notebook does) and must print its final answer
                     (:mod:`sandbox.program_answers`); an import of a package the sandbox lacks is
                     ``code_missing_module``, not a wrong answer.
``consistency``      ``inconsistent``: samples of one text window that pose the same problem
                     (word 5-gram Jaccard >= ``same_problem_jaccard``) must agree on its answer
                     (eval's grader); a sample outside a strict majority of its group is dropped,
                     a group with no strict majority is dropped whole. A problem posed once has
                     nothing to agree with and passes (counted as ``single``). The synthesizer
                     writes a new problem per sample at temperature 1.0, so this mostly bites on
                     the tool variant (temperature 0.1) and with ``n`` > 1.

Cross-shard exact and near-duplicate removal is not here: it needs every shard, and runs once
they are all filtered (``synth.filter_run``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field, model_validator

from data.config_base import StrictConfig
from data.decontamination import Decontaminator
from data.dedup import jaccard, shingle_texts
from data.stage_prompts.parsing import (
    MAX_ANSWER_CHARS,
    MAX_ANSWER_WORDS,
    is_answer,
    normalized_answer,
    solution_leaked,
)
from data.text import code_blocks, count_tokens, find_boxes
from sandbox.config import SandboxConfig
from synth.embedding_match import BenchmarkEmbeddings, EmbeddingCheck

AnswerRule = Literal["boxed", "stated", "optional"]


class FormatFilter(StrictConfig):
    enabled: bool = True
    reject_truncated: bool = Field(True, description="drop completions cut by max_tokens")
    max_answer_chars: int = Field(MAX_ANSWER_CHARS, ge=1, description="a longer 'answer' is a box left open around prose")
    max_answer_words: int = Field(MAX_ANSWER_WORDS, ge=0, description="prose words in the answer: more is a sentence")
    answer: AnswerRule = Field("stated", description=(
        "the final answer a solution must state, read as eval reads it (eval.extraction.locate_answer): "
        "boxed = a \\boxed{}; stated = a box or an answer phrase ('The answer is: $42$'); "
        "optional = none needed (proofs, derivations), the answer is kept when there is one"))


class LengthFilter(StrictConfig):
    """Bounds in words outside math plus tokens inside it (:func:`data.text.count_tokens`).
    The minimums keep every MATH and GSM8K train problem and solution."""

    enabled: bool = True
    problem_words: tuple[int, int] = (3, 1000)
    solution_words: tuple[int, int] = (5, 3000)

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("problem_words", "solution_words"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be [min, max] with 0 <= min <= max")
        return self


class DecontaminationFilter(StrictConfig):
    """The rules and their knobs: :mod:`data.decontamination` (exact match of a normalised whole
    question; a question of ``ngram``+ words copied verbatim; or shared n-grams covering
    ``min_coverage`` of its distinctive words, generic spans and train-set templates not counted)."""

    enabled: bool = True
    benchmarks: list[str] | None = Field(None, description="registry names; default: every shipped test set")
    ngram: int = Field(13, ge=4)
    min_short_words: int = Field(6, ge=1, description="shorter questions are matched whole (normalised), not by n-grams")
    min_coverage: float = Field(0.4, ge=0, le=1, description="share of a question's distinctive words the shared "
                                                            "n-grams must cover; 0 = any shared n-gram")
    common_ngram: int = Field(6, ge=1, description="window size that decides whether a word is distinctive")
    common_df: int = Field(3, ge=1, description="a window in more benchmark/train questions than this is generic")
    reference: list[str] = Field(["math_train", "gsm8k_train"], description="pools whose questions are not evidence "
                                                                            "(n-grams shared with them do not count)")
    fields: tuple[str, ...] = ("problem", "solution")
    embedding: EmbeddingCheck = Field(default_factory=EmbeddingCheck)


class CodeCheckFilter(StrictConfig):
    enabled: bool = True
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)


class JudgeFilter(StrictConfig):
    """Keep records by an LLM judge's score (``mathsynth judge``): at least ``min_score``, and/or
    the ``top_k_per_source`` best of each source text (ties broken by id, so the choice is
    deterministic); read from the records, never asked here."""

    enabled: bool = False
    column: str = Field("judge.score", min_length=1, description="dotted path of the score in each record")
    min_score: float | None = Field(None, description="keep records scoring at least this")
    top_k_per_source: int | None = Field(None, ge=1, description="keep the k best of each source text")
    source_field: str = Field("source_id", min_length=1, description="the field naming a record's source text")

    @model_validator(mode="after")
    def _selects_something(self):
        if self.enabled and self.min_score is None and self.top_k_per_source is None:
            raise ValueError("judge.enabled needs min_score or top_k_per_source")
        return self

    @property
    def root(self) -> str:
        """The record field holding the score (``judge`` of ``judge.score``): kept in the dataset."""
        return self.column.split(".", 1)[0]


def judge_score(record: dict[str, Any], column: str) -> float | None:
    """The number at the dotted ``column`` of ``record``, or None (missing, null, not a number)."""
    value: Any = record
    for key in column.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return value


def judge_reason(record: dict[str, Any], config: JudgeFilter, details: dict[str, Any]) -> str | None:
    score = judge_score(record, config.column)
    details["judge_score"] = score
    if score is None:
        return "judge_missing"
    if config.min_score is not None and score < config.min_score:
        return "judge_score"
    return None


class ConsistencyFilter(StrictConfig):
    enabled: bool = False
    same_problem_jaccard: float = Field(0.8, gt=0, le=1)


@dataclass
class Outcome:
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


# The fields the filters read as text. synth generate writes a string or null in each; another
# value (a hand-made or foreign file) would otherwise fail deep inside a filter.
TEXT_FIELDS = ("problem", "solution", "final_answer", "code", "variant", "parse_error", "text")


def wrong_field_type(record: dict[str, Any]) -> str | None:
    """What is wrong with the first text field holding something else than a string or null."""
    for name in TEXT_FIELDS:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            return f"field {name!r} must be a string or null, got {type(value).__name__}"
    return None


def stated_answer(solution: str, rule: AnswerRule) -> str | None:
    """The solution's final answer as eval's extractor reads it (one notion of "the final answer"
    for the filter and the grader): its box, or under ``stated``/``optional`` an answer phrase."""
    from eval.extraction import boxed_answer, locate_answer

    if rule == "boxed":
        return normalized_answer(boxed_answer(solution)) if find_boxes(solution) else None
    located = locate_answer(solution)
    return normalized_answer(located.answer) if located.how in ("boxed", "anchor") else None


def format_reason(record: dict[str, Any], config: FormatFilter) -> str | None:
    if record.get("parse_error"):
        return record["parse_error"]
    if record.get("problem") is None or record.get("solution") is None:
        return "no_solution"
    if solution_leaked(record["problem"], record.get("final_answer")):
        return "no_problem"
    if config.reject_truncated and record.get("finish_reason") == "length":
        return "truncated"
    answer = record.get("final_answer")
    if not (is_answer(answer, config.max_answer_chars, config.max_answer_words) or (answer is None and config.answer == "optional")):
        return "no_answer"
    if record.get("variant") == "tool" and not code_blocks(record["solution"]):
        return "no_code"
    return None


def length_reason(record: dict[str, Any], config: LengthFilter, details: dict[str, Any]) -> str | None:
    for name, bounds in (("problem", config.problem_words), ("solution", config.solution_words)):
        words = count_tokens(record.get(name) or "")
        details[f"{name}_words"] = words
        if words < bounds[0]:
            return f"{name}_too_short"
        if words > bounds[1]:
            return f"{name}_too_long"
    return None


class RecordFilters:
    """The configured per-record filters, with what they need (a decontamination index, a sandbox,
    a grader) built once and closed by :meth:`close`."""

    def __init__(self, format: FormatFilter, length: LengthFilter, decontamination: DecontaminationFilter,
                 code_check: CodeCheckFilter, consistency: ConsistencyFilter, *, cache_dir: Path | None = None,
                 judge: JudgeFilter | None = None) -> None:
        """``cache_dir``: where the benchmark embeddings are kept (only with ``embedding.enabled``)."""
        self.format, self.length, self.decontamination = format, length, decontamination
        self.judge = judge if judge is not None and judge.enabled else None
        self.code_check, self.consistency = code_check, consistency
        self.decontaminator = (Decontaminator.from_benchmarks(
            decontamination.benchmarks, decontamination.ngram, decontamination.min_short_words,
            min_coverage=decontamination.min_coverage, common_ngram=decontamination.common_ngram,
            common_df=decontamination.common_df, reference=decontamination.reference)
            if decontamination.enabled else None)
        self.embeddings = None
        if decontamination.enabled and decontamination.embedding.enabled:
            self.embeddings = BenchmarkEmbeddings(decontamination.embedding, decontamination.benchmarks,
                                                  cache_dir or Path(".cache"))
        self._sandbox = None
        self._grader = None

    @property
    def sandbox(self):
        if self._sandbox is None:
            from sandbox import Sandbox

            self._sandbox = Sandbox(self.code_check.sandbox)
        return self._sandbox

    @property
    def grader(self):
        if self._grader is None:
            from eval.grading import Grader

            self._grader = Grader(workers=1)
        return self._grader

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
        if self._grader is not None:
            self._grader.close()
        self._sandbox = self._grader = None

    def check(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        """One outcome per record, in order. ``records`` must hold every sample of a window
        together (the consistency check compares them)."""
        outcomes = [Outcome() for _ in records]
        for record, outcome in zip(records, outcomes):
            if isinstance(record.get("solution"), str):
                record["final_answer"] = stated_answer(record["solution"], self.format.answer)
            if self.format.enabled:
                outcome.reason = format_reason(record, self.format)
            elif record.get("problem") is None:
                outcome.reason = record.get("parse_error") or "no_solution"  # nothing to filter further
            if outcome.reason is None and self.length.enabled:
                outcome.reason = length_reason(record, self.length, outcome.details)
            if outcome.reason is None and self.judge is not None:
                outcome.reason = judge_reason(record, self.judge, outcome.details)
        if self.decontaminator is not None:
            self._decontaminate(records, outcomes)
        if self.code_check.enabled:
            self._run_programs(records, outcomes)
        if self.consistency.enabled:
            self._check_consistency(records, outcomes)
        return outcomes

    def _decontaminate(self, records: Sequence[dict[str, Any]], outcomes: list[Outcome]) -> None:
        live = [i for i, o in enumerate(outcomes) if o.reason is None]
        for name in self.decontamination.fields:
            found = self.decontaminator.check_many([records[i].get(name) or "" for i in live])
            for i, hit in zip(live, found):
                if hit.contaminated and outcomes[i].reason is None:
                    outcomes[i].reason = "contaminated"
                    outcomes[i].details["contamination"] = {"field": name, "benchmark": hit.benchmark,
                                                            "record_id": hit.record_id, "ngram": hit.ngram,
                                                            "rule": hit.rule, "coverage": hit.coverage}
        if self.embeddings is not None:
            live = [i for i in live if outcomes[i].reason is None]
            threshold = self.decontamination.embedding.threshold
            for i, match in zip(live, self.embeddings.nearest([records[i]["problem"] for i in live])):
                outcomes[i].details["benchmark_cosine"] = round(match.cosine, 4)
                if match.cosine >= threshold:
                    outcomes[i].reason = "contaminated"
                    outcomes[i].details["contamination"] = {"field": "problem", "benchmark": match.benchmark,
                                                            "record_id": match.record_id, "cosine": round(match.cosine, 4)}

    def _run_programs(self, records: Sequence[dict[str, Any]], outcomes: list[Outcome]) -> None:
        from sandbox.program_answers import check_programs

        programs = {i: code_blocks(records[i]["solution"]) for i, o in enumerate(outcomes)
                    if o.reason is None and records[i].get("variant") == "tool" and records[i].get("final_answer")}
        todo = [i for i, blocks in programs.items() if blocks]
        if not todo:
            return
        checks = check_programs([programs[i] for i in todo], [records[i]["final_answer"] for i in todo],
                                self.sandbox, self.grader)
        for i, check in zip(todo, checks):
            outcomes[i].details.update(check.details())
            outcomes[i].reason = check.reason

    def _check_consistency(self, records: Sequence[dict[str, Any]], outcomes: list[Outcome]) -> None:
        by_window: dict[str, list[int]] = {}
        for i, outcome in enumerate(outcomes):
            if outcome.reason is None:
                by_window.setdefault(records[i].get("item_key") or records[i]["id"], []).append(i)
        groups = [group for members in by_window.values() for group in self._same_problem(records, members)]
        pairs, owners = [], []
        for group in groups:
            for a in range(len(group)):
                for b in range(a + 1, len(group)):
                    pairs.append((f"\\boxed{{{records[group[a]]['final_answer']}}}",
                                  f"\\boxed{{{records[group[b]]['final_answer']}}}", "expression"))
                    owners.append((group[a], group[b]))
        equal = {owner: bool(v.equal) for owner, v in zip(owners, self.grader.grade_many(pairs))} if pairs else {}
        for group in groups:
            if len(group) == 1:
                outcomes[group[0]].details["consistency"] = "single"
                continue
            agree = {i: 1 + sum(equal.get((min(i, j), max(i, j)), False) for j in group if j != i) for i in group}
            best = max(agree.values())
            majority = 2 * best > len(group)
            for i in group:
                outcomes[i].details["consistency"] = {"group": len(group), "agree": agree[i]}
                if not (majority and agree[i] == best):
                    outcomes[i].reason = "inconsistent"

    def _same_problem(self, records: Sequence[dict[str, Any]], members: list[int]) -> list[list[int]]:
        """Samples of one window grouped by problem text (greedy, in sample order)."""
        if len(members) == 1:
            return [members]
        shingles = shingle_texts([records[i]["problem"] for i in members])
        groups: list[list[int]] = []
        heads: list[int] = []  # position in ``members`` of each group's first sample
        for position, i in enumerate(members):
            for group, head in zip(groups, heads):
                if jaccard(shingles[position], shingles[head]) >= self.consistency.same_problem_jaccard:
                    group.append(i)
                    break
            else:
                groups.append([i])
                heads.append(position)
        return groups
