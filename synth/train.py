"""``synth train``: fine-tune the synthesizer on the distill SFT export (prompt+text -> problem+solution).

One process or many (``accelerate launch``), the same code. Everything that decides what is
trained on is a pure function of the config: the packed rows (examples shuffled by ``seed``,
then packed), each epoch's row order (``seed``, epoch), and which rows each process takes at
each step. So a checkpoint needs only its step number for the data position; it also holds
model, optimizer, scheduler and every process's RNG (``accelerator.save_state``), and is
written to a temporary folder renamed when whole. A rerun after a kill resumes from the last
one and continues as if never stopped.

Loss: summed over target tokens, divided by the target tokens of the whole global batch
(per-device batch x processes x accumulation), so the gradient does not depend on how the
batch is split over processes.

The output folder is a stage output of one job (:class:`SynthTrainStage`) and, once sealed, an
ordinary HF checkpoint folder (model, tokenizer, model card). Its part file is the training
log, one record per logged step (``step-40``), so a resumed run never writes a step twice;
``batches.jsonl`` lists the rows of every step trained, a step redone after a resume included.
Under ``accelerate launch`` only process 0 runs the stage's life (lock, manifest, part file,
seal); it tells the others whether to train once the folder is checked and locked, and they
train beside it without touching any of those files.

    python -m synth train --config FILE.yaml
    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml -m synth train --config FILE.yaml
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from data.errors import ConfigError, InputError, OutputError
from data.records import stable_seed
from data.shards import Shard
from data.storage import (
    ShardWriter,
    StageOutput,
    atomic_write_json,
    atomic_write_text,
    describe_input,
    part_stem,
)
from runner.ownership import Whole
from runner.run import run_stage
from runner.stage import ShardWork, Stage
from synth.config import SynthTrainConfig, check_train_config
from synth.packing import (
    PackedRow,
    check_isolation,
    collate,
    pack,
    read_sft_rows,
    token_losses,
    tokenize_sft,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
BATCH_LOG = "batches.jsonl"
TRAIN_LOG = f"{part_stem(Shard(0, 1))}.jsonl"  # the stage's part file
ISOLATION_ATOL = 1e-3


# ---------------------------------------------------------------------------------------------
# Schedule


def lr_factor(step: int, total: int, config: SynthTrainConfig) -> float:
    """The learning rate at optimizer step ``step`` (0-based) as a fraction of the peak."""
    schedule = config.schedule
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


# ---------------------------------------------------------------------------------------------
# Data


def build_rows(config: SynthTrainConfig, tokenizer) -> tuple[list[PackedRow], dict[str, int]]:
    """The packed rows, identical on every process and every rerun."""
    examples = [tokenize_sft(tokenizer, i, prompt, target, config.max_length)
                for i, prompt, target in read_sft_rows(config.data.file(), config.data.format, config.data.limit)]
    random.Random(stable_seed(config.seed, "pack")).shuffle(examples)
    rows = pack(examples, config.max_length, packing=config.packing)
    stats = {"examples": len(examples), "rows": len(rows),
             "tokens": sum(len(r.input_ids) for r in rows), "target_tokens": sum(r.target_tokens for r in rows)}
    return rows, stats


def epoch_order(config: SynthTrainConfig, n_rows: int, epoch: int) -> list[int]:
    import torch

    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(stable_seed(config.seed, epoch, "order"))).tolist()


def step_rows(config: SynthTrainConfig, order: list[int], step_in_epoch: int, world: int) -> list[int]:
    """The global batch of step ``step_in_epoch``: micro-step m of process r takes the slice
    [(m * world + r) * B, +B)."""
    size = config.per_device_batch_size * world * config.gradient_accumulation_steps
    return order[step_in_epoch * size:(step_in_epoch + 1) * size]


def _rows_hash(rows: list[PackedRow]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row.input_ids).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Model


def _setup_model(config: SynthTrainConfig, device_is_cuda: bool):
    import torch

    from llm.loading import load_model

    # dtype auto on GPU: fp32 master weights under bf16 autocast (pure bf16 weights lose 1e-5 updates).
    weights = "bfloat16" if config.dtype == "bfloat16" else "float32"
    model = load_model(config.model, dtype=weights, device="cpu").train()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.lora is not None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(stable_seed(config.seed, "lora"))
        model = get_peft_model(model, LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                                                 lora_dropout=config.lora.dropout,
                                                 target_modules=list(config.lora.target_modules),
                                                 task_type="CAUSAL_LM"))
    return model


def _optimizer(model, config: SynthTrainConfig):
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)  # no decay on norms and biases
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.learning_rate, betas=config.adam_betas, eps=config.adam_eps)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _checkpoints(output: Path) -> list[Path]:
    folder = output / CHECKPOINTS
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(accelerator, output: Path, step: int, keep: int) -> None:
    final = output / CHECKPOINTS / f"step-{step:08d}"
    tmp = output / CHECKPOINTS / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, {"step": step, "processes": accelerator.num_processes})
        os.replace(tmp, final)  # whole or absent: the state file is in before the rename
        for old in _checkpoints(output)[: -max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# The stage


class SynthTrainStage(Stage):
    """One job (several processes come from accelerate, not from shards). ``accelerator``: the
    run's, given by :func:`run_train`; the stage object alone (no accelerator) is enough for
    ``summary``."""

    name = "synth-train"
    ownership = Whole()
    has_finish_step = True  # drops the resumable checkpoints (keep_checkpoints: 0) once the model is sealed

    def __init__(self, config: SynthTrainConfig, accelerator=None) -> None:
        super().__init__(config)
        self.accelerator = accelerator
        self.training_started = False

    def inputs(self) -> list[str]:
        return [self.config.model, self.config.data.path]

    def check(self) -> None:
        """The SFT file exists and every row of it parses (one line naming file and line)."""
        check_train_config(self.config)
        data = self.config.data
        if sum(1 for _ in read_sft_rows(data.file(), data.format, data.limit)) == 0:
            raise InputError(f"data.path: {data.file()} holds no examples")

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        self.training_started = True
        process_zero_decides(self.accelerator, TRAIN)
        data = _data_fingerprint(self.config)
        work.output.annotate_manifest({"inputs": [describe_input(self.config.model), data]})
        stats = train(self.config, self.accelerator, train_log=work.writer)
        atomic_write_text(self.output / "README.md", model_card(self.config, data, stats))
        work.output.annotate_manifest({"stats": stats})
        return stats

    def finish(self, output: StageOutput) -> dict[str, Any]:
        if self.config.keep_checkpoints == 0:
            shutil.rmtree(self.output / CHECKPOINTS, ignore_errors=True)
        return {}

    def summary(self, manifest: dict[str, Any]) -> str:
        stats = manifest.get("stats", {})
        loss = stats.get("final_loss")
        return (f"{stats.get('steps', 0)} steps on {stats.get('examples', 0)} examples "
                f"({stats.get('processes', 1)} processes), final loss {'?' if loss is None else f'{loss:.4f}'}")


TRAIN, STOP = "train", "stop"


def process_zero_decides(accelerator, decision: str | None = None) -> str:
    """Process 0 says whether to train (it holds the lock and the folder is checked) or to stop
    (the folder is sealed, or refused); every other process waits here for the word."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([decision], from_process=0)[0]


