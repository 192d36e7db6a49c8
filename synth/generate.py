"""``synth generate``: the trained synthesizer writes problems from corpus texts.

Each text gets the same seeded (stage, variant) draw, window and education-stage prompt that
``distill`` gives it (both stages build prompts with :mod:`data.stage_prompts`, so a prompt here
is byte-identical to the ``prompt`` of distill's SFT export, which the synthesizer was trained
on), and ``n`` samples from the synthesizer. The sampling follows JiuZhang3.0 per variant: chain-of-thought at
temperature 1.0 and up to 2,500 tokens; tool (Python) at temperature 0.1, top_p 0.95 and up to
5,000 tokens. Every completion is kept, parsed into problem / solution / boxed answer where it
can be (``parse_error`` where not), with its pre-training text in the JiuZhang3.0 format
(:mod:`synth.text_format`). Filtering is the next stage (``synth filter``, CPU): the sandbox
and the grader never hold up the GPU.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from data.corpus import CorpusInput
from data.records import Document, content_id
from data.shards import Shard
from data.stage_prompts.library import PromptLibrary
from data.stage_prompts.parsing import parse_completion
from data.stage_prompts.prompted import PromptKeys, load_library, prompted_windows
from llm.config import EngineConfig
from llm.engine import Engine
from llm.generation_run import WorkItem, derive_seed, result_records, run_generation
from llm.types import GenerationRequest, GenerationResult, SamplingParams
from runner.run import run_stage
from runner.stage import CorpusStage, ShardWork
from synth.text_format import pretraining_text

log = logging.getLogger(__name__)

# The paper's synthesizer settings; a config's ``sampling.<variant>`` keys are laid over these,
# so ``--set sampling.cot.temperature=0.7`` changes one value and keeps the rest.
PAPER_SAMPLING: dict[str, dict[str, Any]] = {
    "cot": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 2500, "seed": 0, "stop": ["\n## Problem"]},
    "tool": {"temperature": 0.1, "top_p": 0.95, "max_tokens": 5000, "seed": 0, "stop": ["\n## Problem"]},
}


class SynthGenerateConfig(PromptKeys):
    """The prompt keys (window_mode, windows_per_text, stages, variants, stages_file,
    variants_file, seed) are distill's, with the same meaning: give the values the distillation
    set was built with."""

    input: CorpusInput
    engine: EngineConfig = Field(..., description="the trained synthesizer; kind defaults to vllm")
    format: Literal["raw", "chat"] = Field("raw", description="as the synthesizer was trained (synth train "
                                                              "data.format); the paper prompts it raw")
    n: int = Field(1, ge=1, description="samples per text window")
    sampling: dict[str, SamplingParams] = Field(default_factory=dict, description="per variant; defaults: PAPER_SAMPLING")
    keep_prompt: bool = Field(False, description="store the rendered prompt in every record (large at scale)")
    output: str = Field(..., min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _defaults_under_user_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        engine = raw.get("engine")
        if isinstance(engine, dict) and "kind" not in engine:
            raw["engine"] = {"kind": "vllm", **engine}
        sampling = raw.get("sampling") or {}
        if isinstance(sampling, dict):
            merged = {name: dict(params) for name, params in PAPER_SAMPLING.items()}
            for name, params in sampling.items():
                merged[name] = {**merged.get(name, {}), **params} if isinstance(params, dict) else params
            raw["sampling"] = merged
        return raw

    @field_validator("sampling")
    @classmethod
    def _every_variant_has_sampling(cls, sampling: dict[str, SamplingParams], info):
        for variant, weight in (info.data.get("variants") or {}).items():
            if weight > 0 and variant not in sampling:
                raise ValueError(f"variant {variant!r} has none: give sampling.{variant}.temperature, max_tokens, ...")
        for variant, params in sampling.items():
            if params.n != 1:
                raise ValueError(f"{variant}.n: set the samples per text with the top-level key n")
        return sampling


def build_items(docs: Iterable[Document], library: PromptLibrary, config: SynthGenerateConfig) -> Iterator[WorkItem]:
    """Distill's prompted windows, asked of the synthesizer: its sampling for the variant, ``n``
    samples, and a key of its own (a synthetic problem never shares an id with the teacher's)."""
    for window in prompted_windows(docs, library, config):
        provenance = {k: v for k, v in window.provenance().items() if k != "source_text"}
        key = content_id("synth", window.key)
        params = config.sampling[window.variant]
        sampling = params.model_copy(update={"n": config.n, "seed": derive_seed(params.seed, key)})
        request = GenerationRequest.single_turn(key, sampling, window.prompt, chat=config.format == "chat")
        if not config.keep_prompt:
            del provenance["prompt"]
        yield WorkItem(request=request, provenance=provenance)


def parsed_records(item: WorkItem, result: GenerationResult, model_name: str) -> Iterator[dict[str, Any]]:
    """One record per sample, with what can be read from it; nothing is dropped here."""
    for record in result_records(item, result, model_name):
        parsed, failure = parse_completion(record["completion"])
        yield {
            **record,
            "problem": parsed.problem if parsed else None,
            "solution": parsed.solution if parsed else None,
            "final_answer": parsed.final_answer if parsed else None,
            "code": parsed.code if parsed else None,
            "parse_error": failure,
            "text": pretraining_text(parsed.problem, parsed.solution, record["variant"]) if parsed else None,
        }


def parse_errors(part) -> dict[str, int]:
    """Records of the whole shard (earlier interrupted runs included) by parse failure."""
    counts: dict[str, int] = {}
    with open(part, encoding="utf-8") as handle:
        for line in handle:
            reason = json.loads(line)["parse_error"]
            if reason is not None:
                counts[reason] = counts.get(reason, 0) + 1
    return counts


class SynthGenerateStage(CorpusStage):
    """The synthesizer's samples per prompted window, every one kept and parsed where it can be."""

    name = "synth_generate"

    def __init__(self, config: SynthGenerateConfig) -> None:
        super().__init__(config)
        self.library = load_library(config)

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        items = build_items(work.documents(self.config.input), self.library, self.config)
        with work.progress("window") as advance:
            stats = run_generation(items, work.engine, work.writer, to_records=parsed_records, progress=advance)
        log.info("shard %s: %d windows (%d already done), %d records, %.1f windows/s, %.0f completion tokens/s",
                 work.shard, stats.items_total, stats.items_skipped_done, stats.records_written,
                 stats.items_generated / max(stats.seconds, 1e-9), stats.completion_tokens / max(stats.seconds, 1e-9))
        work.writer.flush()  # so the whole shard can be read back
        return {"windows": stats.items_total, "generated": stats.items_generated,
                "resumed_done": stats.items_skipped_done, "parse_errors": parse_errors(work.writer.path),
                "seconds": stats.seconds}

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        return (f"{counts.get('records', 0)} records from {counts.get('windows', 0)} text windows, "
                f"{sum(counts.get('parse_errors', {}).values())} that do not parse (kept, marked parse_error)")


def run_synth_generate(config: SynthGenerateConfig, shard: Shard, *, engine: Engine | None = None) -> dict[str, Any]:
    """One shard of ``mathsynth synth generate`` (see :mod:`runner.run`). ``engine``: one
    already built from ``config.engine``; by default the runner builds its own."""
    return run_stage(SynthGenerateStage(config), shard, engine=engine)
