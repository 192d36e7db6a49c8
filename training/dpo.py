"""``mathsynth dpo``: preference training on (prompt, chosen, rejected) pairs through TRL's
``DPOTrainer``: the loss, the reference model, the batching and the checkpoints are TRL's and
transformers' Trainer's; this module reads and checks the pairs, maps the typed config onto a
``DPOConfig``, resumes from the newest complete checkpoint, and saves an ordinary HF checkpoint.

Under ``accelerate launch`` the Trainer's processes are accelerate's (DDP, or FSDP/DeepSpeed
from the launch config); process 0 alone owns the stage's files (lock, manifest, the part file
that logs TRL's metrics, seal), as for ``synth train`` (:mod:`training.stage`).

Output: ``<output>/`` model + tokenizer (LoRA merged into the base; the adapter alone under
``adapter/``), ``README.md``, ``manifest.json``, ``part-00000-of-00001.jsonl`` (one record per
logged step: loss, rewards/accuracies, rewards/margins, ...), ``checkpoints/checkpoint-N``.

    python -m training.dpo_cli --config FILE.yaml
    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml -m training.dpo_cli --config FILE.yaml
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from data.config_base import StrictConfig, operational
from data.errors import ConfigError, InputError
from data.jsonl import iter_json_objects
from data.storage import ShardWriter, describe_input
from training.model import move_into
from training.settings import LoraSettings
from training.stage import TrainingStage, run_training

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
PAIR_FIELDS = ("prompt", "chosen", "rejected")
# TRL 1.x's pairwise losses (exo_pair, which needs label smoothing, left out)
LossType = Literal["sigmoid", "hinge", "ipo", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
                   "apo_zero", "apo_down", "discopop", "sigmoid_norm"]


class PairsData(StrictConfig):
    paths: list[str] = Field(..., min_length=1, description="JSONL files, or folders: their pairs-*.jsonl, "
                                                           "else their part-*.jsonl")
    limit: int | None = Field(None, ge=1, description="train on the first N pairs only")


class DpoConfig(StrictConfig):
    model: str = Field(..., min_length=1, description="the policy's start: a local HF checkpoint folder")
    ref_model: str | None = Field(None, description="the frozen reference; null: the same as model (with LoRA: "
                                                    "the base with the adapter off, no second copy)")
    data: PairsData
    output: str = operational(..., min_length=1, description="the result: an HF checkpoint folder (plus checkpoints/)")
    lora: LoraSettings | None = Field(None, description="null: full fine-tuning; else LoRA, merged on save")
    beta: float = Field(0.1, gt=0, description="DPO's KL strength")
    loss_type: LossType = Field("sigmoid", description="TRL's loss_type (sigmoid: DPO)")
    learning_rate: float = Field(5e-7, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after N optimizer steps (overrides epochs)")
    per_device_batch_size: int = Field(1, ge=1, description="pairs per process per micro-step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8, description="tokens of prompt + answer; longer is cut (truncation)")
    truncation: Literal["keep_start", "keep_end"] = "keep_start"
    dtype: Literal["auto", "float32"] = Field("auto", description="auto: fp32 on CPU, bf16 autocast on GPU")
    gradient_checkpointing: bool = False
    seed: int = 0
    save_steps: int = operational(100, ge=1, description="a resumable checkpoint every N optimizer steps")
    keep_checkpoints: int = operational(1, ge=0, description="checkpoints kept; 0 removes them all once the run ends")
    logging_steps: int = operational(10, ge=1)
    report_to: Literal["none", "tensorboard", "wandb"] = operational("none")


# ---------------------------------------------------------------------------------------------
# The pairs


def pair_files(paths: list[str]) -> list[Path]:
    """The JSONL files behind ``data.paths`` (a folder: its pairs-*.jsonl, else its part-*.jsonl)."""
    files: list[Path] = []
    for i, name in enumerate(paths):
        path = Path(name)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(path.glob("pairs-*.jsonl")) or sorted(path.glob("part-*.jsonl"))
            if not found:
                raise ConfigError(f"data.paths.{i}: {path} holds no pairs-*.jsonl or part-*.jsonl")
            manifest = path / "manifest.json"
            if manifest.is_file() and not json.loads(manifest.read_text()).get("complete", False):
                raise InputError(f"data.paths.{i}: {path} is not complete (its manifest says so); finish that run first")
            files.extend(found)
        else:
            raise ConfigError(f"data.paths.{i}: {path} not found")
    return files


def _text(value: Any) -> bool:
    """A non-empty string, or chat messages (TRL's conversational format)."""
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def read_pairs(paths: list[str], limit: int | None = None) -> list[dict[str, Any]]:
    """Every pair as {prompt, chosen, rejected}; a bad row is one line naming file:line."""
    pairs: list[dict[str, Any]] = []
    for file in pair_files(paths):
        for number, row in iter_json_objects(file):
            missing = [key for key in PAIR_FIELDS if not _text(row.get(key))]
            if missing:
                raise InputError(f"{file}:{number}: missing or empty {', '.join(missing)} "
                                 f"(a pair needs prompt, chosen, rejected)")
            pairs.append({key: row[key] for key in PAIR_FIELDS})
            if limit is not None and len(pairs) == limit:
                return pairs
    if not pairs:
        raise InputError(f"data.paths: no preference pairs in {', '.join(paths)}")
    if len({isinstance(pair["prompt"], str) for pair in pairs}) > 1:  # TRL takes one format per dataset
        raise InputError(f"data.paths: {', '.join(paths)} mix text prompts and chat messages; train on one kind")
    return pairs


def data_fingerprint(paths: list[str]) -> list[dict[str, Any]]:
    facts = []
    for file in pair_files(paths):
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        facts.append({"file": str(file), "sha256": digest.hexdigest()})
    return facts


# ---------------------------------------------------------------------------------------------
# Checkpoints (the Trainer's own: <output>/checkpoints/checkpoint-N)


def newest_complete_checkpoint(folder: Path) -> Path | None:
    """The Trainer writes trainer_state.json last: a checkpoint without a readable one was torn
    by a kill and is skipped."""
    def complete(path: Path) -> bool:
        try:
            json.loads((path / "trainer_state.json").read_text())
            return True
        except (OSError, ValueError):
            return False

    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit() and complete(p)]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def drop_torn_checkpoints(folder: Path, keep: Path | None) -> None:
    newest = int(keep.name.split("-")[1]) if keep else 0
    for path in folder.glob("checkpoint-*"):
        if path.name.split("-")[1].isdigit() and int(path.name.split("-")[1]) > newest:
            shutil.rmtree(path, ignore_errors=True)  # would be counted, then overwritten, by the Trainer


