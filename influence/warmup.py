"""Warm-up: LoRA trained for a few epochs on a random share of the candidate pool (the LESS recipe).

Each epoch ends in a checkpoint (LoRA weights, Adam moments keyed by parameter name, the
epoch's average learning rate); featurize scores candidates at every one of them.

Everything that shapes the result is a pure function of the config: which documents are
sampled (a hash of seed and doc id), the LoRA init (seeded), each epoch's data order and
dropout masks (seeded from seed and epoch) and the learning rate at each step. That is what
makes resume exact: a rerun loads the last saved epoch's weights and Adam state, moves the
schedule to its step, and goes on as if it had never stopped. A kill mid-epoch loses only
that epoch's progress, since a checkpoint is written whole or not at all.

The folder is a stage output of one job (:class:`WarmupStage`): ``epoch-<e>/`` checkpoints, and a
part file with one record per saved epoch (``epoch-3``: its loss and average learning rate),
written after the checkpoint. A checkpoint whose record is missing (a kill in between) gets
one on the rerun, its loss unknown (None).
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data.corpus import CorpusStats, read_corpus, resolve_sources
from data.errors import ConfigError, InputError, OutputError
from data.jsonl import iter_json_objects
from data.progress import progress_bar
from data.records import Document, stable_seed, stable_uniform
from data.shards import Shard
from influence.config import InfluenceConfig, WarmupSettings
from influence.examples import TokenizedExample, candidate_example, collate
from influence.gradients import per_example_losses
from influence.lora import (
    WARMUP_STAGE,
    Checkpoint,
    attach_lora,
    list_checkpoints,
    load_checkpoint,
    lora_parameters,
    save_checkpoint,
)
from runner.ownership import Whole
from runner.run import run_stage
from runner.stage import ShardWork, Stage

log = logging.getLogger(__name__)

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


# ---------------------------------------------------------------------------------------------
# What is trained on


def warmup_sample(config: InfluenceConfig, *, stats: CorpusStats | None = None) -> Iterator[Document]:
    """The candidates trained on: each kept with probability ``warmup.fraction``, decided by a
    hash of (seed, doc id) alone, so the sample never depends on order, sharding or machine.
    The pool is streamed, never loaded whole."""
    settings = config.warmup
    kept = 0
    for doc in read_corpus(config.candidates, Shard(0, 1), stats):
        if stable_uniform(settings.seed, doc.id) < settings.fraction:
            yield doc
            kept += 1
            if kept == settings.max_examples:
                return


def warmup_examples(config: InfluenceConfig, tokenizer, *, stats: CorpusStats | None = None) -> list[TokenizedExample]:
    """The sample tokenized as influence scores it (see ``candidate_example``)."""
    stats = stats if stats is not None else CorpusStats()
    examples = (candidate_example(doc, config, tokenizer, stats) for doc in warmup_sample(config, stats=stats))
    return [example for example in examples if example is not None]


# ---------------------------------------------------------------------------------------------
# How it is trained


def warmup_steps(settings: WarmupSettings, total_steps: int) -> int:
    """Steps of linear warm-up (rounded up, as transformers does)."""
    return math.ceil(settings.warmup_ratio * total_steps)


def learning_rate_factor(step: int, *, total_steps: int, warmup: int) -> float:
    """Linear warm-up to the peak over ``warmup`` steps, then linear decay to 0 at ``total_steps``."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def epoch_order(config: InfluenceConfig, n: int, epoch: int) -> list[int]:
    """Example positions in the order epoch ``epoch`` (1-based) visits them."""
    import torch

    generator = torch.Generator().manual_seed(stable_seed(config.warmup.seed, epoch, "order"))
    return torch.randperm(n, generator=generator).tolist()


def _restore_adam(optimizer, model, checkpoint: Checkpoint) -> None:
    """Put a checkpoint's weights into the model and its Adam moments into the optimizer."""
    import torch

    state = load_checkpoint(model, checkpoint)
    if state.betas != ADAM_BETAS or state.eps != ADAM_EPS:
        raise OutputError(f"{checkpoint.folder}: saved with Adam betas {state.betas}, eps {state.eps}; "
                          f"expected {ADAM_BETAS}, {ADAM_EPS}")
    for name, p in lora_parameters(model):
        optimizer.state[p] = {
            "step": torch.tensor(float(state.step)),
            "exp_avg": state.exp_avg[name].to(p.device, p.dtype),
            "exp_avg_sq": state.exp_avg_sq[name].to(p.device, p.dtype),
        }


def _saved_checkpoints(folder: Path, epochs: int) -> list[Checkpoint]:
    try:
        saved = list_checkpoints(folder)
    except InputError:  # none saved yet
        return []
    numbers = [c.epoch for c in saved]
    if numbers != list(range(1, len(numbers) + 1)) or len(numbers) > epochs:
        raise OutputError(f"{folder}: holds checkpoints for epochs {numbers}, expected 1..k with k <= {epochs}; "
                          f"remove the stray ones or use a new warmup.output")
    return saved


