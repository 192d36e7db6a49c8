"""The model side of a training run: loading for training, the optimizer, the final save."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from data.records import stable_seed
from training.settings import TrainingSettings


def load_for_training(settings: TrainingSettings):
    import torch

    from llm.loading import load_model

    # dtype auto on GPU: fp32 master weights under bf16 autocast (pure bf16 weights lose 1e-5 updates).
    weights = "bfloat16" if settings.dtype == "bfloat16" else "float32"
    model = load_model(settings.model, dtype=weights, device="cpu").train()
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if settings.lora is not None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(stable_seed(settings.seed, "lora"))
        model = get_peft_model(model, LoraConfig(r=settings.lora.r, lora_alpha=settings.lora.alpha,
                                                 lora_dropout=settings.lora.dropout,
                                                 target_modules=list(settings.lora.target_modules),
                                                 task_type="CAUSAL_LM"))
    return model


def build_optimizer(model, settings: TrainingSettings):
    import torch

    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)  # no decay on norms and biases
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=settings.learning_rate, betas=settings.adam_betas, eps=settings.adam_eps)


def save_trained_model(accelerator, model, tokenizer, settings: TrainingSettings) -> None:
    """The trained model as an ordinary checkpoint folder (LoRA merged into the base) with its
    tokenizer, moved into ``output`` when whole. Every process takes part (FSDP/ZeRO gather)."""
    import torch

    output = Path(settings.output)
    tmp = output / ".final-tmp"
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP/ZeRO shards; collective
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        rebuild = _sharded(accelerator) and (settings.lora is not None or accelerator.mixed_precision == "bf16")
        if rebuild:
            # The unwrapped FSDP module still holds shards: saving it from one process would
            # wait forever on a gather the others never join. Rebuild it whole from the state.
            unwrapped = load_for_training(settings.model_copy(update={"gradient_checkpointing": False}))
        if rebuild or settings.lora is not None:
            unwrapped.load_state_dict(state_dict)
        if settings.lora is not None:
            unwrapped.save_pretrained(tmp / "adapter")  # the delta alone, small, for inspection
            unwrapped = unwrapped.merge_and_unload()
            state_dict = None
        if accelerator.mixed_precision == "bf16":  # trained under bf16 autocast: save as bf16
            unwrapped = unwrapped.to(torch.bfloat16)
            state_dict = None
        if state_dict is not None:
            # A tied output head is one parameter, but a gathered (FSDP) state dict holds it
            # under both names as separate tensors, which save_pretrained would write twice.
            names = {name for name, _ in unwrapped.named_parameters()} | {name for name, _ in unwrapped.named_buffers()}
            state_dict = {key: value for key, value in state_dict.items() if key in names}
        unwrapped.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        move_into(tmp, output)
    accelerator.wait_for_everyone()


def move_into(tmp: Path, output: Path) -> None:
    """The files of a finished save, from its temporary folder into the output (one rename each)."""
    for item in tmp.iterdir():
        if (output / item.name).is_dir():  # an adapter/ of an earlier attempt
            shutil.rmtree(output / item.name)
        os.replace(item, output / item.name)
    tmp.rmdir()


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
