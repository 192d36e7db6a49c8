"""A training run as a stage of the pipeline (one job; its processes come from accelerate).

Under ``accelerate launch`` only process 0 runs the stage's life (lock, manifest, part file,
seal); it tells the others whether to train once the folder is checked and locked, and they
train beside it without touching any of those files. The part file is the training log, one
record per logged step (``step-40``), so a resumed run never writes a step twice;
``batches.jsonl`` lists the rows of every step trained, a step redone after a resume included.
Once sealed, the output is an ordinary HF checkpoint folder (model, tokenizer, model card).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from data.errors import ConfigError
from data.shards import Shard
from data.storage import ShardWriter, StageOutput, atomic_write_text, part_stem
from runner.ownership import Whole
from runner.run import run_stage
from runner.stage import ShardWork, Stage
from training.checkpoints import drop_checkpoints
from training.settings import TrainingSettings

log = logging.getLogger(__name__)

TRAIN_LOG = f"{part_stem(Shard(0, 1))}.jsonl"  # the stage's part file
TRAIN, STOP = "train", "stop"


class TrainingStage(Stage):
    """Subclasses say what is trained on (``train``, on every process) and what the model card
    says. ``accelerator``: the run's; the stage object alone is enough for ``summary``."""

    ownership = Whole()
    has_finish_step = True  # drops the resumable checkpoints (keep_checkpoints: 0) once the model is sealed

    def __init__(self, config: TrainingSettings, accelerator=None) -> None:
        super().__init__(config)
        self.accelerator = accelerator
        self.training_started = False

    def input_facts(self) -> list[dict[str, Any]]:
        """What the manifest records about the inputs (fingerprints of the data)."""
        raise NotImplementedError

    def train(self, train_log: ShardWriter | None) -> dict[str, Any]:
        """The whole run on this process (every process calls it); returns its stats."""
        raise NotImplementedError

    def model_card(self, stats: dict[str, Any]) -> str:
        raise NotImplementedError

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        self.training_started = True
        process_zero_decides(self.accelerator, TRAIN)
        work.output.annotate_manifest({"inputs": self.input_facts()})
        stats = self.train(work.writer)
        atomic_write_text(self.output / "README.md", self.model_card(stats))
        work.output.annotate_manifest({"stats": stats})
        return stats

    def finish(self, output: StageOutput) -> dict[str, Any]:
        if self.config.keep_checkpoints == 0:
            drop_checkpoints(self.output)
        return {}


def process_zero_decides(accelerator, decision: str | None = None) -> str:
    """Process 0 says whether to train (it holds the lock and the folder is checked) or to stop
    (the folder is sealed, or refused); every other process waits here for the word."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([decision], from_process=0)[0]


def run_training(stage: TrainingStage) -> dict[str, Any]:
    """Train (or resume, or do nothing if done). Returns the output's manifest on process 0;
    the other processes of an ``accelerate launch`` return an empty dict (one process owns the
    output)."""
    accelerator = stage.accelerator
    if not accelerator.is_main_process:
        if process_zero_decides(accelerator) == TRAIN:
            stage.train(None)
        finish_processes(accelerator)
        return {}
    try:
        manifest = run_stage(stage, Shard(0, 1))
    finally:
        if not stage.training_started:  # sealed already, or refused: the others must not wait
            process_zero_decides(accelerator, STOP)
    finish_processes(accelerator)
    return manifest


def finish_processes(accelerator) -> None:
    """End the trackers, then take the process group down together: a process that exits while
    another still holds its gloo connections can abort at exit ("terminate called without an
    active exception", seen once in CI on a 2-process pretrain job) and fail the launch."""
    import torch.distributed as dist

    accelerator.end_training()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _fsdp_on_cpu(accelerator) -> None:
    """Honour an FSDP launch config on CPU processes (gloo). With ``cpu=True`` accelerate makes
    the state MULTI_CPU and drops the FSDP plugin (it turns only GPU-like states into FSDP), so
    ``configs/accelerate/fsdp-cpu-2proc.yaml`` would otherwise train plain DDP without a word."""
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.MULTI_CPU \
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError("accelerate config: FSDP on CPU needs fsdp_version: 2 (FSDP1's full state dict "
                          "crashes on CPU tensors); see configs/accelerate/fsdp-cpu-2proc.yaml")
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* settings
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def make_accelerator(settings: TrainingSettings, project: str):
    """bf16 autocast on GPU with ``dtype: auto``; trackers (TensorBoard, W&B) when asked, logging
    under ``<output>/runs``, W&B offline unless WANDB_MODE says otherwise."""
    import torch
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    mixed = "bf16" if (cuda and settings.dtype == "auto") else "no"
    trackers = None if settings.report_to == "none" else settings.report_to
    if trackers == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
    accelerator = Accelerator(mixed_precision=mixed, cpu=not cuda, log_with=trackers,
                              project_dir=str(Path(settings.output) / "runs"),
                              gradient_accumulation_steps=settings.gradient_accumulation_steps)
    _fsdp_on_cpu(accelerator)
    if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed wants its micro-batch size; we have no dataloader
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = settings.per_device_batch_size
    accelerator.tracker_project = project  # trackers start with the training (the folder is the stage's by then)
    return accelerator
