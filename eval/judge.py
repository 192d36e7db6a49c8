"""``mathsynth judge``: an LLM judge scores the records of any stage folder (or JSONL files).

Each input record is shown to the judge through the rubric (``eval/judge_rubric.yaml``, data
anyone can edit: the fields shown, the criteria, the JSON asked for) and comes out unchanged
but for two columns: ``judge`` = {score, solvable, correct, clarity, difficulty, rationale,
judge_model, rubric, error} and ``usage`` (the judge call's tokens; the input's own usage, if
any, moves to ``input_usage``). The id is the input's id, so ``synth filter`` (its ``judge``
filter) and the explorer trace a judged record to the record it judges.

An answer that cannot be read (:mod:`eval.judge_parse`) is still written, with ``judge.error``
set to its reason and ``judge.score`` null, and counted in the manifest
(``counts.judge_errors_by_reason``): a record is judged once, and a rerun asks nothing again.
Sharding, resume by record id, the request cache and the budget are the runner's and the
engine's (:mod:`runner.run`, :mod:`llm.openai_engine`).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml
from pydantic import Field, model_validator

from data.config_base import StrictConfig, operational
from data.config_files import validate_model
from data.corpus import CorpusStats, iter_rows, resolve_sources
from data.errors import ConfigError, InputError
from data.records import content_id
from data.shards import Shard
from eval.judge_reward import RewardModelConfig, make_scorer
from llm.config import EngineConfig
from llm.generation_run import derive_seed
from llm.types import GenerationRequest, SamplingParams
from runner.ownership import ByCorpusRecord
from runner.run import run_stage
from runner.stage import ShardWork, Stage

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = Path(__file__).with_name("judge_rubric.yaml")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class JudgeInput(StrictConfig):
    paths: list[str] = Field(..., min_length=1, description="stage output folders, files or globs (JSONL, parquet)")
    fields: list[str] = Field(["problem", "solution"], min_length=1,
                              description="the record fields shown to the judge, in order (e.g. [text])")
    id_field: str = Field("id", description="the record id; a row without one gets a hash of its content")
    policy: Literal["fail", "skip"] = operational("fail", description="a bad row: stop with file:line, or skip it")


class JudgeSampling(SamplingParams):
    """Greedy by default: a judge should give the same verdict twice."""

    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(512, ge=1)
    n: int = Field(1, ge=1, le=1, description="one verdict per record")
    seed: int | None = 0


class Pricing(StrictConfig):
    input_per_million: float = Field(0.0, ge=0)
    output_per_million: float = Field(0.0, ge=0)

    def cost(self, usage: dict[str, Any]) -> float:
        return (usage.get("prompt_tokens", 0) * self.input_per_million
                + usage.get("completion_tokens", 0) * self.output_per_million) / 1e6


class JudgeConfig(StrictConfig):
    input: JudgeInput
    engine: EngineConfig | None = Field(None, description="an LLM judge through any engine (or reward_model)")
    reward_model: RewardModelConfig | None = Field(None, description="a sequence-classification reward model "
                                                                     "scores instead of an LLM judge")
    format: Literal["chat", "raw"] = "chat"
    sampling: JudgeSampling = Field(default_factory=JudgeSampling)
    rubric: str = Field(str(DEFAULT_RUBRIC), min_length=1, description="the rubric YAML (default: the shipped one)")
    pricing: Pricing = Field(default_factory=Pricing)
    output: str = Field(..., min_length=1)

    @model_validator(mode="after")
    def _one_scorer(self) -> "JudgeConfig":
        if (self.engine is None) == (self.reward_model is None):
            raise ValueError("give engine (an LLM judge) or reward_model, not both or neither")
        return self


class Rubric(StrictConfig):
    """The rubric file (see ``eval/judge_rubric.yaml``)."""

    id: str = Field(..., min_length=1)
    prompt: str = Field(..., min_length=1)
    system: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


def load_rubric(path: str, fields: list[str]) -> tuple[Rubric, str]:
    """The rubric and its text (hashed into the manifest: an edited rubric is a new run)."""
    file = Path(path)
    if not file.is_absolute() and not file.exists() and (DEFAULT_RUBRIC.parent.parent / file).is_file():
        file = DEFAULT_RUBRIC.parent.parent / file  # eval/judge_rubric.yaml from outside the checkout
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"rubric: {path}: cannot read ({err.strerror or err})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"rubric: {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"rubric: {path}: expected a mapping with id and prompt")
    rubric = validate_model(Rubric, raw, f"rubric {path}")
    used = set(_PLACEHOLDER.findall(rubric.prompt))
    if "record" not in used and not used & set(fields):
        raise ConfigError(f"rubric: {path}: the prompt shows nothing of the record; put {{record}} or one of "
                          f"{', '.join('{' + f + '}' for f in fields)} in it")
    absent = sorted((used & set(rubric.headers)) - set(fields))
    if absent:
        raise ConfigError(f"rubric: {path}: the prompt uses {{{absent[0]}}} but input.fields is {fields}")
    return rubric, text


class JudgePrompter:
    """A record -> the judge's request, by plain substitution (one pass: a record's own text
    is never rescanned for placeholders)."""

    def __init__(self, rubric: Rubric, config: JudgeConfig) -> None:
        self.rubric, self.config = rubric, config
        self.fields = config.input.fields

    def render(self, values: dict[str, str]) -> str:
        sections = "\n\n".join(f"## {self.rubric.headers.get(name, name.replace('_', ' ').title())}\n{values[name]}"
                               for name in self.fields)

        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name == "record":
                return sections
            return values[name] if name in values else match.group(0)

        return _PLACEHOLDER.sub(substitute, self.rubric.prompt)

    def request(self, record_id: str, values: dict[str, str]) -> GenerationRequest:
        sampling = self.config.sampling.with_seed(derive_seed(self.config.sampling.seed, record_id))
        body = self.render(values)
        if self.config.format == "raw":
            prompt = f"{self.rubric.system}\n\n{body}" if self.rubric.system else body
            return GenerationRequest(id=record_id, sampling=sampling, prompt=prompt)
        system = ({"role": "system", "content": self.rubric.system},) if self.rubric.system else ()
        return GenerationRequest(id=record_id, sampling=sampling,
                                 messages=system + ({"role": "user", "content": body},))


def shown_values(row: dict[str, Any], fields: list[str]) -> dict[str, str]:
    """The fields shown to the judge; a missing or empty one is a ``ValueError``."""
    values = {}
    for name in fields:
        value = row.get(name)
        if value is None or value == "":
            raise ValueError(f"no {name!r} to show the judge (input.fields: {fields})")
        values[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return values


def row_id(row: dict[str, Any], id_field: str) -> str:
    given = row.get(id_field)
    if isinstance(given, (str, int)) and not isinstance(given, bool) and given != "":
        return str(given)
    return content_id(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str))


class JudgeStage(Stage):
    """Rows owned by record (whole files when there are at least N, else round-robin), one
    judge call each, one record out per row."""

    name = "judge"
    ownership = ByCorpusRecord()

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__(config)
        # A bad rubric fails before the output folder exists.
        self.rubric, self.rubric_text = load_rubric(config.rubric, config.input.fields)
        self.prompter = JudgePrompter(self.rubric, config)

    def inputs(self) -> list[str]:
        return list(self.config.input.paths)

    def check(self) -> None:
        try:
            resolve_sources(self.config.input.paths)
        except InputError as err:
            raise InputError(f"input.paths: {err}") from None

    def engine_config(self):
        return self.config.engine

    def manifest_config(self) -> dict[str, Any]:
        return {**self.config.model_dump(mode="json"), "rubric_id": self.rubric.id,
                "rubric_hash": content_id(self.rubric_text)}

    def rows(self, shard: Shard, stats: CorpusStats) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
        """(id, row, shown values) of this shard's rows; bad rows fail or are skipped by policy."""
        config = self.config.input
        for location, row in iter_rows(config.paths, policy=config.policy, shard=shard, stats=stats):
            try:
                values = shown_values(row, config.fields)
            except ValueError as err:
                if config.policy == "fail":
                    raise InputError(f"{location}: {err}") from None
                stats.record_skip("missing_field", f"{location}: {err}")
                continue
            yield row_id(row, config.id_field), row, values

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        if self.config.reward_model is not None:
            return self.run_shard_with_reward_model(work)
        return self.run_shard_with_llm(work)

    def run_shard_with_reward_model(self, work: ShardWork) -> dict[str, Any]:
        """Batches of this shard's records not yet scored, through the reward model."""
        writer = work.writer
        work.corpus_stats = stats = CorpusStats()
        try:
            scorer = make_scorer(self.config.reward_model)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        counts = {"rows": 0, "resumed_done": 0, "duplicate_ids": 0, "judged_now": 0}
        batch: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        seen: set[str] = set()

        def flush() -> None:
            judged = scorer.judge_batch([list(values.values()) for _, _, values in batch])
            for (record_id, row, _), (verdict, used) in zip(batch, judged):
                record = {**row, "id": record_id, "judge": verdict, "judge_cached": False,
                          "usage": {"prompt_tokens": int(used), "completion_tokens": 0}}
                if "usage" in row:
                    record["input_usage"] = row["usage"]
                writer.write(record)
                counts["judged_now"] += 1
            advance(len(batch))
            batch.clear()

        try:
            with work.progress("record") as advance:
                for record_id, row, values in self.rows(work.shard, stats):
                    counts["rows"] += 1
                    if record_id in writer:
                        counts["resumed_done"] += 1
                    elif record_id in seen:
                        counts["duplicate_ids"] += 1
                    else:
                        seen.add(record_id)
                        batch.append((record_id, row, values))
                        if len(batch) == self.config.reward_model.batch_size:
                            flush()
                if batch:
                    flush()
        finally:
            getattr(scorer, "close", lambda: None)()
        writer.flush()
        return {**counts, **shard_verdicts(writer.path), "cost_usd": 0.0}

    def run_shard_with_llm(self, work: ShardWork) -> dict[str, Any]:
        from eval.judge_parse import parse_verdict

        writer, rubric_id = work.writer, self.rubric.id
        work.corpus_stats = stats = CorpusStats()
        waiting: dict[str, dict[str, Any]] = {}
        counts = {"rows": 0, "resumed_done": 0, "duplicate_ids": 0, "judged_now": 0}

        def todo() -> Iterator[GenerationRequest]:
            for record_id, row, values in self.rows(work.shard, stats):
                counts["rows"] += 1
                if record_id in writer:
                    counts["resumed_done"] += 1
                    advance(1)
                elif record_id in waiting:
                    counts["duplicate_ids"] += 1  # the same id twice in the input: judged once
                else:
                    waiting[record_id] = row
                    yield self.prompter.request(record_id, values)

        with work.progress("record") as advance:
            engine = work.engine
            for result in engine.generate(todo()):
                row = waiting.pop(result.request_id)
                answer = result.completions[0].text if result.completions else ""
                verdict = parse_verdict(answer)
                judge = {**verdict.as_dict(), "judge_model": engine.model_name, "rubric": rubric_id}
                if verdict.error is None:
                    judge.pop("detail")
                else:
                    judge["raw"] = answer[:2000]  # what the judge said, for whoever reads the error
                record = {**row, "id": result.request_id, "judge": judge, "judge_cached": result.cached,
                          "usage": {"prompt_tokens": result.usage.prompt_tokens,
                                    "completion_tokens": result.usage.completion_tokens}}
                if "usage" in row:
                    record["input_usage"] = row["usage"]
                writer.write(record)
                counts["judged_now"] += 1
                advance(1)
        writer.flush()
        verdicts = shard_verdicts(writer.path)
        log.info("shard %s: %d rows (%d already judged), %d judged now; errors %s", work.shard, counts["rows"],
                 counts["resumed_done"], counts["judged_now"], verdicts["judge_errors_by_reason"] or "none")
        return {**counts, **verdicts, "cost_usd": round(self.config.pricing.cost(writer.usage), 6)}

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        scored = counts.get("scored", 0)
        mean = f"{counts.get('score_sum', 0) / scored:.2f}" if scored else "n/a"
        errors = counts.get("judge_errors_by_reason", {})
        return (f"{counts.get('records', 0)} records judged, {scored} scored (mean score {mean}); unreadable "
                f"answers: {', '.join(f'{k} {v}' for k, v in sorted(errors.items())) or 'none'}; "
                f"cost ${counts.get('cost_usd', 0):.4f}")


def shard_verdicts(part: Path) -> dict[str, Any]:
    """Counts over every record of a shard's part, earlier interrupted runs included."""
    by_reason: dict[str, int] = {}
    histogram: dict[str, int] = {}
    scored, score_sum = 0, 0.0
    with open(part, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                continue
            judge = json.loads(line)["judge"]
            if judge["error"] is not None:
                by_reason[judge["error"]] = by_reason.get(judge["error"], 0) + 1
                continue
            scored += 1
            score_sum += judge["score"]
            bucket = str(int(judge["score"]))
            histogram[bucket] = histogram.get(bucket, 0) + 1
    return {"scored": scored, "score_sum": round(score_sum, 6), "score_histogram": histogram,
            "judge_errors": sum(by_reason.values()), "judge_errors_by_reason": by_reason}


def run_judge(config: JudgeConfig, shard: Shard, *, engine=None) -> dict[str, Any]:
    """One shard of ``mathsynth judge`` (see :mod:`runner.run`)."""
    return run_stage(JudgeStage(config), shard, engine=engine)
