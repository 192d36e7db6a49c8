"""``mathsynth rft``: rejection-sampling fine-tuning data and preference pairs.

For each problem (a shipped benchmark or train set by name, a benchmark YAML, or JSONL rows with
a problem and, optionally, an answer), sample solutions with any engine in the prompt formats of
``eval`` (NL, tool or program-of-thought; tool code runs in the sandbox), grade them with eval's
grader, and keep the correct, diverse ones (:mod:`eval.rft_select`).

Budgets are difficulty-aware (DART-Math): a problem is sampled in rounds of ``k`` until it has
``wanted_correct`` correct solutions or ``max_samples`` samples, so easy problems stop after one
round and hard ones get more. A problem without a reference answer is labelled by majority
vote (at least ``min_votes`` agreeing, no tie), else skipped and counted.

Output folder (stage contract; problems are owned by position across shards):
- ``part-*.jsonl``: the kept solutions as SFT rows pretrain reads: ``prompt``/``completion``
  (a raw prompt) or ``messages`` (a chat prompt, the solution as the last assistant turn).
- ``pairs-*.jsonl``: {id, problem_id, prompt, chosen, rejected, rejected_reason, ...}: a kept
  correct and a distinct incorrect solution of the same problem; ``rejected_reason`` is the
  grader's verdict (mismatch, no_answer, timeout, error). TRL's preference format: a raw prompt
  with chosen and rejected texts, or (chat prompts) a list of messages with chosen and rejected
  as one assistant message each.
- ``problems-*.jsonl``: one row per finished problem: samples drawn, rounds, correct, pass rate,
  kept, dropped by reason (duplicate, similar, over_limit, truncated), pairs, tokens, status
  (enough_correct, capped, no_majority).
- ``samples-*.jsonl``: every sample as drawn, graded (``correct`` is null for a problem labelled
  by majority: its label is known only at the end, see its problems row).

Resume: samples are appended as they arrive, so a killed run asks only for rounds it has not
finished; a problem is finished once its problems row exists (written after its part and pair
rows, all of which are idempotent by id), and a finished problem asks the engine nothing.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from data.config_base import StrictConfig, operational
from data.errors import ConfigError, InputError, UserError
from data.records import AnswerType, BenchmarkRecord, content_id
from data.shards import Shard
from eval.judge import Pricing
from eval.rft_select import majority_label, preference_pairs, select_diverse
from eval.run import Grading, PromptMaker, extract, pot_answer
from llm.config import EngineConfig
from llm.generation_run import derive_seed
from llm.types import GenerationRequest, SamplingParams
from runner.ownership import ByPosition
from runner.run import run_stage
from runner.stage import ShardWork, Stage
from sandbox.config import SandboxConfig

log = logging.getLogger(__name__)


class RftInput(StrictConfig):
    benchmarks: list[str] = Field(default_factory=list,
                                  description="shipped benchmarks or train sets by name (gsm8k_train, math_train, gsm8k)")
    custom_benchmarks: list[str] = Field(default_factory=list, description="benchmark YAML files (data/benchmarks)")
    paths: list[str] = Field(default_factory=list, description="JSONL/parquet files, folders or globs of problems")
    problem_field: str = Field("problem", min_length=1)
    answer_field: str = Field("answer", min_length=1,
                              description="the reference answer; a row without one is labelled by majority vote")
    answer_type: AnswerType = Field("number", description="how answers of paths rows are compared")
    id_field: str = Field("id", description="a row without it gets a hash of its problem")
    limit: int | None = Field(None, ge=1, description="first N problems of each benchmark")
    policy: Literal["fail", "skip"] = operational("fail", description="a bad row: stop with file:line, or skip it")

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _comma_list(cls, value):
        return [b.strip() for b in value.split(",") if b.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _some_input(self) -> "RftInput":
        if not (self.benchmarks or self.custom_benchmarks or self.paths):
            raise ValueError("give benchmarks, custom_benchmarks or paths")
        return self


class RftSampling(SamplingParams):
    """Diverse by default (rejection sampling needs different solutions); each round has its own
    seed derived from ``seed`` (null counts as 0), so a rerun draws the same samples."""

    temperature: float = Field(0.7, ge=0.0)
    max_tokens: int = Field(1024, ge=1)
    n: int = Field(1, ge=1, le=1, description="samples per round are set by k")
    seed: int | None = 0
    stop: tuple[str, ...] = ("## Question",)


class RftConfig(StrictConfig):
    input: RftInput
    engine: EngineConfig
    setting: Literal["nl", "tool", "pot", "mixed"] = Field("nl", description="mixed: each round part CoT (nl), "
                                                                               "part programs (pot)")
    pot_share: float = Field(0.5, ge=0.0, le=1.0, description="mixed: the share of each round written as programs")
    prompt: Literal["auto", "zero_shot", "few_shot", "chat"] = "auto"
    shots: int = Field(5, ge=0, le=16)
    few_shot_pool: str | None = Field(None, description="exemplar pool (default: gsm8k_train for numbers, "
                                                        "math_train otherwise); a problem is never its own exemplar")
    k: int = Field(8, ge=1, le=256, description="samples per round")
    wanted_correct: int = Field(4, ge=1, description="stop sampling a problem once it has this many correct")
    max_samples: int = Field(64, ge=1, description="the most samples per problem (hard problems reach it)")
    max_per_problem: int = Field(4, ge=1, description="kept solutions per problem (m)")
    similarity: float = Field(0.9, gt=0.0, le=1.0, description="near-duplicate threshold (difflib ratio); "
                                                               "1 keeps every textually distinct solution")
    min_votes: int = Field(3, ge=1, description="majority pseudo-label: at least this many agreeing answers")
    max_pairs_per_problem: int = Field(4, ge=0)
    keep_truncated: bool = Field(False, description="keep correct solutions cut by max_tokens (a right final "
                                                    "number in an unfinished text is rarely a solution)")
    sampling: RftSampling = Field(default_factory=RftSampling)
    max_rounds: int = Field(4, ge=1, description="code executions per solution in the tool setting")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    grading_timeout_s: float = Field(5.0, gt=0)
    problems_per_batch: int = operational(256, ge=1, description="problems sampled together (memory vs batch size)")
    pricing: Pricing = Field(default_factory=Pricing)
    output: str = Field(..., min_length=1)

    @model_validator(mode="after")
    def _budget(self) -> "RftConfig":
        if self.max_samples < self.k:
            raise ValueError(f"max_samples: {self.max_samples} is less than one round (k = {self.k})")
        return self


# ---------------------------------------------------------------- problems


def benchmark_spec(name: str):
    from data.benchmarks.registry import BENCHMARKS, EXEMPLAR_POOLS

    if name in BENCHMARKS:
        return BENCHMARKS[name]
    if name in EXEMPLAR_POOLS:
        return EXEMPLAR_POOLS[name].spec  # the train sets
    known = sorted(set(BENCHMARKS) | set(EXEMPLAR_POOLS))
    raise ConfigError(f"input.benchmarks: unknown benchmark {name!r}; known: {', '.join(known)}")


def row_problem(location, row: dict[str, Any], config: RftInput) -> BenchmarkRecord:
    question = row.get(config.problem_field)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"no {config.problem_field!r} (a non-empty string)")
    answer = row.get(config.answer_field)
    gold = "" if answer is None else str(answer).strip()
    given = row.get(config.id_field)
    ident = str(given) if isinstance(given, (str, int)) and not isinstance(given, bool) and given != "" \
        else content_id(question)
    source = getattr(location, "path", None) or "input"
    return BenchmarkRecord(id=ident, benchmark=str(source).rsplit("/", 1)[-1], question=question, gold=gold,
                           answer_type=config.answer_type)


def all_problems(config: RftInput, stats) -> Iterator[BenchmarkRecord]:
    """Every problem of the input in one order (benchmarks, YAML benchmarks, then rows)."""
    from data.benchmarks.registry import load_benchmark, load_benchmark_config
    from data.corpus import iter_rows

    for name in config.benchmarks:
        yield from load_benchmark(benchmark_spec(name), limit=config.limit)
    for path in config.custom_benchmarks:
        yield from load_benchmark(load_benchmark_config(path), limit=config.limit)
    if config.paths:
        for location, row in iter_rows(config.paths, policy=config.policy, stats=stats):
            try:
                yield row_problem(location, row, config)
            except ValueError as err:
                if config.policy == "fail":
                    raise InputError(f"{location}: {err}") from None
                stats.record_skip("missing_field", f"{location}: {err}")


class RftPrompts(PromptMaker):
    """eval's prompts; few-shot exemplars come from a pool that never shows a problem itself.
    Setting mixed has two: ``natural`` (nl) and ``program`` (pot)."""

    def natural(self, record: BenchmarkRecord):
        return self._as("nl")(record)

    def program(self, record: BenchmarkRecord):
        return self._as("pot")(record)

    def _as(self, setting: str) -> "RftPrompts":
        cache = self.__dict__.setdefault("_by_setting", {})
        if setting not in cache:
            cache[setting] = RftPrompts(self.config.model_copy(update={"setting": setting}), tokenizer=self.tokenizer)
        return cache[setting]

    def __call__(self, record: BenchmarkRecord):
        if self.style(record) != "few_shot":
            return super().__call__(record)
        from data.benchmarks.registry import load_exemplar_pool
        from eval.prompts import build_prompt

        pool = self.config.few_shot_pool or ("gsm8k_train" if record.answer_type == "number" else "math_train")
        if pool not in self._exemplars:
            _, records = load_exemplar_pool(pool)
            order = list(range(len(records)))
            random.Random(f"{pool}/0").shuffle(order)
            self._exemplars[pool] = [records[i] for i in order[: self.config.shots + 1]]
        same = " ".join(record.question.lower().split())
        exemplars = [e for e in self._exemplars[pool] if " ".join(e.question.lower().split()) != same]
        return build_prompt(record, "few_shot", tool=self.config.setting != "nl",
                            exemplars=exemplars[: self.config.shots], tokenizer=self.tokenizer)


@dataclass
class Problem:
    record: BenchmarkRecord
    key: str  # request keys derive from it
    prompt: str | list[dict[str, str]]
    program_prompt: str | list[dict[str, str]] | None = None  # setting mixed: the PoT prompt
    samples: dict[int, dict[str, Any]] = field(default_factory=dict)  # sample index -> sample row
    rounds: int = 0  # complete rounds held

    @property
    def has_reference(self) -> bool:
        return self.record.gold != ""

    def correct_so_far(self, config: RftConfig) -> int:
        if self.has_reference:
            return sum(1 for s in self.samples.values() if s["correct"])
        label, votes = majority_label([s["extracted"] for s in self.samples.values()], config.min_votes)
        return votes if label is not None else 0

    def finished(self, config: RftConfig) -> bool:
        return len(self.samples) >= config.max_samples or self.correct_so_far(config) >= config.wanted_correct


# ---------------------------------------------------------------- the stage


class RftStage(Stage):
    """Problems owned by position; sampled in waves of rounds; finished problems written whole."""

    name = "rft"
    ownership = ByPosition()

    def inputs(self) -> list[str]:
        config = self.config.input
        return [*config.benchmarks, *config.custom_benchmarks, *config.paths]

    def check(self) -> None:
        from data.benchmarks.registry import load_benchmark_config
        from data.corpus import resolve_sources

        config = self.config.input
        for name in config.benchmarks:
            benchmark_spec(name)
        for path in config.custom_benchmarks:
            load_benchmark_config(path)
        if config.paths:
            try:
                resolve_sources(config.paths)
            except InputError as err:
                raise InputError(f"input.paths: {err}") from None
        if self.config.few_shot_pool is not None:
            from data.benchmarks.registry import EXEMPLAR_POOLS

            if self.config.few_shot_pool not in EXEMPLAR_POOLS:
                raise ConfigError(f"few_shot_pool: unknown pool {self.config.few_shot_pool!r}; "
                                  f"known: {', '.join(sorted(EXEMPLAR_POOLS))}")

    def engine_config(self):
        return self.config.engine

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        from data.corpus import CorpusStats

        config = self.config
        problems_out, samples_out = work.side("problems"), work.side("samples")
        earlier = earlier_samples(samples_out.path, done=problems_out.ids)
        work.corpus_stats = stats = CorpusStats()
        counts = Counter()
        prompts: RftPrompts | None = None

        def mine() -> Iterator[BenchmarkRecord]:
            seen: set[str] = set()
            for position, record in enumerate(all_problems(config.input, stats)):
                if not work.shard.owns(position):
                    continue
                if record.id in seen:
                    counts["duplicate_problem_ids"] += 1
                    continue
                seen.add(record.id)
                counts["problems_in_shard"] += 1
                if record.id in problems_out:
                    counts["problems_resumed_done"] += 1
                    continue
                yield record

        sampler: Sampler | None = None
        try:
            with work.progress("problem") as advance:
                todo = mine()
                while batch := list(islice(todo, config.problems_per_batch)):
                    if sampler is None:  # the engine starts only when there is work
                        prompts = RftPrompts(config, tokenizer=getattr(work.engine, "tokenizer", None))
                        sampler = Sampler(config, work.engine)
                    started, drawn = time.monotonic(), len(samples_out)
                    problems = [self.problem(record, prompts, earlier) for record in batch]
                    for problem in sampler.sample(problems, samples_out):
                        self.write_problem(problem, work, sampler.grading, counts)
                        advance(1)
                    seconds = max(time.monotonic() - started, 1e-9)
                    log.info("shard %s: %d problems done, %d samples in %.1f s (%.1f samples/s)", work.shard,
                             len(batch), len(samples_out) - drawn, seconds, (len(samples_out) - drawn) / seconds)
        finally:
            if sampler is not None:
                sampler.close()
        stats.yielded = counts["problems_in_shard"]
        for writer in (work.writer, work.side("pairs"), problems_out, samples_out):
            writer.flush()
        totals = shard_totals(problems_out.path)
        tokens = {k: samples_out.usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens")}
        log.info("shard %s: %d problems (%d already done), %d samples, %d correct, %d kept, %d pairs",
                 work.shard, counts["problems_in_shard"], counts["problems_resumed_done"], totals["samples"],
                 totals["correct"], totals["kept"], totals["pairs"])
        return {**dict(counts), **totals, "tokens": tokens,
                "cost_usd": round(config.pricing.cost(tokens), 6)}

    def problem(self, record: BenchmarkRecord, prompts: RftPrompts, earlier: dict[str, list[dict]]) -> Problem:
        if self.config.setting == "mixed":
            problem = Problem(record=record, key=content_id(record.id, prompts.prompt_id()),
                              prompt=prompts.natural(record), program_prompt=prompts.program(record))
            code_prompt = problem.program_prompt
        else:
            problem = Problem(record=record, key=content_id(record.id, prompts.prompt_id()), prompt=prompts(record))
            code_prompt = problem.prompt if self.config.setting != "nl" else ""
        if not isinstance(code_prompt, str):
            raise UserError(f"setting: {self.config.setting} continues the model's own text, so it needs a raw "
                            "prompt: use prompt zero_shot or few_shot, or a local engine (which renders chat templates)")
        for sample in earlier.pop(record.id, []):
            problem.samples[sample["sample_index"]] = sample
        k = self.config.k
        while all(problem.rounds * k + i in problem.samples for i in range(k)):
            problem.rounds += 1
        return problem

    def write_problem(self, problem: Problem, work: ShardWork, grading: Grading, counts: Counter) -> None:
        """Kept rows, pairs, then the problems row (the mark that the problem is done)."""
        config, record = self.config, problem.record
        samples = [problem.samples[i] for i in sorted(problem.samples)]
        label, votes, source = record.gold, None, "reference"
        if problem.has_reference:
            verdicts = [{"correct": s["correct"], "verdict": s["verdict"]} for s in samples]
        else:
            source = "majority"
            label, votes = majority_label([s["extracted"] for s in samples], config.min_votes)
            if label is None:
                verdicts = [{"correct": False, "verdict": None} for _ in samples]
            else:
                graded = dataclasses.replace(record, gold=label)
                verdicts = grade_distinct(grading, graded, [s["extracted"] for s in samples])
        correct = [s for s, v in zip(samples, verdicts) if v["correct"]]
        wrong = [{**s, "verdict": v["verdict"]} for s, v in zip(samples, verdicts) if not v["correct"]]
        status = "no_majority" if label is None else (
            "enough_correct" if len(correct) >= config.wanted_correct else "capped")
        kept, pairs, dropped = [], [], Counter()
        if label is not None:
            whole = [s for s in correct if config.keep_truncated or s["finish_reason"] != "length"]
            selection = select_diverse([s["completion"] for s in whole], config.max_per_problem, config.similarity)
            kept, dropped = [whole[i] for i in selection.kept], selection.dropped
            if len(whole) < len(correct):
                dropped["truncated"] = len(correct) - len(whole)
            for setting in dict.fromkeys(sample.get("setting") for sample in kept):  # a pair shares one prompt
                same = [w for w in wrong if w.get("setting") == setting]
                mine = [k for k in kept if k.get("setting") == setting]
                pairs += preference_pairs(mine, same, config.max_pairs_per_problem - len(pairs))
        for sample in kept:
            work.writer.write(sft_row(problem, sample, label, source))
        for chosen, rejected in pairs:
            work.side("pairs").write({
                "id": content_id(record.id, chosen["id"], rejected["id"]), "problem_id": record.id,
                "prompt": prompt_for(problem, chosen), "chosen": as_reply(problem, chosen),
                "rejected": as_reply(problem, rejected),
                "rejected_reason": rejected["verdict"], "rejected_answer": rejected["extracted"],
                "chosen_id": chosen["id"], "rejected_id": rejected["id"], "gold": label, "label_source": source})
        tokens = Counter()
        for sample in samples:
            tokens.update(sample.get("usage") or {})
        work.side("problems").write({
            "id": record.id, "problem_id": record.id, "benchmark": record.benchmark, "question": record.question,
            "gold": label, "label_source": source, "votes": votes, "status": status, "rounds": problem.rounds,
            "samples": len(samples), "correct": len(correct),
            "pass_rate": round(len(correct) / len(samples), 6) if samples else 0.0,
            "kept": len(kept), "dropped": dict(dropped), "pairs": len(pairs),
            "wrong_by_reason": dict(Counter(str(s["verdict"]) for s in wrong)), "tokens": dict(tokens)})
        counts["problems_done_now"] += 1

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        problems, samples = counts.get("problems", 0), counts.get("samples", 0)
        rate = f"{counts.get('correct', 0) / samples:.1%}" if samples else "n/a"
        return (f"{counts.get('records', 0)} kept solutions and {counts.get('pairs', 0)} pairs from {problems} "
                f"problems ({samples} samples, {rate} correct; {counts.get('by_status', {}).get('no_majority', 0)} "
                f"without a majority label); cost ${counts.get('cost_usd', 0):.4f}")


def prompt_for(problem: Problem, sample: dict[str, Any]) -> str | list[dict[str, str]]:
    """The prompt a sample answered (setting mixed: a program sample answered the PoT prompt)."""
    if sample.get("setting") == "pot" and problem.program_prompt is not None:
        return problem.program_prompt
    return problem.prompt


def sft_row(problem: Problem, sample: dict[str, Any], label: str, source: str) -> dict[str, Any]:
    record = problem.record
    row: dict[str, Any] = {"id": sample["id"], "problem_id": record.id, "benchmark": record.benchmark}
    prompt = prompt_for(problem, sample)
    if isinstance(prompt, str):
        row.update(prompt=prompt, completion=sample["completion"])
    else:
        row["messages"] = [*prompt, {"role": "assistant", "content": sample["completion"]}]
    return {**row, "gold": label, "label_source": source, "extracted": sample["extracted"],
            "sample_index": sample["sample_index"], "model": sample["model"]}


def as_reply(problem: Problem, sample: dict[str, Any]) -> str | list[dict[str, str]]:
    """A solution in the prompt's form (TRL's standard or conversational preference format)."""
    if isinstance(prompt_for(problem, sample), str):
        return sample["completion"]
    return [{"role": "assistant", "content": sample["completion"]}]


def earlier_samples(path, done: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Samples of unfinished problems from earlier runs (the side writer already cut a torn line)."""
    found: dict[str, list[dict[str, Any]]] = {}
    if not path.exists():
        return found
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            sample = json.loads(line)
            if sample["problem_id"] not in done:
                found.setdefault(sample["problem_id"], []).append(sample)
    return found


