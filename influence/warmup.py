"""Warm-up: LoRA trained for a few epochs on a random share of the candidate pool (the LESS recipe).

Each epoch ends in a checkpoint (LoRA weights, Adam moments keyed by parameter name, the
epoch's average learning rate); featurize scores candidates at every one of them.

Everything that shapes the result is a pure function of the config: which documents are
sampled (a hash of seed and doc id), the LoRA init (seeded), each epoch's data order and
dropout masks (seeded from seed and epoch) and the learning rate at each step. That is what
makes resume exact: a rerun loads the last saved epoch's weights and Adam state, moves the
schedule to its step, and goes on as if it had never stopped. A kill mid-epoch loses only
that epoch's progress, since a checkpoint is written whole or not at all.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data.corpus import CorpusStats, read_corpus
from data.errors import ConfigError, InputError, OutputError
from data.progress import progress_bar
from data.records import Document, stable_seed, stable_uniform
from data.shards import Shard
from data.storage import MANIFEST, StageOutput, read_json
from influence.config import InfluenceConfig, WarmupSettings
from influence.examples import TokenizedExample, candidate_example, collate
from influence.gradients import per_example_losses
from influence.lora import (
    Checkpoint,
    attach_lora,
    list_checkpoints,
    load_checkpoint,
    lora_parameters,
    save_checkpoint,
)

log = logging.getLogger(__name__)

STAGE = "influence-warmup"
# The parts of the config the checkpoints depend on; the rest (targets, featurize, select,
# device) can change without invalidating a warm-up.
RESULT_KEYS = ("model", "dtype", "max_length", "lora", "candidates", "warmup")
# Where the folder is does not change what is in it: a moved warm-up folder is still valid.
LOCATION_KEYS = ("warmup.output",)
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


def _facts_so_far(previous: dict[str, Any], saved: list[Checkpoint]) -> tuple[list[float | None], list[float]]:
    """Loss and average learning rate of the saved epochs. The learning rate is in each
    checkpoint; the loss only in the manifest, which a kill right after a checkpoint was
    written leaves one epoch behind (that loss is then unknown: None)."""
    losses = list(previous.get("loss_per_epoch", []))[: len(saved)]
    return losses + [None] * (len(saved) - len(losses)), [c.average_lr for c in saved]


def run_warmup(config: InfluenceConfig) -> dict[str, Any]:
    """Train (or finish training) the warm-up LoRA; returns the folder's manifest."""
    settings = config.warmup
    folder = Path(settings.output)
    saved = _saved_checkpoints(folder, settings.epochs)
    stale = folder / MANIFEST
    if not saved and stale.is_file() and read_json(stale).get("stage") == STAGE:
        # Nothing was trained under it (say a run that stopped on a misnamed pair_field), so a
        # corrected config may start over; once an epoch is saved, a different config is refused.
        stale.unlink()
    output = StageOutput(folder, stage=STAGE, config=config.model_dump(mode="json", include=set(RESULT_KEYS)),
                         inputs=config.candidates.paths, operational=LOCATION_KEYS)
    previous = read_json(folder / MANIFEST).get("warmup", {})
    losses, average_lrs = _facts_so_far(previous, saved)
    if len(saved) == settings.epochs:
        log.info("%s: all %d warm-up epochs saved; nothing to do", folder, settings.epochs)
        if previous.get("epochs_done") == settings.epochs:
            return read_json(folder / MANIFEST)
        # Killed after the last checkpoint was written but before the manifest said so.
        return output.annotate_manifest({"complete": True, "warmup": {
            **previous, "steps_per_epoch": saved[-1].step // saved[-1].epoch, "epochs_done": settings.epochs,
            "loss_per_epoch": losses, "average_lr_per_epoch": average_lrs}})

    import torch

    from llm.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(config.model)
    corpus_stats = CorpusStats()
    examples = warmup_examples(config, tokenizer, stats=corpus_stats)
    if not examples:
        raise ConfigError(f"warmup.fraction {settings.fraction}: no candidate was sampled "
                          f"({corpus_stats.summary()}); raise it or add candidates")
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
        if last.step != last.epoch * steps_per_epoch:
            raise OutputError(f"{last.folder}: saved at step {last.step}, expected {last.epoch * steps_per_epoch}; "
                              f"was the candidate pool changed? use a new warmup.output")
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
        losses.append(loss_sum / len(examples))  # each example counted once, whatever its batch
        average_lrs.append(lr_sum / steps_per_epoch)
        save_checkpoint(folder, epoch=epoch, model=model, optimizer=optimizer, average_lr=average_lrs[-1])
        log.info("warm-up epoch %d/%d: loss %.4f, %.1f examples/s, average lr %.3g", epoch, settings.epochs,
                 losses[-1], len(examples) / max(seconds, 1e-9), average_lrs[-1])
        manifest = output.annotate_manifest({
            "complete": epoch == settings.epochs,
            "warmup": {"examples": len(examples), "steps_per_epoch": steps_per_epoch, "epochs_done": epoch,
                       "loss_per_epoch": losses, "average_lr_per_epoch": average_lrs,
                       "corpus": corpus_stats.as_dict()},
        })
    return manifest
