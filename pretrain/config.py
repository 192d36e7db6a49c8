"""The ``pretrain`` config: which datasets, how they are tokenized, mixed and ordered, and the
training settings (shared with ``synth train``). Defaults are the JiuZhang3.0 continued
pre-training recipe: lr 1e-5, warmup-stable-decay (warm-up 3%, flat until 85%, linear decay to
0.1x), weight decay 0, one pass, 2048-token packed rows, loss on solution tokens only.

One file configures both passes: ``tokenize`` (sharded, resumable; writes ``tokenized``) reads
the keys that decide the tokens (model's tokenizer, sources' paths, fields and loss); ``train``
reads all of it, so changing a weight, a phase or a learning rate needs no new tokenization.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from data.config_base import StrictConfig, operational
from training.settings import Schedule, TrainingSettings

Loss = Literal["auto", "all", "solution", "completion"]
Phase = Literal["auto", "pretrain", "sft"]


class Source(StrictConfig):
    """One dataset. Each row is one of: ``text`` (plain text, or a JiuZhang3.0
    ``## Question ... ## Solution`` text), ``prompt``/``completion``, or chat ``messages``
    ending with the assistant's answer. A distill output folder means its ``sft_raw.jsonl``."""

    paths: list[str] = Field(..., min_length=1, description="files, folders (stage outputs included) or globs")
    name: str | None = Field(None, min_length=1, description="for logs and the model card; default: the first path")
    weight: float = Field(1.0, gt=0, description="sampling weight: 2 = every row twice, 0.5 = half of the rows")
    phase: Phase = Field("auto", description="pretrain rows all come before sft rows; auto: text rows are "
                                             "pre-training, prompt/completion and messages rows are SFT")
    loss: Loss = Field("auto", description="tokens that carry loss. auto: a JiuZhang3.0 text its solution, "
                                           "other text all tokens, SFT rows the completion")
    text_field: str = "text"
    limit: int | None = Field(None, ge=1, description="only the first N rows of this source")
    policy: Literal["fail", "skip"] = operational("fail", description="a bad row stops the pass, or is counted and skipped")

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value

    @property
    def label(self) -> str:
        return self.name or self.paths[0]


class PretrainConfig(TrainingSettings):
    sources: list[Source] = Field(..., min_length=1)
    tokenized: str = operational(..., min_length=1, description="the tokenize pass's output folder (token arrays)")
    tokenizer: str | None = Field(None, description="tokenizer folder; default: the model's")
    tokenize_batch_rows: int = operational(512, ge=1, description="rows per tokenizer call and per resumable chunk")
    packing: bool = Field(True, description="documents packed into max_length rows, attention kept within each")
    shuffle: bool = Field(True, description="shuffle the rows of each phase (seed); the phases never mix")
    # The paper's continued pre-training recipe (jiuzhang3.md).
    learning_rate: float = Field(1e-5, gt=0)
    schedule: Schedule = Field(default_factory=lambda: Schedule(kind="wsd", warmup_ratio=0.03, decay_start=0.85,
                                                                min_lr_ratio=0.1))
    weight_decay: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _distinct_names(self) -> PretrainConfig:
        labels = [source.label for source in self.sources]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"sources: {repeated[0]!r} appears twice; give each source a distinct name")
        return self

    def tokenizer_path(self) -> str:
        return self.tokenizer or self.model

    def tokenize_config(self) -> dict[str, Any]:
        """What decides the token arrays: the tokenize pass's manifest config."""
        return {"tokenizer": self.tokenizer_path(),
                "sources": [source.model_dump(mode="json", include={"paths", "loss", "text_field", "limit"})
                            for source in self.sources]}

    def tokenized_folder(self) -> Path:
        return Path(self.tokenized)
