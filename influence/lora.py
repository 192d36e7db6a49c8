"""The scoring model with LoRA, and the warm-up checkpoints it is scored at.

A checkpoint is a folder ``epoch-<e>/`` holding the LoRA weights (``adapter.safetensors``), the
Adam state keyed by parameter NAME (``optimizer.safetensors``: ``<name>.exp_avg`` and
``<name>.exp_avg_sq``), and ``state.json`` (epoch, optimizer steps, the epoch's average
learning rate, Adam's betas and eps). Keying by name, not by position, is what keeps the state
usable when the parameter list is rebuilt elsewhere (LESS's KeyError), and the step count is the
optimizer's own, not one derived from a GPU count.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.errors import ConfigError, InputError
from data.storage import MANIFEST, read_json
from influence.config import LoraSettings

CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d+)$")
WARMUP_STAGE = "influence-warmup"  # the stage name in a warm-up folder's manifest


def attach_lora(model, settings: LoraSettings, *, for_training: bool):
    """Wrap ``model`` with LoRA adapters. Scoring uses dropout off (eval mode), as an example's
    gradient must not depend on a random mask."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"lora.target_modules: {str(exc).splitlines()[0]}") from None
    return wrapped.train() if for_training else wrapped.eval()


def lora_parameters(model) -> list[tuple[str, Any]]:
    """(name, parameter) of every LoRA weight, in the model's own (deterministic) order."""
    return [(name, p) for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name]


@dataclass(frozen=True)
class AdamState:
    exp_avg: dict[str, Any]
    exp_avg_sq: dict[str, Any]
    step: int
    betas: tuple[float, float]
    eps: float


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    folder: Path
    average_lr: float
    step: int

    def fingerprint(self) -> str:
        """Changes whenever the weights or the optimizer state change."""
        digest = hashlib.sha256()
        for name in ("adapter.safetensors", "optimizer.safetensors", "state.json"):
            digest.update((self.folder / name).read_bytes())
        return digest.hexdigest()[:16]


def save_checkpoint(folder: Path, *, epoch: int, model, optimizer, average_lr: float) -> Path:
    """Write one epoch's checkpoint atomically (a temp folder renamed into place), so a kill
    leaves either the whole checkpoint or none."""
    import shutil

    import torch
    from safetensors.torch import save_file

    final = folder / f"epoch-{epoch}"
    tmp = folder / f".epoch-{epoch}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = lora_parameters(model)
    save_file({name: p.detach().cpu().contiguous() for name, p in params}, str(tmp / "adapter.safetensors"))
    moments: dict[str, torch.Tensor] = {}
    steps = set()
    group = optimizer.param_groups[0]
    for name, p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg" not in state:
            raise ConfigError(f"parameter {name} has no Adam state: was it trained?")
        moments[f"{name}.exp_avg"] = state["exp_avg"].detach().cpu().contiguous()
        moments[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().contiguous()
        steps.add(int(state["step"]))
    save_file(moments, str(tmp / "optimizer.safetensors"))
    state_json = {"epoch": epoch, "step": max(steps), "average_lr": average_lr,
                  "betas": list(group["betas"]), "eps": group["eps"]}
    (tmp / "state.json").write_text(json.dumps(state_json, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def require_finished_warmup(folder: str | Path) -> None:
    """Featurize and select use the checkpoints of a finished warm-up only."""
    path = Path(folder) / MANIFEST
    manifest = read_json(path) if path.is_file() else {}
    if manifest.get("stage") != WARMUP_STAGE or not manifest.get("complete"):
        state = "unfinished" if manifest.get("stage") == WARMUP_STAGE else "not a warm-up output"
        raise InputError(f"warmup.output: {folder} is {state}; run `mathsynth influence warmup` first")


def list_checkpoints(folder: str | Path, epochs: list[int] | None = None) -> list[Checkpoint]:
    folder = Path(folder)
    found = {}
    if folder.is_dir():
        for child in folder.iterdir():
            match = CHECKPOINT_PATTERN.match(child.name)
            if match and (child / "state.json").is_file():
                state = json.loads((child / "state.json").read_text())
                found[int(match.group(1))] = Checkpoint(int(match.group(1)), child, float(state["average_lr"]),
                                                        int(state["step"]))
    if not found:
        raise InputError(f"{folder}: no warm-up checkpoints (epoch-*/); run `mathsynth influence warmup` first")
    if epochs is None:
        return [found[e] for e in sorted(found)]
    missing = sorted(set(epochs) - set(found))
    if missing:
        raise ConfigError(f"featurize.checkpoints: epochs {missing} not in {folder} (have {sorted(found)})")
    return [found[e] for e in epochs]


def read_checkpoint(checkpoint: Checkpoint) -> tuple[dict[str, Any], AdamState]:
    """The checkpoint's LoRA weights by name, and its Adam state."""
    from safetensors.torch import load_file

    weights = load_file(str(checkpoint.folder / "adapter.safetensors"))
    moments = load_file(str(checkpoint.folder / "optimizer.safetensors"))
    state = json.loads((checkpoint.folder / "state.json").read_text())
    adam = AdamState(
        exp_avg={n: moments[f"{n}.exp_avg"] for n in weights},
        exp_avg_sq={n: moments[f"{n}.exp_avg_sq"] for n in weights},
        step=int(state["step"]), betas=(float(state["betas"][0]), float(state["betas"][1])), eps=float(state["eps"]),
    )
    return weights, adam


def apply_weights(model, weights: dict[str, Any], where: str = "checkpoint") -> None:
    """Copy LoRA weights into ``model``; a checkpoint of another model or LoRA shape is refused."""
    import torch

    params = dict(lora_parameters(model))
    if set(weights) != set(params):
        missing, extra = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
        raise InputError(f"{where}: LoRA parameters differ from the model's "
                         f"(missing {missing[:2]}, unexpected {extra[:2]}); same model and lora settings?")
    with torch.no_grad():
        for name, p in params.items():
            if tuple(weights[name].shape) != tuple(p.shape):
                raise InputError(f"{where}: {name} has shape {list(weights[name].shape)}, "
                                 f"the model's is {list(p.shape)}; same lora.r?")
            p.copy_(weights[name].to(p.device, p.dtype))


def load_checkpoint(model, checkpoint: Checkpoint) -> AdamState:
    """Put the checkpoint's LoRA weights into ``model`` and return its Adam state."""
    weights, adam = read_checkpoint(checkpoint)
    apply_weights(model, weights, str(checkpoint.folder))
    return adam


def learning_rate_weights(checkpoints: list[Checkpoint]) -> list[float]:
    """LESS weights each checkpoint's score by its epoch's average learning rate."""
    total = sum(c.average_lr for c in checkpoints)
    if total <= 0:
        return [1.0 / len(checkpoints)] * len(checkpoints)
    return [c.average_lr / total for c in checkpoints]
