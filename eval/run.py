"""``mathsynth eval run``: benchmarks -> prompts -> engine (-> sandbox) -> graded rows -> report.

Built on the generic generation run: sharded, resumable by record id, one record per sample
holding everything a number in the report is computed from (prompt, completion, code
executions, extracted answer, verdict). The report is written when the last shard seals.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Literal

from pydantic import Field, field_validator

from data.config_base import StrictConfig
from data.errors import UserError
from data.records import BenchmarkRecord, content_id
from data.shards import Shard
from data.storage import ShardWriter, StageOutput
from llm.config import EngineConfig
from llm.engine import Engine
from llm.generation_run import WorkItem, derive_seed, record_id, run_generation
from llm.types import GenerationRequest, GenerationResult, SamplingParams
from runner.ownership import ByPosition
from runner.run import run_stage
from runner.stage import ShardWork, Stage
from sandbox.config import SandboxConfig

log = logging.getLogger(__name__)


class EvalSampling(SamplingParams):
    """Evaluation defaults, per field so that ``--set sampling.max_tokens=16`` keeps the rest:
    greedy, seeded, 1024 new tokens (JiuZhang3.0's setting), and a stop before the model starts
    inventing the next few-shot question."""

    temperature: float = Field(0.0, ge=0.0)
    max_tokens: int = Field(1024, ge=1)
    seed: int | None = 0
    stop: tuple[str, ...] = ("## Question",)


class EvalConfig(StrictConfig):
    benchmarks: list[str] = Field(..., min_length=1)
    custom_benchmarks: list[str] = Field(default_factory=list, description="YAML files describing JSONL benchmarks")
    setting: Literal["nl", "tool", "pot"] = "nl"
    prompt: Literal["auto", "zero_shot", "few_shot", "chat"] = "auto"
    shots: int = Field(5, ge=0, le=16)
    n: int = Field(1, ge=1, description="samples per problem (pass@k / maj@k)")
    limit: int | None = Field(None, ge=1, description="first N problems of each benchmark")
    engine: EngineConfig
    sampling: EvalSampling = Field(default_factory=EvalSampling)
    max_rounds: int = Field(4, ge=1, description="code executions per problem in the tool setting")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    grading_timeout_s: float = Field(5.0, gt=0)
    output: str = Field(..., min_length=1)

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _comma_list(cls, value):
        return [b.strip() for b in value.split(",") if b.strip()] if isinstance(value, str) else value


def load_records(config: EvalConfig) -> list[BenchmarkRecord]:
    from data.benchmarks import load_benchmark, load_benchmark_config

    for path in config.custom_benchmarks:
        load_benchmark_config(path)  # registers it under its own name
    records: list[BenchmarkRecord] = []
    for name in config.benchmarks:
        records.extend(load_benchmark(name, limit=config.limit))
    return records


class PromptMaker:
    """The prompt for a record in the configured style; few-shot exemplars are chosen once per
    benchmark so every problem of a benchmark sees the same ones."""

    def __init__(self, config: EvalConfig, tokenizer=None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self._exemplars: dict[str, Any] = {}

    def style(self, record: BenchmarkRecord) -> str:
        if self.config.prompt != "auto":
            return self.config.prompt
        from data.benchmarks import BENCHMARKS

        spec = BENCHMARKS.get(record.benchmark)
        return getattr(spec, "default_prompt", None) or "zero_shot"

    def __call__(self, record: BenchmarkRecord) -> str | list[dict]:
        from eval.prompts import build_prompt, select_exemplars

        style = self.style(record)
        exemplars = None
        if style == "few_shot":
            if record.benchmark not in self._exemplars:
                self._exemplars[record.benchmark] = select_exemplars(record.benchmark, self.config.shots)
            exemplars = self._exemplars[record.benchmark]
        return build_prompt(record, style, tool=self.config.setting != "nl", exemplars=exemplars, tokenizer=self.tokenizer)

    def prompt_id(self) -> str:
        return content_id(self.config.prompt, self.config.shots, self.config.setting)


def _as_request(key: str, prompt: str | list[dict], sampling: SamplingParams) -> GenerationRequest:
    if isinstance(prompt, str):
        return GenerationRequest(id=key, sampling=sampling, prompt=prompt)
    return GenerationRequest(id=key, sampling=sampling, messages=tuple(prompt))


def item_key(record: BenchmarkRecord, prompt_id: str) -> str:
    return content_id(record.id, prompt_id)


def base_row(record: BenchmarkRecord) -> dict[str, Any]:
    return {
        "benchmark": record.benchmark,
        "problem_id": record.id,
        "gold": record.gold,
        "answer_type": record.answer_type,
        "subject": record.subject,
        "level": record.level,
    }


class Grading:
    """Grades completions with the project's grader, bounded in time per call."""

    def __init__(self, timeout_s: float) -> None:
        from eval.grading import Grader

        self.grader = Grader()
        self.timeout_s = timeout_s

    def verdicts(self, record: BenchmarkRecord, answers: list[str | None]) -> list[dict[str, Any]]:
        """``answers``: extracted answers of one problem's samples (None: the model gave none)."""
        return self.grade([(record, answer) for answer in answers])

    def grade(self, items: list[tuple[BenchmarkRecord, str | None]]) -> list[dict[str, Any]]:
        """Many (problem, extracted answer) pairs in one call, so the grader can batch them."""
        asked = [(record.gold, answer, record.answer_type) for record, answer in items if answer is not None]
        graded = iter(self.grader.grade_many(asked, timeout_s=self.timeout_s))
        out = []
        for _, answer in items:
            if answer is None:
                out.append({"extracted": None, "correct": False, "verdict": "no_answer"})
            else:
                verdict = next(graded)
                out.append({"extracted": answer, "correct": bool(verdict.equal), "verdict": verdict.reason})
        return out

    def close(self) -> None:
        close = getattr(self.grader, "close", None)
        if close:
            close()


def extract(record: BenchmarkRecord, text: str) -> str | None:
    from eval.extraction import extract_answer

    return extract_answer(text, record.answer_type, record.choices)


def pot_answer(executions: list[dict[str, Any]]) -> str | None:
    """Program of thought: the last line the last program printed is the answer."""
    if not executions or executions[-1]["status"] != "ok":
        return None
    lines = [line for line in executions[-1]["stdout"].splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def nl_items(records: Iterable[BenchmarkRecord], prompts: PromptMaker, config: EvalConfig) -> Iterator[tuple[WorkItem, BenchmarkRecord]]:
    prompt_id = prompts.prompt_id()
    for record in records:
        key = item_key(record, prompt_id)
        sampling = config.sampling.model_copy(update={"n": config.n, "seed": derive_seed(config.sampling.seed, key)})
        prompt = prompts(record)
        item = WorkItem(request=_as_request(key, prompt, sampling), provenance={**base_row(record), "prompt": prompt})
        yield item, record


def run_nl(items, engine: Engine, writer: ShardWriter, grading: Grading, advance) -> dict[str, Any]:
    by_key = {}

    def work() -> Iterator[WorkItem]:
        for item, record in items:
            by_key[item.key] = record
            yield item

    def to_records(item: WorkItem, result: GenerationResult, model_name: str):
        from llm.generation_run import result_records

        record = by_key.pop(item.key)
        texts = [c.text for c in result.completions]
        verdicts = grading.verdicts(record, [extract(record, t) for t in texts])
        for row, verdict in zip(result_records(item, result, model_name), verdicts):
            yield {**row, **verdict, "executions": []}

    stats = run_generation(work(), engine, writer, to_records=to_records, progress=advance)
    return stats.as_dict()


def run_with_tools(items, engine: Engine, writer: ShardWriter, grading: Grading, config: EvalConfig, advance) -> dict[str, Any]:
    """tool: execute-and-continue up to max_rounds; pot: one program, its printed result is the answer."""
    from data.text import last_code_block
    from eval.tool_loop import Trajectory, execution_record, solve_with_tools
    from sandbox import Sandbox

    records: dict[str, tuple[BenchmarkRecord, WorkItem, int]] = {}
    trajectories: list[Trajectory] = []
    skipped = 0
    for item, record in items:
        for index in range(config.n):
            if record_id(item.key, index) in writer:
                skipped += 1
                continue
            if item.request.prompt is None:
                raise UserError(f"setting: {config.setting} continues the model's own text, so it needs a raw prompt: "
                                "use prompt zero_shot or few_shot, or a local engine (which renders chat templates)")
            key = f"{item.key}#{index}"
            sampling = item.request.sampling.model_copy(update={"n": 1, "seed": derive_seed(config.sampling.seed, key)})
            trajectories.append(Trajectory(key=key, prompt=item.request.prompt, sampling=sampling))
            records[key] = (record, item, index)
    rounds = config.max_rounds if config.setting == "tool" else 0
    written = 0
    with Sandbox(config.sandbox) as sandbox:
        for trajectory in solve_with_tools(trajectories, engine, sandbox, max_rounds=rounds):
            record, item, index = records.pop(trajectory.key)
            if config.setting == "pot":
                code = last_code_block(trajectory.text)
                if code is not None:
                    trajectory.executions.append(execution_record(code, sandbox.run_many([code])[0]))
                answer = pot_answer(trajectory.executions)
            else:
                answer = extract(record, trajectory.text)
            verdict = grading.verdicts(record, [answer])[0]
            row = {
                "id": record_id(item.key, index),
                "item_key": item.key,
                **item.provenance,
                "sample_index": index,
                "completion": trajectory.text,
                "finish_reason": trajectory.finish_reason,
                "model": engine.model_name,
                "seed": trajectory.sampling.seed,
                "usage": {"prompt_tokens": trajectory.usage.prompt_tokens, "completion_tokens": trajectory.usage.completion_tokens},
                "executions": trajectory.executions,
                **verdict,
            }
            written += writer.write(row)
            advance(1)
    return {"samples_resumed_done": skipped, "records_written": written}


class EvalStage(Stage):
    """Benchmark problems owned by position; every sample graded; the report once all are sealed."""

    name = "eval"
    ownership = ByPosition()
    has_finish_step = True

    def __init__(self, config: EvalConfig) -> None:
        super().__init__(config)
        self.records: list[BenchmarkRecord] = []

    def inputs(self) -> list[str]:
        return self.config.benchmarks + self.config.custom_benchmarks

    def check(self) -> None:
        self.records = load_records(self.config)

    def engine_config(self):
        return self.config.engine

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        config = self.config
        mine = self.ownership.items(self.records, work.shard)
        grading = Grading(config.grading_timeout_s)
        try:
            prompts = PromptMaker(config, tokenizer=getattr(work.engine, "tokenizer", None))
            items = nl_items(mine, prompts, config)
            with work.progress("sample", total=len(mine) * config.n) as advance:
                if config.setting == "nl":
                    stats = run_nl(items, work.engine, work.writer, grading, advance)
                else:
                    stats = run_with_tools(items, work.engine, work.writer, grading, config, advance)
        finally:
            grading.close()
        return {"problems": len(mine), **stats}

    def finish(self, output: StageOutput) -> dict[str, Any]:
        from eval.report import write_report

        write_report(output.folder, require_complete=False)
        return {"report": "report.json"}

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        return f"{counts.get('records', 0)} graded samples of {counts.get('problems', 0)} problems"


def run_eval(config: EvalConfig, shard: Shard, *, engine: Engine | None = None) -> dict[str, Any]:
    """One shard of ``mathsynth eval run`` (see :mod:`runner.run`); the report is written once
    every shard is sealed."""
    return run_stage(EvalStage(config), shard, engine=engine)