# ---------------------------------------------------------------------------------------------
# The run


def trl_arguments(config: DpoConfig, cuda: bool):
    from trl import DPOConfig

    bf16 = cuda and config.dtype == "auto"
    if config.report_to == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(config.output) / "runs"))
    return DPOConfig(
        output_dir=str(Path(config.output) / CHECKPOINTS),
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler, warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        beta=config.beta, loss_type=[config.loss_type], max_length=config.max_length,
        truncation_mode=config.truncation,
        seed=config.seed, data_seed=config.seed,
        logging_steps=config.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=max(1, config.keep_checkpoints),
        report_to=[] if config.report_to == "none" else [config.report_to],
        bf16=bf16, fp16=False, use_cpu=not cuda,
        gradient_checkpointing=config.gradient_checkpointing,
        dataloader_num_workers=0, disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )


def _callbacks(train_log: ShardWriter | None, final: dict[str, Any]):
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class LogToPart(TrainerCallback):
        """TRL's logged metrics into the stage's part file, one record per logged step (a step
        redone after a resume keeps its first record: the part file skips known ids), and one
        log line."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "train_runtime" in logs:  # the Trainer's closing summary: timings, not a step
                final.update(logs)
                return
            if train_log is not None and "loss" in logs:
                train_log.write({"id": f"step-{state.global_step}", "step": state.global_step, **logs})
                train_log.flush()
                log.info("step %d/%d  loss %.4f  reward accuracy %.2f  margin %.3f  lr %.3g", state.global_step,
                         state.max_steps, logs["loss"], logs.get("rewards/accuracies", float("nan")),
                         logs.get("rewards/margins", float("nan")), logs.get("learning_rate", float("nan")))

    class Progress(ProgressCallback):
        """The progress bar (stderr) without the Trainer's metric dicts printed on stdout."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    return [LogToPart(), Progress()]


