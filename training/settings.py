"""The training settings every trainer shares (``synth train``, ``pretrain``); each stage's
config derives from :class:`TrainingSettings` and adds its data and its own defaults."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from data.config_base import StrictConfig, operational


class LoraSettings(StrictConfig):
    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1)


class Schedule(StrictConfig):
    """``cosine``: linear warm-up, cosine to ``min_lr_ratio``. ``wsd`` (warmup-stable-decay):
    linear warm-up, constant until ``decay_start`` of the steps, linear decay to ``min_lr_ratio``.
    ``constant``: warm-up then flat."""

    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    decay_start: float = Field(0.85, ge=0.0, le=1.0, description="wsd only: fraction of steps before decay")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="the floor, as a fraction of the peak")

    @model_validator(mode="after")
    def _order(self) -> Schedule:
        if self.kind == "wsd" and self.decay_start < self.warmup_ratio:
            raise ValueError(f"decay_start ({self.decay_start}) must not come before the end of warm-up "
                             f"({self.warmup_ratio})")
        return self


class TrainingSettings(StrictConfig):
    model: str = Field(..., min_length=1, description="base checkpoint: a local folder or a hub name")
    # Operational: where the folder lives does not change the model in it (a moved run resumes).
    output: str = operational(..., min_length=1, description="the result: an HF checkpoint folder (plus checkpoints/)")
    max_length: int = Field(2048, ge=8, description="tokens per packed row")
    packing: bool = Field(True, description="several examples per row, attention kept within each "
                                            "(checked on the model at start)")
    learning_rate: float = Field(1e-5, gt=0)
    schedule: Schedule = Field(default_factory=Schedule)
    weight_decay: float = Field(0.1, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    per_device_batch_size: int = Field(1, ge=1, description="rows per process per micro-step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: fp32 on CPU, bf16 on GPU")
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = Field(None, description="null: full fine-tuning; else LoRA, merged on save")
    seed: int = 0
    save_steps: int = operational(100, ge=1, description="a resumable checkpoint every N optimizer steps")
    keep_checkpoints: int = operational(1, ge=0, description="checkpoints kept; 0 removes them all once the run ends")
    logging_steps: int = operational(10, ge=1)
    report_to: Literal["none", "tensorboard", "wandb"] = operational(
        "none", description="accelerate trackers, written under <output>/runs (wandb offline unless WANDB_MODE says)")
    peak_tflops: float | None = operational(
        None, gt=0, description="per-device peak for MFU in the log; null: known GPUs detected, else no MFU")