class WarmupStage(Stage):
    """One job: the epochs not saved yet, each ending in a checkpoint and its record."""

    name = WARMUP_STAGE
    ownership = Whole()

    @property
    def output(self) -> Path:
        return Path(self.config.warmup.output)

    def inputs(self) -> list[str]:
        return list(self.config.candidates.paths)

    def check(self) -> None:
        resolve_sources(self.config.candidates.paths)

    def manifest_config(self) -> dict[str, Any]:
        # What the checkpoints depend on: targets, featurize and select may change without
        # invalidating a warm-up.
        return self.config.model_dump(mode="json", include={"model", "dtype", "max_length", "lora", "candidates",
                                                             "warmup"})

    def operational_keys(self) -> list[str]:
        # Where the folder lives does not change what is in it: a moved warm-up is still the same one.
        return [*super().operational_keys(), "warmup.output"]

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        from llm.loading import load_tokenizer

        config, settings = self.config, self.config.warmup
        saved = _saved_checkpoints(self.output, settings.epochs)
        corpus = CorpusStats()
        tokenizer = load_tokenizer(config.model)
        examples = warmup_examples(config, tokenizer, stats=corpus)
        if not examples:
            raise ConfigError(f"warmup.fraction {settings.fraction}: no candidate was sampled "
                              f"({corpus.summary()}); raise it or add candidates")
        steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
        if saved and saved[-1].step != saved[-1].epoch * steps_per_epoch:
            raise OutputError(f"{saved[-1].folder}: saved at step {saved[-1].step}, expected "
                              f"{saved[-1].epoch * steps_per_epoch}; was the candidate pool changed? use a new "
                              "warmup.output")
        work.writer.flush()
        records = {row["epoch"]: row for _, row in iter_json_objects(work.writer.path)}

        def record(epoch: int, loss: float | None, average_lr: float) -> None:
            records.setdefault(epoch, {"id": f"epoch-{epoch}", "epoch": epoch, "step": epoch * steps_per_epoch,
                                       "loss": loss, "average_lr": average_lr})
            work.writer.write(records[epoch])
            work.writer.flush()
            done = [records[e] for e in sorted(records)]
            work.output.annotate_manifest({"warmup": {
                "examples": len(examples), "steps_per_epoch": steps_per_epoch, "epochs_done": len(done),
                "loss_per_epoch": [r["loss"] for r in done], "average_lr_per_epoch": [r["average_lr"] for r in done],
                "corpus": corpus.as_dict()}})

        for checkpoint in saved:  # one a kill left unrecorded gets its record, its loss lost
            record(checkpoint.epoch, None, checkpoint.average_lr)
        if len(saved) < settings.epochs:
            train_epochs(config, examples, tokenizer, saved, on_epoch=record)
        else:
            log.info("%s: all %d warm-up epochs saved; nothing to train", self.output, settings.epochs)
        return {"examples": len(examples), "epochs": settings.epochs, "steps_per_epoch": steps_per_epoch}

    def summary(self, manifest: dict[str, Any]) -> str:
        facts = manifest.get("warmup", {})
        losses = ", ".join("?" if loss is None else f"{loss:.4f}" for loss in facts.get("loss_per_epoch", []))
        return (f"{facts.get('epochs_done', 0)} of {manifest.get('config', {}).get('warmup', {}).get('epochs', '?')} "
                f"epochs on {facts.get('examples', 0)} examples; loss per epoch: {losses or 'none yet'}")


def run_warmup(config: InfluenceConfig) -> dict[str, Any]:
    """Train (or finish training) the warm-up LoRA; returns the folder's manifest."""
    return run_stage(WarmupStage(config), Shard(0, 1))


def train_epochs(config: InfluenceConfig, examples: list[TokenizedExample], tokenizer, saved: list[Checkpoint],
                 on_epoch: Callable[[int, float, float], None]) -> None:
    """Train the epochs after ``saved`` (resuming from the last one), saving a checkpoint at the
    end of each; ``on_epoch(epoch, loss, average_lr)`` is called once it is saved."""
    import torch

    from llm.loading import load_model

    settings = config.warmup
    folder = Path(settings.output)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup = warmup_steps(settings, total_steps)

    model = load_model(config.model, dtype=config.dtype, device=config.device)
    torch.manual_seed(settings.seed)  # the LoRA init
    model = attach_lora(model, config.lora, for_training=True)
    device = next(model.parameters()).device
    params = [p for _, p in lora_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS,
                                  weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps=total_steps, warmup=warmup))

    if saved:
        last = saved[-1]
        _restore_adam(optimizer, model, last)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(last.step):
                scheduler.step()
        log.info("%s: resuming after epoch %d (step %d)", folder, last.epoch, last.step)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for epoch in range(len(saved) + 1, settings.epochs + 1):
        torch.manual_seed(stable_seed(settings.seed, epoch, "dropout"))
        order = epoch_order(config, len(examples), epoch)
        started = time.monotonic()
        loss_sum, lr_sum = 0.0, 0.0
        with progress_bar(f"warm-up epoch {epoch}/{settings.epochs}", total=len(examples), unit="example") as advance:
            for start in range(0, len(order), settings.batch_size):
                batch = [examples[i] for i in order[start:start + settings.batch_size]]
                input_ids, attention_mask, scored = collate(batch, pad_id, device=str(device))
                loss = per_example_losses(model, input_ids, attention_mask, scored).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr_sum += optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(batch)
                advance(len(batch))
        seconds = time.monotonic() - started
        loss, average_lr = loss_sum / len(examples), lr_sum / steps_per_epoch  # each example counted once
        save_checkpoint(folder, epoch=epoch, model=model, optimizer=optimizer, average_lr=average_lr)
        log.info("warm-up epoch %d/%d: loss %.4f, %.1f examples/s, average lr %.3g", epoch, settings.epochs,
                 loss, len(examples) / max(seconds, 1e-9), average_lr)
        on_epoch(epoch, loss, average_lr)
