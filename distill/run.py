"""``mathsynth distill``: source texts -> education-stage prompts -> teacher -> validated problems.

Each source window gets a seeded (stage, variant) draw and one teacher call. Outputs that pass
validation go to the part files (the distillation set); the others go to ``rejects-*.jsonl``
with their reason, so counts can be audited and nothing is asked twice on a rerun. When every
shard is sealed, the SFT export the synthesizer trains on is written beside them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import Field

from data.config_base import StrictConfig
from data.corpus import CorpusInput, read_corpus
from data.records import Document
from data.shards import Shard
from data.stage_prompts.library import PromptLibrary
from data.stage_prompts.prompted import PromptKeys, load_library, prompted_windows
from data.storage import ShardWriter, StageOutput, atomic_write_text, iter_records
from distill.validation import ValidationConfig
from llm.config import EngineConfig
from llm.engine import Engine
from llm.generation_run import WorkItem, derive_seed, result_records, run_generation
from llm.types import GenerationRequest, GenerationResult, SamplingParams
from runner.run import run_stage
from runner.stage import CorpusStage, ShardWork
from sandbox.config import SandboxConfig

log = logging.getLogger(__name__)

class TeacherSampling(SamplingParams):
    """The released JiuZhang3.0 teacher settings: temperature 0.6, up to 2,500 tokens; stop if
    the teacher starts a second problem."""

    temperature: float = Field(0.6, ge=0.0)
    max_tokens: int = Field(2500, ge=1)
    seed: int | None = 0
    stop: tuple[str, ...] = ("\n## Problem",)


class Pricing(StrictConfig):
    input_per_million: float = Field(0.0, ge=0)
    output_per_million: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


class Estimate(StrictConfig):
    """How ``--dry-run`` turns text into tokens without a tokenizer (or with ``tokenizer``)."""

    tokenizer: str | None = Field(None, description="a local tokenizer folder for exact prompt counts")
    chars_per_token: float = Field(3.6, gt=0)
    tokens_per_word: float = Field(1.6, gt=0, description="for the expected answer length (LaTeX-heavy text)")


class SelfConsistency(StrictConfig):
    """Optional check of each accepted problem: the teacher solves it ``k`` more times and the
    problem is kept only when a majority of those answers equal its own (eval's grader decides)."""

    k: int = Field(0, ge=0, description="0 turns the check off")
    prompt: str = Field("Solve the following problem step by step, and put the final answer in \\boxed{}.\n\n{problem}",
                        description="{problem} is replaced by the problem text")


class DistillConfig(PromptKeys):
    """The prompt keys (window_mode, windows_per_text, stages, variants, stages_file,
    variants_file, seed) come from :class:`PromptKeys`, shared with synth generate."""

    input: CorpusInput
    teacher: EngineConfig
    format: Literal["chat", "raw"] = "chat"
    sampling: TeacherSampling = Field(default_factory=TeacherSampling)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    self_consistency: SelfConsistency = Field(default_factory=SelfConsistency)
    pricing: Pricing = Field(default_factory=Pricing)
    estimate: Estimate = Field(default_factory=Estimate)
    output: str = Field(..., min_length=1)


def build_items(docs: Iterable[Document], library: PromptLibrary, config: DistillConfig) -> Iterator[WorkItem]:
    """One work item per source window, its stage and variant drawn from the text's id."""
    for window in prompted_windows(docs, library, config):
        sampling = config.sampling.model_copy(update={"seed": derive_seed(config.sampling.seed, window.key)})
        request = GenerationRequest.single_turn(window.key, sampling, window.prompt, chat=config.format == "chat")
        yield WorkItem(request=request, provenance=window.provenance())


class AcceptedOrRejected:
    """Two append-only files behind the writer interface the generation loop uses: an item is
    done once its record is in either, so a rerun never asks the teacher twice."""

    def __init__(self, accepted: ShardWriter, rejected: ShardWriter) -> None:
        self.accepted, self.rejected = accepted, rejected

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.accepted or record_id in self.rejected

    def write(self, record: dict[str, Any]) -> bool:
        return (self.accepted if record["accepted"] else self.rejected).write(record)


def accepted_problems(path: Path) -> Iterator[str]:
    if path.exists():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n"):
                    yield json.loads(line)["problem"]


class DistillStage(CorpusStage):
    """Teacher calls per source window, validated into accepted records and ``rejects-*``;
    the SFT export once every shard is sealed."""

    name = "distill"
    engine_key = "teacher"
    has_finish_step = True

    def __init__(self, config: DistillConfig) -> None:
        super().__init__(config)
        self.library = load_library(config)  # a bad stages/variants file fails before any write

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        from distill.validation import CandidateOutput, Validator
        from sandbox import Sandbox

        config = self.config
        accepted, rejected = work.writer, work.side("rejects")
        # With self-consistency, what passes validation is only a candidate until the check.
        checking = config.self_consistency.k > 0
        candidates = work.side("candidates") if checking else accepted
        needs_sandbox = config.variants.get("tool", 0) > 0 and config.validation.check_code
        sandbox = Sandbox(config.sandbox) if needs_sandbox else None
        validator = Validator(config.validation, sandbox=sandbox)
        for problem in accepted_problems(candidates.path):
            validator.remember(problem)  # near-duplicates of what an earlier run accepted

        def to_records(item: WorkItem, result: GenerationResult, model_name: str):
            rows = list(result_records(item, result, model_name))
            outputs = [CandidateOutput(key=row["id"], completion=row["completion"],
                                       source_text=item.provenance["source_text"], variant=item.provenance["variant"])
                       for row in rows]
            for row, verdict in zip(rows, validator.check_many(outputs)):
                parsed = verdict.parsed
                yield {
                    **{k: v for k, v in row.items() if k != "source_text"},
                    "accepted": verdict.accepted,
                    "reject_reason": verdict.reason,
                    "problem": parsed.problem if parsed else None,
                    "solution": parsed.solution if parsed else None,
                    "final_answer": parsed.final_answer if parsed else None,
                    "teacher": model_name,
                    "validation": verdict.details,
                }

        try:
            items = build_items(work.documents(config.input), self.library, config)
            with work.progress("text") as advance:
                stats = run_generation(items, work.engine, AcceptedOrRejected(candidates, rejected),
                                       to_records=to_records, progress=advance)
            if checking:
                candidates.close(sync=True)
                self_consistency_pass(candidates.path, accepted, rejected, work.engine, config)
        finally:
            if sandbox is not None:
                sandbox.close()
        rejected.close(sync=True)
        reasons: dict[str, int] = {}
        with open(rejected.path, encoding="utf-8") as handle:
            for line in handle:
                reason = json.loads(line)["reject_reason"]
                reasons[reason] = reasons.get(reason, 0) + 1
        # Every teacher answer cost tokens, kept or not (the accepted ones are summed on sealing).
        return {"texts": stats.items_total, "generated": stats.items_generated, "resumed_done": stats.items_skipped_done,
                "rejected": len(rejected), "rejected_by_reason": reasons, "seconds": stats.seconds,
                "usage": {k: accepted.usage.get(k, 0) + rejected.usage.get(k, 0)
                          for k in set(accepted.usage) | set(rejected.usage)}}

    def finish(self, output: StageOutput) -> dict[str, Any]:
        return write_sft_export(output, self.config)

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        return (f"{counts.get('records', 0)} accepted, {counts.get('rejected', 0)} rejected "
                f"{counts.get('rejected_by_reason', {})} from {counts.get('texts', 0)} texts")


def run_distill(config: DistillConfig, shard: Shard, *, engine: Engine | None = None) -> dict[str, Any]:
    """One shard of ``mathsynth distill`` (see :mod:`runner.run`)."""
    return run_stage(DistillStage(config), shard, engine=engine)


def self_consistency_pass(candidates: Path, accepted: ShardWriter, rejected: ShardWriter, engine: Engine,
                          config: DistillConfig) -> None:
    """Each candidate not yet decided: k fresh teacher solutions in one call (n=k); kept when
    more than half of their answers equal the candidate's, else rejected as ``inconsistent``.
    Resumable like the first pass: a decided candidate is in the accepted or rejects file."""
    from eval.extraction import extract_answer
    from eval.grading import Grader

    check = config.self_consistency
    pending = {}
    with open(candidates, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["id"] not in accepted and record["id"] not in rejected:
                pending[record["id"]] = record

    def requests() -> Iterator[GenerationRequest]:
        # A snapshot: the engine draws requests while finished results are popped from pending.
        for record_id, record in list(pending.items()):
            prompt = check.prompt.replace("{problem}", record["problem"])
            sampling = config.sampling.model_copy(update={"n": check.k, "seed": derive_seed(config.sampling.seed, f"{record_id}#sc")})
            yield GenerationRequest.single_turn(record_id, sampling, prompt, chat=config.format == "chat")

    grader = Grader()
    try:
        for result in engine.generate(requests()):
            record = pending.pop(result.request_id)
            answers = [extract_answer(c.text, "expression") for c in result.completions]
            verdicts = grader.grade_many([(record["final_answer"], a, "expression") for a in answers if a is not None])
            agree = sum(bool(v.equal) for v in verdicts)
            kept = 2 * agree > check.k
            usage = record.get("usage") or {}
            record = {
                **record,
                "accepted": kept,
                "reject_reason": None if kept else "inconsistent",
                "self_consistency": {"k": check.k, "agree": agree, "answers": answers},
                "usage": {"prompt_tokens": usage.get("prompt_tokens", 0) + result.usage.prompt_tokens,
                          "completion_tokens": usage.get("completion_tokens", 0) + result.usage.completion_tokens},
            }
            (accepted if kept else rejected).write(record)
    finally:
        grader.close()


def write_sft_export(output: StageOutput, config: DistillConfig) -> dict[str, Any]:
    """The SFT export (the stage prompt with its source text as input, the problem and solution
    as target, in raw-prompt and chat form) and the run's cost, for the manifest."""
    raw_lines, chat_lines = [], []
    for record in iter_records(output.folder, require_complete=False):
        prompt = record["prompt"] if isinstance(record["prompt"], str) else record["prompt"][-1]["content"]
        target = f"{record['problem'].strip()}\n\n## Solution\n{record['solution'].strip()}\n"
        raw_lines.append(json.dumps({"id": record["id"], "prompt": prompt, "completion": target}, ensure_ascii=False))
        chat_lines.append(json.dumps({"id": record["id"], "messages": [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": target}]}, ensure_ascii=False))
    atomic_write_text(output.folder / "sft_raw.jsonl", "".join(line + "\n" for line in raw_lines))
    atomic_write_text(output.folder / "sft_chat.jsonl", "".join(line + "\n" for line in chat_lines))
    usage = output.refresh_manifest().get("usage", {})
    cost = config.pricing.cost(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    return {"cost_usd": round(cost, 6), "sft_examples": len(raw_lines)}


def dry_run(config: DistillConfig, shard: Shard) -> dict[str, Any]:
    """What a run would send, without calling anything: calls, estimated tokens and cost."""
    library = load_library(config)
    tokenizer = None
    if config.estimate.tokenizer:
        from llm.loading import load_tokenizer

        tokenizer = load_tokenizer(config.estimate.tokenizer)
    calls = prompt_tokens = completion_tokens = 0
    by_stage: dict[str, int] = {}
    for item in build_items(read_corpus(config.input, shard), library, config):
        text = item.request.prompt if item.request.prompt is not None else item.request.messages[-1]["content"]
        prompt_tokens += len(tokenizer(text)["input_ids"]) if tokenizer else len(text) / config.estimate.chars_per_token
        stage = library.stages[item.provenance["stage"]]
        words = (sum(stage.problem_words) + sum(stage.solution_words)) / 2
        completion_tokens += min(words * config.estimate.tokens_per_word, config.sampling.max_tokens) * config.sampling.n
        calls += 1
        by_stage[item.provenance["stage"]] = by_stage.get(item.provenance["stage"], 0) + 1
    return {
        "calls": calls,
        "prompt_tokens": round(prompt_tokens),
        "completion_tokens": round(completion_tokens),
        "cost_usd": round(config.pricing.cost(prompt_tokens, completion_tokens), 4),
        "by_stage": by_stage,
    }
