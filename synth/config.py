"""The ``synth train`` config: supervised fine-tuning of the synthesizer on the distill SFT export.

Validated at start (one line naming the key on error). The JiuZhang3.0 synthesizer recipe is
the default: lr 1e-5 cosine without warm-up, weight decay 0.1, 5 epochs, 2048 tokens, bf16 on GPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from data.config_base import StrictConfig
from data.errors import ConfigError
from training.settings import TrainingSettings


class TrainData(StrictConfig):
    """The distill stage's SFT export: a distill output folder (its ``sft_<format>.jsonl`` is
    read) or one of those files directly."""

    path: str = Field(..., min_length=1)
    format: Literal["raw", "chat"] = Field("raw", description="raw: prompt/completion (the paper's synthesizer "
                                                              "is prompted raw); chat: messages, rendered with "
                                                              "the model's chat template")
    limit: int | None = Field(None, ge=1, description="train on the first N rows only")

    def file(self) -> Path:
        path = Path(self.path)
        return path / f"sft_{self.format}.jsonl" if path.is_dir() else path


class SynthTrainConfig(TrainingSettings):
    """The shared training settings (:class:`training.settings.TrainingSettings`), the SFT data,
    and the synthesizer recipe's defaults."""

    data: TrainData
    epochs: int = Field(5, ge=1)


def check_train_config(config: SynthTrainConfig) -> None:
    """What pydantic cannot see: the data file exists."""
    file = config.data.file()
    if not file.is_file():
        raise ConfigError(f"data.path: {file} not found (a distill output folder writes sft_{config.data.format}.jsonl "
                          f"when every shard is done)")
