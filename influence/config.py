"""The ``influence`` config: one YAML file for warm-up, featurize and select.

Everything that changes a gradient (model, LoRA shape, sequence length, projection, checkpoint)
is validated here at start and later hashed into every feature file, so features computed
under different settings can never be compared by accident.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from data.config_base import StrictConfig, operational
from data.corpus import CorpusInput


class LoraSettings(StrictConfig):
    """The LESS recipe's LoRA (r=128, alpha=512 on the attention projections)."""

    r: int = Field(128, ge=1)
    alpha: float = Field(512.0, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="used in warm-up only; scoring runs with dropout off")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)


class CandidateInput(CorpusInput):
    """The candidate pool: a corpus, read as a stream."""

    pair_field: str | None = Field(
        None, description="a field holding what the synthesizer wrote from this text; when set, the "
                          "gradient is that of writing it given the text (loss on its tokens only)")


class WarmupSettings(StrictConfig):
    output: str = Field(..., description="folder for the per-epoch LoRA checkpoints")
    fraction: float = Field(0.05, gt=0.0, le=1.0, description="random share of the candidate pool to train on")
    max_examples: int | None = Field(None, ge=1)
    epochs: int = Field(4, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(8, ge=1)
    seed: int = 0


class ProjectionSettings(StrictConfig):
    """``sketch``: a sparse random projection (each gradient coordinate lands in ``nnz`` of ``dim``
    buckets with a random sign), drawn per module from ``seed`` and the module's name, so every
    worker rebuilds the same matrix without exchanging it. ``exact``: no projection."""

    kind: Literal["sketch", "exact"] = "sketch"
    dim: int = Field(8192, ge=1)
    seed: int = 0
    nnz: int = Field(1, ge=1, le=16, description="non-zeros per gradient coordinate")


class TargetSet(StrictConfig):
    """A downstream dataset the selection should help: a shipped train split (``benchmark``:
    gsm8k_train, math_train, ...) or a JSONL file with a prompt and a completion field."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    benchmark: str | None = None
    path: str | None = None
    prompt_field: str = "question"
    completion_field: str = "solution"
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> TargetSet:
        if (self.benchmark is None) == (self.path is None):
            raise ValueError("give exactly one of benchmark or path")
        return self


def _default_targets() -> list[TargetSet]:
    return [TargetSet(name="gsm8k", benchmark="gsm8k_train"), TargetSet(name="math", benchmark="math_train")]


class FeaturizeSettings(StrictConfig):
    output: str = Field(..., description="folder for target and candidate features")
    checkpoints: list[int] | None = Field(None, description="warm-up epochs to use (default: all)")
    projection: ProjectionSettings = Field(default_factory=ProjectionSettings)
    batch_size: int = operational(16, ge=1, description="examples per forward and backward")
    chunk_size: int = Field(1024, ge=1, description="candidate rows per chunk: the unit of resume and of "
                                                    "Slurm sharding (chunk j goes to shard j mod N)")
    store_dtype: Literal["float16", "float32"] = "float16"


class DedupSettings(StrictConfig):
    threshold: float | None = Field(0.95, gt=0.0, le=1.0, description="gradient-feature cosine; null turns it off")


class DiversitySettings(StrictConfig):
    clusters: int = Field(0, ge=0, description="k-means clusters with quotas proportional to their size; 0 is off")
    seed: int = 0


class SelectSettings(StrictConfig):
    output: str = Field(..., description="the selection: a stage output the distill stage reads as its corpus")
    target_features: str | None = Field(None, description="a featurize.output whose target features to use "
                                                          "(default: this config's featurize.output)")
    source_field: str = Field("source", description="candidate field naming its source, for the bias report "
                                                    "(falls back to the file name)")
    top_k: int | None = Field(None, ge=1)
    top_fraction: float | None = Field(None, gt=0.0, le=1.0)
    aggregate: Literal["max", "mean"] = "max"
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    diversity: DiversitySettings = Field(default_factory=DiversitySettings)
    pool_factor: float = Field(2.0, ge=1.0, description="dedup and diversity pick from this many times the "
                                                        "selection size of top-scored candidates")

    @model_validator(mode="after")
    def _one_size(self) -> SelectSettings:
        if (self.top_k is None) == (self.top_fraction is None):
            raise ValueError("give exactly one of top_k or top_fraction")
        return self


class InfluenceConfig(StrictConfig):
    model: str = Field(..., description="the scoring model: a local checkpoint folder (a small proxy is fine)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = operational("auto")
    max_length: int = Field(512, ge=8, description="tokens per example; longer texts are cut")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    candidates: CandidateInput
    targets: list[TargetSet] = Field(default_factory=_default_targets, min_length=1)
    warmup: WarmupSettings
    featurize: FeaturizeSettings
    select: SelectSettings

    @model_validator(mode="after")
    def _unique_targets(self) -> InfluenceConfig:
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be unique; got {names}")
        return self