def _load_model(path: str):
    from llm.loading import load_model

    # fp32 master weights (bf16 autocast on GPU): pure bf16 weights lose small updates
    return load_model(path, dtype="float32", device="cpu")


def train_dpo(config: DpoConfig, train_log: ShardWriter | None) -> dict[str, Any]:
    """The whole run on this process (every process of a launch calls it); the run's stats."""
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import ProgressCallback
    from trl import DPOTrainer

    from llm.loading import load_tokenizer

    cuda = torch.cuda.is_available()
    output = Path(config.output)
    pairs = read_pairs(config.data.paths, config.data.limit)
    tokenizer = load_tokenizer(config.model)
    peft_config = None
    if config.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                                 target_modules=list(config.lora.target_modules), task_type="CAUSAL_LM")
    final: dict[str, Any] = {}
    args = trl_arguments(config, cuda)
    trainer = DPOTrainer(
        model=_load_model(config.model),
        ref_model=_load_model(config.ref_model) if config.ref_model else None,
        args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
        peft_config=peft_config)
    trainer.remove_callback(ProgressCallback)
    for callback in _callbacks(train_log, final):
        trainer.add_callback(callback)

    checkpoint = newest_complete_checkpoint(output / CHECKPOINTS)
    if trainer.accelerator.is_main_process:
        drop_torn_checkpoints(output / CHECKPOINTS, checkpoint)
    trainer.accelerator.wait_for_everyone()
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    save_model(trainer, tokenizer, config)

    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    first, last = (history[0], history[-1]) if history else ({}, {})
    return {
        "pairs": len(pairs), "pairs_trained": len(trainer.train_dataset),  # TRL drops pairs truncated to nothing
        "steps": trainer.state.global_step, "epochs": trainer.state.epoch,
        "global_batch_pairs": config.per_device_batch_size * trainer.accelerator.num_processes
        * config.gradient_accumulation_steps,
        "processes": trainer.accelerator.num_processes,
        "distributed": str(trainer.accelerator.distributed_type.value),
        "first_loss": first.get("loss"), "final_loss": last.get("loss"),
        "first_reward_accuracy": first.get("rewards/accuracies"),
        "final_reward_accuracy": last.get("rewards/accuracies"),
        "first_reward_margin": first.get("rewards/margins"), "final_reward_margin": last.get("rewards/margins"),
        "resumed_from_step": int(checkpoint.name.split("-")[1]) if checkpoint else None,
        "train_seconds": final.get("train_runtime"), "pairs_per_second": final.get("train_samples_per_second"),
    }


