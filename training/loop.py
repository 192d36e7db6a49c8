"""The training loop every trainer shares: one process or many (``accelerate launch``: DDP,
FSDP or DeepSpeed), the same code on CPU and GPU.

What is trained on comes from a :class:`TrainingData`: the rows of each optimizer step as a
pure function of the config, so a checkpoint needs only its step number for the data position
and a resumed run continues as if never stopped. Micro-step m of process r takes the slice
[(m x world + r) x B, +B) of the step's rows.

Loss: summed over target tokens, divided by the target tokens of the whole global batch
(per-device batch x processes x accumulation), so the gradient does not depend on how the
batch is split over processes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from data.errors import ConfigError, InputError
from data.records import stable_seed
from data.storage import ShardWriter
from training.checkpoints import resume_step, save_checkpoint
from training.model import build_optimizer, load_for_training, save_trained_model
from training.rows import PackedRow, check_isolation, collate, token_losses
from training.settings import TrainingSettings
from training.throughput import detect_peak_tflops, flops_per_token, mfu

log = logging.getLogger(__name__)

BATCH_LOG = "batches.jsonl"
ISOLATION_ATOL = 1e-3


class TrainingData(Protocol):
    """The rows a run trains on, in order. ``stats`` goes into the manifest and model card."""

    total_steps: int
    stats: dict[str, Any]

    def step_rows(self, step: int) -> list[int]: ...

    def row(self, index: int) -> PackedRow: ...

    def row_target_tokens(self, index: int) -> int: ...

    def epoch(self, step: int) -> int: ...


def global_batch_rows(settings: TrainingSettings, world: int) -> int:
    return settings.per_device_batch_size * world * settings.gradient_accumulation_steps


def steps_for(rows: int, settings: TrainingSettings, world: int) -> int:
    """Whole global batches in ``rows`` (the remainder is not trained on); refuses zero."""
    size = global_batch_rows(settings, world)
    if rows // size == 0:
        raise InputError(f"data: {rows} packed rows is less than one global batch ({size} = "
                         f"per_device_batch_size x {world} processes x gradient_accumulation_steps)")
    return rows // size


def lr_factor(step: int, total: int, settings: TrainingSettings) -> float:
    """The learning rate at optimizer step ``step`` (0-based) as a fraction of the peak."""
    schedule = settings.schedule
    warmup = math.ceil(schedule.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    floor = schedule.min_lr_ratio
    if schedule.kind == "constant":
        return 1.0
    if schedule.kind == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_from = max(warmup, math.floor(schedule.decay_start * total))
    if step < decay_from:
        return 1.0
    progress = (step - decay_from + 1) / max(1, total - decay_from)
    return 1.0 - (1.0 - floor) * min(1.0, progress)


def rows_hash(rows: list[PackedRow]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(np.asarray(row.input_ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def train_model(settings: TrainingSettings, accelerator, data: TrainingData, tokenizer,
                train_log: ShardWriter | None = None) -> dict[str, Any]:
    """Resume from the last checkpoint, train to the end, save the model into ``settings.output``.
    Runs on every process; ``train_log`` (the stage's part file) is process 0's only. Returns
    the run's stats."""
    import torch
    from accelerate.utils import set_seed

    output = Path(settings.output)
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(stable_seed(settings.seed, "init") % 2**32)
    total_steps = data.total_steps

    model = load_for_training(settings)
    flops = flops_per_token(model, settings.max_length)
    peak = settings.peak_tflops or detect_peak_tflops()
    optimizer = build_optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, settings))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimizer step

    if settings.packing:
        gap = check_isolation(model, len(tokenizer))
        if gap > ISOLATION_ATOL:
            raise ConfigError(f"packing: this model lets packed examples attend to each other (logit gap {gap:.2g}); "
                              f"set packing: false")

    start_step = resume_step(accelerator, output, total_steps)
    if settings.report_to != "none":
        accelerator.init_trackers(getattr(accelerator, "tracker_project", "mathsynth"),
                                  config=flat_hyperparameters(settings.model_dump(mode="json")))
    if accelerator.is_main_process:
        log.info("%s; %d steps, global batch %d rows (%d per device x %d processes x %d accumulation)",
                 ", ".join(f"{k} {v}" for k, v in data.stats.items()), total_steps,
                 global_batch_rows(settings, world), settings.per_device_batch_size, world,
                 settings.gradient_accumulation_steps)

    device = accelerator.device
    B = settings.per_device_batch_size
    window = _Window()
    last_loss = None
    model.train()
    for step in range(start_step, total_steps):
        step_started = time.perf_counter()
        batch_rows = data.step_rows(step)
        global_targets = sum(data.row_target_tokens(i) for i in batch_rows)
        micro_batches, local_rows = [], []
        for micro in range(settings.gradient_accumulation_steps):
            start = (micro * world + rank) * B
            rows = [data.row(i) for i in batch_rows[start:start + B]]
            local_rows.extend(rows)
            micro_batches.append(collate(rows, tokenizer.pad_token_id, device))
        window.data_seconds += time.perf_counter() - step_started
        loss_sum = torch.zeros((), device=device)
        for batch in micro_batches:
            # accumulate(): no gradient sync before the last micro-step; the wrapped optimizer
            # steps (and zeroes) only then. The same under DDP, FSDP and DeepSpeed.
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    token_loss, _ = token_losses(model, batch)
                # Data-parallel gradients are averaged over processes and accelerate divides the
                # loss by the accumulation steps; we want the sum over the global batch.
                loss = token_loss.sum() / max(1, global_targets) * world * settings.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += token_loss.sum().detach()
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation out of step with optimizer steps")
        scheduler.step()

        local_tokens = float(sum(len(r.input_ids) for r in local_rows))
        summed = accelerator.reduce(torch.stack([loss_sum, torch.tensor(local_tokens, device=device)]), "sum").tolist()
        step_loss = summed[0] / max(1, global_targets)
        last_loss = step_loss
        window.add(step_loss, int(summed[1]), time.perf_counter() - step_started)
        done = step + 1
        if train_log is not None:
            _append(output / BATCH_LOG, {"step": done, "epoch": data.epoch(step), "rows": batch_rows,
                                         "hash": rows_hash([data.row(i) for i in batch_rows])})
        if done % settings.logging_steps == 0 or done == total_steps:
            record = window.record(done, data.epoch(step), scheduler.get_last_lr()[0], flops, peak, world)
            if train_log is not None:
                train_log.write(record)
                train_log.flush()
                log.info("step %d/%d  loss %.4f  lr %.3g  %.0f tokens/s  MFU %s  data %.1f%%", done, total_steps,
                         record["loss"], record["lr"], record["tokens_per_s"],
                         "n/a" if record["mfu"] is None else f"{100 * record['mfu']:.1f}%", 100 * record["data_fraction"])
            accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=done)
            window = _Window()
        if done % settings.save_steps == 0 and done < total_steps:
            save_checkpoint(accelerator, output, done, settings.keep_checkpoints)

    save_trained_model(accelerator, model, tokenizer, settings)
    return {**data.stats, "steps": total_steps, "global_batch_rows": global_batch_rows(settings, world),
            "processes": world, "distributed": str(accelerator.distributed_type.value), "final_loss": last_loss,
            "resumed_from_step": start_step or None}


def flat_hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Trackers take scalar hyperparameters only."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_hyperparameters(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class _Window:
    """What happened since the last log line."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.tokens = 0
        self.seconds = 0.0
        self.data_seconds = 0.0

    def add(self, loss: float, tokens: int, seconds: float) -> None:
        self.losses.append(loss)
        self.tokens += tokens
        self.seconds += seconds

    def record(self, step: int, epoch: int, lr: float, flops: float, peak: float | None, world: int) -> dict[str, Any]:
        tokens_per_s = self.tokens / max(self.seconds, 1e-9)
        used = mfu(tokens_per_s, flops, peak, world)
        return {"id": f"step-{step}", "step": step, "epoch": epoch,
                "loss": round(sum(self.losses) / len(self.losses), 6), "lr": lr,
                "tokens_per_s": round(tokens_per_s, 1), "mfu": None if used is None else round(used, 4),
                "data_fraction": round(self.data_seconds / max(self.seconds, 1e-9), 4)}


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
