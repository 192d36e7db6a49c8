"""``synth train``: fine-tune the synthesizer on the distill SFT export (prompt+text -> problem+solution).

The training itself is the shared core's (:mod:`training.loop`: accelerate, resume, checkpoints,
logging); this module says what the synthesizer trains on: the SFT examples, shuffled by
``seed`` and packed once, then each epoch's rows in an order drawn from (``seed``, epoch).
Everything is a pure function of the config, so a resumed run continues as if never stopped.

    python -m synth train --config FILE.yaml
    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml -m synth train --config FILE.yaml
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import yaml

from data.errors import InputError
from data.records import stable_seed
from data.storage import ShardWriter, describe_input
from synth.config import SynthTrainConfig, check_train_config
from synth.packing import PackedRow, pack, read_sft_rows, tokenize_sft
from training.loop import (
    BATCH_LOG,
    global_batch_rows,
    lr_factor,
    steps_for,
    train_model,
)
from training.stage import TRAIN_LOG, TrainingStage, make_accelerator, run_training

__all__ = ["BATCH_LOG", "TRAIN_LOG", "SynthTrainStage", "build_rows", "lr_factor", "run_train"]

log = logging.getLogger(__name__)


def build_rows(config: SynthTrainConfig, tokenizer) -> tuple[list[PackedRow], dict[str, int]]:
    """The packed rows, identical on every process and every rerun."""
    examples = [tokenize_sft(tokenizer, i, prompt, target, config.max_length)
                for i, prompt, target in read_sft_rows(config.data.file(), config.data.format, config.data.limit)]
    random.Random(stable_seed(config.seed, "pack")).shuffle(examples)
    rows = pack(examples, config.max_length, packing=config.packing)
    stats = {"examples": len(examples), "rows": len(rows),
             "tokens": sum(len(r.input_ids) for r in rows), "target_tokens": sum(r.target_tokens for r in rows)}
    return rows, stats


class EpochShuffledRows:
    """The synthesizer's data for :func:`training.loop.train_model`: every epoch all packed rows
    (whole global batches), in an order drawn from (seed, epoch)."""

    def __init__(self, config: SynthTrainConfig, rows: list[PackedRow], stats: dict[str, Any], world: int) -> None:
        self.config, self.rows = config, rows
        self.batch = global_batch_rows(config, world)
        self.steps_per_epoch = steps_for(len(rows), config, world)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.stats = {**stats, "steps_per_epoch": self.steps_per_epoch}
        self._targets = [row.target_tokens for row in rows]
        self._order: list[int] = []
        self._order_epoch = -1

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    def step_rows(self, step: int) -> list[int]:
        import torch

        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            seed = stable_seed(self.config.seed, epoch, "order")
            self._order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(seed)).tolist()
            self._order_epoch = epoch
        return self._order[in_epoch * self.batch:(in_epoch + 1) * self.batch]

    def row(self, index: int) -> PackedRow:
        return self.rows[index]

    def row_target_tokens(self, index: int) -> int:
        return self._targets[index]


class SynthTrainStage(TrainingStage):
    name = "synth-train"

    def inputs(self) -> list[str]:
        return [self.config.model, self.config.data.path]

    def check(self) -> None:
        """The SFT file exists and every row of it parses (one line naming file and line)."""
        check_train_config(self.config)
        data = self.config.data
        if sum(1 for _ in read_sft_rows(data.file(), data.format, data.limit)) == 0:
            raise InputError(f"data.path: {data.file()} holds no examples")

    def input_facts(self) -> list[dict[str, Any]]:
        return [describe_input(self.config.model), _data_fingerprint(self.config)]

    def train(self, train_log: ShardWriter | None) -> dict[str, Any]:
        from llm.loading import load_tokenizer

        tokenizer = load_tokenizer(self.config.model)
        rows, stats = build_rows(self.config, tokenizer)
        data = EpochShuffledRows(self.config, rows, stats, self.accelerator.num_processes)
        return train_model(self.config, self.accelerator, data, tokenizer, train_log)

    def model_card(self, stats: dict[str, Any]) -> str:
        return model_card(self.config, _data_fingerprint(self.config), stats)

    def summary(self, manifest: dict[str, Any]) -> str:
        stats = manifest.get("stats", {})
        loss = stats.get("final_loss")
        return (f"{stats.get('steps', 0)} steps on {stats.get('examples', 0)} examples "
                f"({stats.get('processes', 1)} processes), final loss {'?' if loss is None else f'{loss:.4f}'}")


def run_train(config: SynthTrainConfig) -> dict[str, Any]:
    """Train (or resume, or do nothing if done). Returns the output's manifest on process 0;
    the other processes of an ``accelerate launch`` return an empty dict."""
    return run_training(SynthTrainStage(config, make_accelerator(config, "synth-train")))


def _data_fingerprint(config: SynthTrainConfig) -> dict[str, Any]:
    file = config.data.file()
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    folder = Path(config.data.path)
    return {"file": str(file), "sha256": digest.hexdigest(),
            "source": describe_input(folder) if folder.is_dir() else None}


def model_card(config: SynthTrainConfig, data: dict, stats: dict) -> str:
    how = "full fine-tuning" if config.lora is None else f"LoRA r={config.lora.r} (merged into the base weights)"
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [mathsynth, synthesizer]\n---\n\n"
        "# mathsynth synthesizer\n\n"
        f"Fine-tuned from `{config.model}` by `mathsynth synth train` ({how}) to write a math problem and its "
        "solution from an education-stage prompt holding a source text (JiuZhang3.0 style). "
        f"Prompt it {'raw, without a chat template' if config.data.format == 'raw' else 'with its chat template'}.\n\n"
        "## Data\n\n"
        f"- file: `{data['file']}`\n- sha256: `{data['sha256']}`\n"
        f"- source: `{json.dumps(data['source'])}`\n"
        f"- examples: {stats['examples']}, packed rows: {stats['rows']}, tokens: {stats['tokens']}, "
        f"target tokens: {stats['target_tokens']}\n\n"
        "## Training\n\n"
        f"- steps: {stats['steps']}, global batch: {stats['global_batch_rows']} rows of <= {config.max_length} tokens, "
        f"processes: {stats['processes']}\n- final loss: {stats['final_loss']}\n\n"
        "## Config\n\n```yaml\n" + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False) + "```\n"
    )