def shard_totals(path) -> dict[str, Any]:
    """Counts over every problems row of the shard, earlier runs included."""
    totals: dict[str, Any] = {"problems": 0, "samples": 0, "correct": 0, "kept": 0, "pairs": 0,
                              "by_status": {}, "dropped": {}, "pass_rate_histogram": {}, "wrong_by_reason": {}}
    if not path.exists():
        return totals
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            totals["problems"] += 1
            for key in ("samples", "correct", "kept", "pairs"):
                totals[key] += row[key]
            for key, more in (("by_status", {row["status"]: 1}), ("dropped", row["dropped"]),
                              ("wrong_by_reason", row["wrong_by_reason"]),
                              ("pass_rate_histogram", {pass_bucket(row["pass_rate"]): 1})):
                for name, value in more.items():
                    totals[key][name] = totals[key].get(name, 0) + value
    return totals


def pass_bucket(rate: float) -> str:
    if rate == 0:
        return "0"
    if rate == 1:
        return "1"
    low = min(int(rate * 10), 9) / 10
    return f"{low:.1f}-{low + 0.1:.1f}"


# ---------------------------------------------------------------- sampling


class Sampler:
    """Draws rounds of ``k`` samples for a batch of problems, wave after wave, grading each
    sample as it arrives; yields each problem once it has enough correct samples or the cap."""

    def __init__(self, config: RftConfig, engine) -> None:
        self.config, self.engine = config, engine
        self.grading = Grading(config.grading_timeout_s)
        self._sandbox = None

    def close(self) -> None:
        self.grading.close()
        if self._sandbox is not None:
            self._sandbox.close()

    @property
    def sandbox(self):
        if self._sandbox is None:
            from sandbox import Sandbox

            self._sandbox = Sandbox(self.config.sandbox)
            self._sandbox.__enter__()
        return self._sandbox

    def sample(self, problems: list[Problem], out) -> Iterator[Problem]:
        active = []
        for problem in problems:
            if problem.finished(self.config):
                yield problem  # finished in an earlier run that died before writing its rows
            else:
                active.append(problem)
        while active:
            setting, k = self.config.setting, self.config.k
            if setting == "nl":
                self.nl_wave(active, out, k, 0)
            elif setting == "mixed":  # the first part of each round CoT, the rest programs
                programs = round(k * self.config.pot_share)
                if k - programs:
                    self.nl_wave(active, out, k - programs, 0)
                if programs:
                    self.tool_wave(active, out, programs, k - programs, "pot")
            else:
                self.tool_wave(active, out, k, 0, setting)
            still = []
            for problem in active:
                problem.rounds += 1
                if problem.finished(self.config):
                    yield problem
                else:
                    still.append(problem)
            active = still

    def round_key(self, problem: Problem) -> str:
        return f"{problem.key}#r{problem.rounds}"

    def nl_wave(self, active: list[Problem], out, n: int, offset: int) -> None:
        """``n`` CoT samples per problem, at sample indices round * k + offset + i."""
        config, k = self.config, self.config.k
        by_key = {}
        requests = []
        for problem in active:
            key = self.round_key(problem)
            by_key[key] = problem
            sampling = config.sampling.model_copy(update={"n": n, "seed": round_seed(config, key)})
            if isinstance(problem.prompt, str):
                requests.append(GenerationRequest(id=key, sampling=sampling, prompt=problem.prompt))
            else:
                requests.append(GenerationRequest(id=key, sampling=sampling, messages=tuple(problem.prompt)))
        for result in self.engine.generate(requests):
            problem = by_key.pop(result.request_id)
            first = problem.rounds * k + offset
            texts = [c.text for c in result.completions]
            answers = [extract(problem.record, t) for t in texts]
            verdicts = self.grade(problem, answers)
            for i, (completion, verdict) in enumerate(zip(result.completions, verdicts)):
                usage = ({"prompt_tokens": result.usage.prompt_tokens,
                          "completion_tokens": result.usage.completion_tokens} if i == 0 else
                         {"prompt_tokens": 0, "completion_tokens": 0})
                self.keep(problem, out, first + i, completion.text, completion.finish_reason, verdict,
                          result.request_id, usage, cached=result.cached, setting="nl")

    def tool_wave(self, active: list[Problem], out, n: int, offset: int, setting: str) -> None:
        """``n`` tool-integrated or program samples per problem, at indices round * k + offset + i."""
        from data.text import last_code_block
        from eval.tool_loop import Trajectory, execution_record, solve_with_tools

        config, k = self.config, self.config.k
        owners: dict[str, tuple[Problem, int]] = {}
        trajectories = []
        for problem in active:
            prompt = problem.program_prompt if problem.program_prompt is not None else problem.prompt
            for i in range(offset, offset + n):
                index = problem.rounds * k + i
                if index in problem.samples:
                    continue  # drawn before a kill
                key = f"{self.round_key(problem)}#{i}"
                sampling = config.sampling.model_copy(update={"n": 1, "seed": round_seed(config, key)})
                trajectories.append(Trajectory(key=key, prompt=prompt, sampling=sampling))
                owners[key] = (problem, index)
        sandbox = self.sandbox
        rounds = config.max_rounds if setting == "tool" else 0
        for trajectory in solve_with_tools(trajectories, self.engine, sandbox, max_rounds=rounds):
            problem, index = owners.pop(trajectory.key)
            if setting == "pot":
                code = last_code_block(trajectory.text)
                if code is not None:
                    trajectory.executions.append(execution_record(code, sandbox.run_many([code])[0]))
                answer = pot_answer(trajectory.executions)
            else:
                answer = extract(problem.record, trajectory.text)
            verdict = self.grade(problem, [answer])[0]
            usage = {"prompt_tokens": trajectory.usage.prompt_tokens,
                     "completion_tokens": trajectory.usage.completion_tokens}
            self.keep(problem, out, index, trajectory.text, trajectory.finish_reason, verdict, trajectory.key, usage,
                      executions=trajectory.executions, setting=setting)

    def grade(self, problem: Problem, answers: list[str | None]) -> list[dict[str, Any]]:
        if problem.has_reference:
            return grade_distinct(self.grading, problem.record, answers)
        return [{"extracted": a, "correct": None, "verdict": None} for a in answers]  # graded once labelled

    def keep(self, problem: Problem, out, index: int, text: str, finish_reason, verdict: dict[str, Any],
             request_key: str, usage: dict[str, int], **extra: Any) -> None:
        if index in problem.samples:
            return  # a round redone after a kill: what was drawn stays
        sample = {"id": content_id(problem.key, index), "problem_id": problem.record.id, "round": problem.rounds,
                  "sample_index": index, "request": request_key, "completion": text, "finish_reason": finish_reason,
                  **verdict, "model": self.engine.model_name, "usage": usage, **extra}
        problem.samples[index] = sample
        out.write(sample)


def round_seed(config: RftConfig, key: str) -> int:
    """Every round is seeded, even with ``seed: null``: unseeded rounds would be the same request,
    which the request cache answers with the same samples."""
    return derive_seed(0 if config.sampling.seed is None else config.sampling.seed, key)


def grade_distinct(grading: Grading, record: BenchmarkRecord, answers: list[str | None]) -> list[dict[str, Any]]:
    """eval's verdicts, each distinct answer graded once: k samples of a problem mostly repeat a
    few answers, and grading is most of rft's own cost."""
    distinct = list(dict.fromkeys(a for a in answers if a is not None))
    by_answer = dict(zip(distinct, grading.verdicts(record, distinct)))
    return [by_answer[a] if a is not None else {"extracted": None, "correct": False, "verdict": "no_answer"}
            for a in answers]


def run_rft(config: RftConfig, shard: Shard, *, engine=None) -> dict[str, Any]:
    """One shard of ``mathsynth rft`` (see :mod:`runner.run`)."""
    return run_stage(RftStage(config), shard, engine=engine)


__all__ = ["RftConfig", "RftStage", "run_rft"]
