"""``mathsynth generate``: template -> engine -> outputs with provenance, over a corpus.

The generic run that synth, distill and eval specialise. One process runs one shard:
``--shard I/N`` or the Slurm array variables pick which.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator, Literal

from pydantic import Field, model_validator

from data.config_base import StrictConfig
from data.corpus import CorpusInput
from data.errors import ConfigError
from data.records import Document, content_id
from data.shards import Shard
from llm.config import EngineConfig
from llm.generation_run import WorkItem, derive_seed, run_generation
from llm.types import GenerationRequest, SamplingParams
from runner.run import run_stage
from runner.stage import CorpusStage, ShardWork

log = logging.getLogger(__name__)


class PromptConfig(StrictConfig):
    """A Jinja template (``{{ text }}``, ``{{ id }}``, ``{{ meta.x }}``); Jinja rather than
    str.format because math prompts are full of literal braces (``\\boxed{}``)."""

    template: str | None = None
    template_file: str | None = None
    format: Literal["raw", "chat"] = "raw"
    system: str | None = Field(None, description="system message, chat format only")
    window_chars: int | None = Field(1000, ge=1, description="the text is cut to its first N characters")
    id: str | None = Field(None, description="recorded in every output; default: a hash of the template")

    @model_validator(mode="after")
    def _exactly_one_template(self):
        if (self.template is None) == (self.template_file is None):
            raise ValueError("give exactly one of template or template_file")
        return self


class GenerateConfig(StrictConfig):
    input: CorpusInput
    prompt: PromptConfig
    engine: EngineConfig
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    output: str = Field(..., min_length=1)
    keep_prompt: bool = Field(True, description="store the rendered prompt in each record")


class PromptRenderer:
    def __init__(self, config: PromptConfig, base_dir: Path | None = None) -> None:
        import jinja2

        source = config.template
        if source is None:
            path = Path(config.template_file)
            if not path.is_absolute() and base_dir is not None and not path.exists():
                path = base_dir / path
            if not path.is_file():
                raise ConfigError(f"prompt.template_file: {config.template_file} not found")
            source = path.read_text(encoding="utf-8")
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise ConfigError(f"prompt.template: line {err.lineno}: {err.message}") from None
        self.config = config
        self.prompt_id = config.id or content_id(source, config.format, config.system, config.window_chars)

    def window(self, text: str) -> str:
        limit = self.config.window_chars
        return text if limit is None else text[:limit]

    def render(self, doc: Document) -> str:
        import jinja2

        try:
            return self.template.render(text=self.window(doc.text), id=doc.id, meta=doc.meta)
        except jinja2.UndefinedError as err:
            raise ConfigError(f"prompt.template: {err.message} (document {doc.location or doc.id})") from None

    def request(self, key: str, doc: Document, sampling: SamplingParams) -> GenerationRequest:
        body = self.render(doc)
        if self.config.format == "raw":
            return GenerationRequest(id=key, sampling=sampling, prompt=body)
        messages = ({"role": "system", "content": self.config.system},) if self.config.system else ()
        return GenerationRequest(id=key, sampling=sampling, messages=messages + ({"role": "user", "content": body},))


def build_items(
    docs: Iterable[Document], renderer: PromptRenderer, sampling: SamplingParams, keep_prompt: bool
) -> Iterator[WorkItem]:
    for doc in docs:
        key = content_id(doc.id, renderer.prompt_id)
        request = renderer.request(key, doc, sampling.with_seed(derive_seed(sampling.seed, key)))
        provenance = {
            "input_id": doc.id,
            "prompt_id": renderer.prompt_id,
            "window": [0, len(renderer.window(doc.text))],
        }
        if keep_prompt:
            provenance["prompt"] = request.prompt if request.prompt is not None else list(request.messages)
        yield WorkItem(request=request, provenance=provenance)


class GenerateStage(CorpusStage):
    """Template -> engine -> one record per completion, documents owned by record."""

    name = "generate"

    def __init__(self, config: GenerateConfig, config_dir: Path | None = None) -> None:
        super().__init__(config)
        self.renderer = PromptRenderer(config.prompt, base_dir=config_dir)  # a bad template fails here

    def run_shard(self, work: ShardWork) -> dict:
        config = self.config
        items = build_items(work.documents(config.input), self.renderer, config.sampling, config.keep_prompt)
        with work.progress("doc") as advance:
            stats = run_generation(items, work.engine, work.writer, progress=advance)
        log.info("shard %s: %d docs (%d already done), %d records, %.1f docs/s, %.0f completion tokens/s",
                 work.shard, stats.items_total, stats.items_skipped_done, stats.records_written,
                 stats.items_generated / max(stats.seconds, 1e-9), stats.completion_tokens / max(stats.seconds, 1e-9))
        return {"documents": stats.items_total, "generated": stats.items_generated,
                "resumed_done": stats.items_skipped_done, "seconds": stats.seconds}

    def summary(self, manifest: dict) -> str:
        counts = manifest.get("counts", {})
        return f"{counts.get('records', 0)} records from {counts.get('documents', 0)} documents"


def run_generate(config: GenerateConfig, shard: Shard, *, config_dir: Path | None = None, engine=None) -> dict:
    """One shard of ``mathsynth generate`` (see :mod:`runner.run`). ``engine``: one already
    built from ``config.engine`` (benchmarks and the demo reuse one across runs)."""
    return run_stage(GenerateStage(config, config_dir), shard, engine=engine)