def run_train(config: SynthTrainConfig) -> dict[str, Any]:
    """Train (or resume, or do nothing if done). Returns the output's manifest on process 0;
    the other processes of an ``accelerate launch`` return an empty dict (one process owns the
    output)."""
    accelerator = make_accelerator(config)
    if not accelerator.is_main_process:
        if process_zero_decides(accelerator) == TRAIN:
            train(config, accelerator)
        accelerator.end_training()
        return {}
    stage = SynthTrainStage(config, accelerator)
    try:
        manifest = run_stage(stage, Shard(0, 1))
    finally:
        if not stage.training_started:  # sealed already, or refused: the others must not wait
            process_zero_decides(accelerator, STOP)
    accelerator.end_training()
    return manifest


def make_accelerator(config: SynthTrainConfig):
    import torch
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    mixed = "bf16" if (cuda and config.dtype == "auto") else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=not cuda,
                              gradient_accumulation_steps=config.gradient_accumulation_steps)
    if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed wants its micro-batch size; we have no dataloader
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.per_device_batch_size
    return accelerator


def train(config: SynthTrainConfig, accelerator, train_log: ShardWriter | None = None) -> dict[str, Any]:
    """The training run, on every process: resume from the last checkpoint, train to the end,
    save the model into ``config.output``. ``train_log``: the stage's part file, process 0 only.
    Returns the run's stats."""
    import torch
    from accelerate.utils import set_seed

    from llm.loading import load_tokenizer

    output = Path(config.output)
    world, rank = accelerator.num_processes, accelerator.process_index
    set_seed(stable_seed(config.seed, "init") % 2**32)

    tokenizer = load_tokenizer(config.model)
    rows, data_stats = build_rows(config, tokenizer)
    global_rows = config.per_device_batch_size * world * config.gradient_accumulation_steps
    steps_per_epoch = len(rows) // global_rows
    if steps_per_epoch == 0:
        raise InputError(f"data: {len(rows)} packed rows is less than one global batch ({global_rows} = "
                         f"per_device_batch_size x {world} processes x gradient_accumulation_steps)")
    total_steps = steps_per_epoch * config.epochs

    model = _setup_model(config, torch.cuda.is_available())
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, config))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us once per optimizer step

    if config.packing:
        gap = check_isolation(model, len(tokenizer))
        if gap > ISOLATION_ATOL:
            raise ConfigError(f"packing: this model lets packed examples attend to each other (logit gap {gap:.2g}); "
                              f"set packing: false")

    start_step = 0
    saved = _checkpoints(output)
    if saved:
        state = json.loads((saved[-1] / STATE_FILE).read_text())
        if state.get("processes", world) != world:  # the data position is a step of global batches
            raise OutputError(f"output: {saved[-1]} was saved by {state['processes']} processes; resume with the "
                              f"same number (this run has {world})")
        accelerator.load_state(str(saved[-1]))
        start_step = state["step"]
        log.info("resuming from %s (step %d of %d)", saved[-1], start_step, total_steps)
    if accelerator.is_main_process:
        for torn in (output / CHECKPOINTS).glob(".tmp-step-*"):  # a kill while saving leaves these
            shutil.rmtree(torn, ignore_errors=True)
        log.info("%d examples in %d rows of <= %d tokens; %d steps (%d epochs x %d), global batch %d rows "
                 "(%d per device x %d processes x %d accumulation)", data_stats["examples"], len(rows),
                 config.max_length, total_steps, config.epochs, steps_per_epoch, global_rows,
                 config.per_device_batch_size, world, config.gradient_accumulation_steps)

    device = accelerator.device
    B = config.per_device_batch_size
    losses, window_tokens, window_start = [], 0, time.monotonic()
    last_loss, order, order_epoch = None, [], -1
    model.train()
    for step in range(start_step, total_steps):
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(config, len(rows), epoch), epoch
        batch_rows = step_rows(config, order, in_epoch, world)
        global_targets = sum(rows[i].target_tokens for i in batch_rows)
        loss_sum = torch.zeros((), device=device)
        for micro in range(config.gradient_accumulation_steps):
            start = (micro * world + rank) * B
            batch = collate([rows[i] for i in batch_rows[start:start + B]], tokenizer.pad_token_id, device)
            # accumulate(): no gradient sync before the last micro-step; the wrapped optimizer
            # steps (and zeroes) only then. The same under DDP, FSDP and DeepSpeed.
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    token_loss, _ = token_losses(model, batch)
                # Data-parallel gradients are averaged over processes and accelerate divides the
                # loss by the accumulation steps; we want the sum over the global batch.
                loss = token_loss.sum() / max(1, global_targets) * world * config.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += token_loss.sum().detach()
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation out of step with optimizer steps")
        scheduler.step()

        step_loss = accelerator.reduce(loss_sum, "sum").item() / max(1, global_targets)
        last_loss = step_loss
        losses.append(step_loss)
        window_tokens += sum(len(rows[i].input_ids) for i in batch_rows)
        done = step + 1
        if train_log is not None:
            _append(output / BATCH_LOG, {"step": done, "epoch": epoch, "rows": batch_rows,
                                         "hash": _rows_hash([rows[i] for i in batch_rows])})
            if done % config.logging_steps == 0 or done == total_steps:
                seconds = time.monotonic() - window_start
                record = {"id": f"step-{done}", "step": done, "epoch": epoch, "loss": round(sum(losses) / len(losses), 6),
                          "lr": scheduler.get_last_lr()[0], "tokens_per_s": round(window_tokens / max(seconds, 1e-9), 1)}
                train_log.write(record)
                train_log.flush()
                log.info("step %d/%d  loss %.4f  lr %.3g  %.0f tokens/s", done, total_steps, record["loss"],
                         record["lr"], record["tokens_per_s"])
                losses, window_tokens, window_start = [], 0, time.monotonic()
        if done % config.save_steps == 0 and done < total_steps:
            _save_checkpoint(accelerator, output, done, config.keep_checkpoints)

    stats = {**data_stats, "steps": total_steps, "steps_per_epoch": steps_per_epoch, "global_batch_rows": global_rows,
             "processes": world, "final_loss": last_loss, "resumed_from_step": start_step or None}
    _save_model(accelerator, model, tokenizer, config)
    return stats


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _data_fingerprint(config: SynthTrainConfig) -> dict[str, Any]:
    file = config.data.file()
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    folder = Path(config.data.path)
    return {"file": str(file), "sha256": digest.hexdigest(),
            "source": describe_input(folder) if folder.is_dir() else None}


def _save_model(accelerator, model, tokenizer, config: SynthTrainConfig) -> None:
    """The trained model as an ordinary checkpoint folder (LoRA merged into the base) with its
    tokenizer, moved into ``output`` when whole. Every process takes part (FSDP/ZeRO gather)."""
    import torch

    output = Path(config.output)
    tmp = output / ".final-tmp"
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP/ZeRO shards; collective
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        if config.lora is not None:
            unwrapped.load_state_dict(state_dict)
            unwrapped.save_pretrained(tmp / "adapter")  # the delta alone, small, for inspection
            unwrapped = unwrapped.merge_and_unload()
            state_dict = None
        if accelerator.mixed_precision == "bf16":  # trained under bf16 autocast: save as bf16
            unwrapped = unwrapped.to(torch.bfloat16)
            state_dict = None
        unwrapped.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        for item in tmp.iterdir():
            if (output / item.name).is_dir():  # an adapter/ of an earlier attempt
                shutil.rmtree(output / item.name)
            os.replace(item, output / item.name)
        tmp.rmdir()
    accelerator.wait_for_everyone()


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
