"""A cluster file: the Slurm settings ``mathsynth submit`` gives each kind of step.

    default: {partition: main, account: math, time: "04:00:00", setup: ["source .venv/bin/activate"]}
    cpu:   {cpus_per_task: 8, mem: 32G}                  # distill, synth filter, pretrain tokenize, influence select
    gpu:   {partition: gpu, gres: "gpu:1"}               # influence featurize, synth generate, eval run
    train: {partition: gpu, gres: "gpu:8", nodes: 2,     # influence warmup, synth train, pretrain train
            accelerate_config: configs/accelerate/fsdp.yaml}

A kind takes every key it does not set from ``default`` (a key it sets, lists included,
replaces the default's). Only ``train`` may span several nodes, and only ``train`` takes an
accelerate config: with one, ``synth train`` and ``pretrain train`` run one ``accelerate
launch`` per node (slurm/train.sbatch); without one, a plain single process.
The file is validated before anything is written; a mistake is one line naming file and key.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from data.config_base import StrictConfig
from data.config_files import read_yaml_mapping
from data.errors import ConfigError
from runner.config import validate

# The kind of Slurm job each step needs: what it runs on, not what it computes.
STEP_KINDS: dict[tuple[str, ...], str] = {
    ("distill",): "cpu", ("synth", "filter"): "cpu", ("pretrain", "tokenize"): "cpu", ("influence", "select"): "cpu",
    ("influence", "featurize"): "gpu", ("synth", "generate"): "gpu", ("eval", "run"): "gpu",
    ("influence", "warmup"): "train", ("synth", "train"): "train", ("pretrain", "train"): "train",
}
KINDS = ("cpu", "gpu", "train")


def _one_word(value: str) -> str:
    if not value.strip() or any(ch.isspace() for ch in value):
        raise ValueError("expected one word without spaces")
    return value


def _sbatch_option(value: str) -> str:
    if not value.startswith("-") or "\n" in value:
        raise ValueError("expected an sbatch option such as --qos=high")
    return value


def _shell_line(value: str) -> str:
    if "\n" in value:
        raise ValueError("expected one shell line")
    return value


Word = Annotated[str, AfterValidator(_one_word)]


class JobSettings(StrictConfig):
    partition: Word | None = Field(None, description="--partition")
    account: Word | None = Field(None, description="--account")
    gres: Word | None = Field(None, description="--gres, e.g. gpu:1")
    time: Word | None = Field(None, description="--time, e.g. 04:00:00")
    cpus_per_task: int | None = Field(None, ge=1, description="--cpus-per-task")
    mem: Word | None = Field(None, description="--mem, e.g. 64G")
    options: list[Annotated[str, AfterValidator(_sbatch_option)]] = Field(
        default_factory=list, description="more sbatch options, e.g. --qos=high")
    setup: list[Annotated[str, AfterValidator(_shell_line)]] = Field(
        default_factory=list, description="shell lines run before the command (module load ..., "
                                          "source .venv/bin/activate)")


class TrainSettings(JobSettings):
    nodes: int = Field(1, ge=1, description="nodes of one training run (with accelerate_config)")
    accelerate_config: str | None = Field(None, description="an accelerate config: synth/pretrain train run "
                                                            "`accelerate launch` on every node")


class ClusterFile(StrictConfig):
    default: JobSettings = Field(default_factory=JobSettings)
    cpu: JobSettings = Field(default_factory=JobSettings)
    gpu: JobSettings = Field(default_factory=JobSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)


@dataclass(frozen=True)
class Cluster:
    path: Path
    kinds: dict[str, TrainSettings]  # every kind with the default laid under it

    def for_step(self, command: tuple[str, ...]) -> TrainSettings:
        return self.kinds[STEP_KINDS[command]]


def load_cluster(path: str | Path) -> Cluster:
    path = Path(path)
    found = validate(ClusterFile, read_yaml_mapping(path), source=str(path))
    kinds = {}
    for kind in KINDS:
        own = getattr(found, kind)
        inherited = {key: getattr(found.default, key) for key in JobSettings.model_fields
                     if key not in own.model_fields_set}
        kinds[kind] = TrainSettings(**{**own.model_dump(exclude_unset=True), **inherited})
    train = kinds["train"]
    if train.nodes > 1 and not train.accelerate_config:
        raise ConfigError(f"{path}: train.nodes: {train.nodes} nodes need train.accelerate_config "
                          f"(a plain training run is one process)")
    if train.accelerate_config and not Path(train.accelerate_config).is_file():
        raise ConfigError(f"{path}: train.accelerate_config: {train.accelerate_config} does not exist")
    return Cluster(path, kinds)