def save_model(trainer, tokenizer, config: DpoConfig) -> None:
    """The trained policy as an ordinary checkpoint folder (transformers and vLLM load it), moved
    into ``output`` when whole. Full fine-tuning goes through the Trainer's save (FSDP/ZeRO
    gathers included); LoRA keeps its adapter under ``adapter/`` and merges it into the base."""
    output = Path(config.output)
    tmp = output / ".final-tmp"
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    # Collective under FSDP/DeepSpeed (gathers the shards); writes on process 0. A PEFT model
    # saves its adapter alone.
    trainer.save_model(str(tmp / "adapter" if config.lora is not None else tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if config.lora is not None:
            # merged from the saved adapter onto a fresh base: the trained model may be sharded
            from peft import PeftModel

            (tmp / "adapter" / "training_args.bin").unlink(missing_ok=True)
            merged = PeftModel.from_pretrained(_load_model(config.model), tmp / "adapter").merge_and_unload()
            merged.generation_config.pad_token_id = tokenizer.pad_token_id
            merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training_args.bin").unlink(missing_ok=True)
        move_into(tmp, output)
    accelerator.wait_for_everyone()


class _Processes:
    """What :func:`training.stage.run_training` asks of an accelerator, from accelerate's
    process state: the Trainer builds its own Accelerator on the same processes."""

    def __init__(self) -> None:
        import torch
        from accelerate import PartialState

        self.state = PartialState(cpu=not torch.cuda.is_available())  # gloo between CPU processes

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    @property
    def num_processes(self) -> int:
        return self.state.num_processes

    def end_training(self) -> None:
        pass


class DpoStage(TrainingStage):
    name = "dpo"

    def inputs(self) -> list[str]:
        return [self.config.model, *([self.config.ref_model] if self.config.ref_model else []), *self.config.data.paths]

    def check(self) -> None:
        """Checkpoint folders exist; every pair parses (one line naming file and line)."""
        for key in ("model", "ref_model"):
            path = getattr(self.config, key)
            if path is not None and not (Path(path) / "config.json").is_file():
                raise ConfigError(f"{key}: {path} is not a checkpoint folder (no config.json)")
        read_pairs(self.config.data.paths, self.config.data.limit)

    def input_facts(self) -> list[dict[str, Any]]:
        models = [describe_input(self.config.model)]
        if self.config.ref_model:
            models.append(describe_input(self.config.ref_model))
        return [*models, *data_fingerprint(self.config.data.paths)]

    def train(self, train_log: ShardWriter | None) -> dict[str, Any]:
        return train_dpo(self.config, train_log)

    def model_card(self, stats: dict[str, Any]) -> str:
        return model_card(self.config, self.input_facts(), stats)

    def summary(self, manifest: dict[str, Any]) -> str:
        stats = manifest.get("stats", {})

        def number(key: str) -> str:
            value = stats.get(key)
            return "?" if value is None else f"{value:.4f}"

        return (f"{stats.get('steps', 0)} steps on {stats.get('pairs', 0)} pairs "
                f"({stats.get('processes', 1)} processes), loss {number('first_loss')} -> {number('final_loss')}, "
                f"reward accuracy {number('final_reward_accuracy')}")


def run_dpo(config: DpoConfig) -> tuple[DpoStage, dict[str, Any]]:
    """Train (or resume, or do nothing if done). The manifest on process 0; {} on the others."""
    stage = DpoStage(config, _Processes())
    return stage, run_training(stage)


def model_card(config: DpoConfig, inputs: list[dict[str, Any]], stats: dict[str, Any]) -> str:
    how = "full fine-tuning" if config.lora is None else \
        f"LoRA r={config.lora.r} (merged into the base weights; the adapter alone is in adapter/)"
    files = "\n".join(f"- `{item['file']}` sha256 `{item['sha256']}`" for item in inputs if "sha256" in item)
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [mathsynth, dpo, trl]\n---\n\n"
        "# mathsynth DPO model\n\n"
        f"Trained from `{config.model}` by `mathsynth dpo` (TRL DPOTrainer, {how}, beta {config.beta}, "
        f"loss {config.loss_type}) on preference pairs: a correct and an incorrect solution of the same problem.\n\n"
        f"## Data\n\n{files}\n- pairs: {stats.get('pairs')}\n\n"
        "## Training\n\n"
        f"- steps: {stats.get('steps')}, global batch: {stats.get('global_batch_pairs')} pairs, "
        f"processes: {stats.get('processes')}\n"
        f"- loss: {stats.get('first_loss')} -> {stats.get('final_loss')}\n"
        f"- reward accuracy: {stats.get('first_reward_accuracy')} -> {stats.get('final_reward_accuracy')}\n"
        f"- reward margin: {stats.get('first_reward_margin')} -> {stats.get('final_reward_margin')}\n\n"
        "## Config\n\n```yaml\n" + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False) + "```\n"
    )
