"""A recipe: the JiuZhang3.0 method as one file, every stage's config and the wiring between them.

    stages:                        # any of these, run in this order
      influence:      {config: configs/influence-example.yaml, set: {model: "${shared.proxy}"}}
      distill:        {config: {...inline...}, set: {input.paths: ["${influence.select.output}"]}}
      synth_train:    ...
      synth_generate: ...
      synth_filter:   ...
      pretrain:       ...
      eval:           ...
    shared: {proxy: runs/tiny-model, seed: 0}    # stated once, used as ${shared.NAME}

Each stage names a config (a file, or the mapping itself) and ``set``: dotted keys laid over it.
``${shared.NAME}`` is a shared value; ``${STAGE.KEY}`` is a key of an earlier stage's resolved
config (``${distill.output}``), which is how outputs are wired to inputs. A string that is only a
placeholder takes the value's type (a number, a list).

The whole recipe is validated before anything runs: every stage's config against its model (one
line naming recipe, stage and key), references only to earlier stages, and every input (corpus
paths, model folders, upstream folders) either written by an earlier stage or an existing path.
Paths are relative to the working directory, as in every config.
"""
from __future__ import annotations

import copy
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from data.config_base import StrictConfig
from data.config_files import read_yaml_mapping
from data.errors import ConfigError
from runner.config import load_raw, validate


@dataclass(frozen=True)
class Step:
    command: tuple[str, ...]  # mathsynth command words
    sharded: bool  # runs as shards (local processes, or a Slurm array)


@dataclass(frozen=True)
class StageKind:
    config_model: str  # module:Class
    inputs: tuple[str, ...]  # dotted keys read from elsewhere ("*" = every list item)
    outputs: tuple[str, ...]  # dotted keys of the folders it writes; the last one is complete when the stage is
    steps: tuple[Step, ...]


STAGES: dict[str, StageKind] = {
    "influence": StageKind("influence.config:InfluenceConfig", ("model", "candidates.paths"),
                           ("warmup.output", "featurize.output", "select.output"),
                           (Step(("influence", "warmup"), False), Step(("influence", "featurize"), True),
                            Step(("influence", "select"), False))),
    "distill": StageKind("distill.run:DistillConfig", ("input.paths",), ("output",), (Step(("distill",), True),)),
    "synth_train": StageKind("synth.config:SynthTrainConfig", ("model", "data.path"), ("output",),
                             (Step(("synth", "train"), False),)),
    "synth_generate": StageKind("synth.generate:SynthGenerateConfig", ("input.paths", "engine.model"), ("output",),
                                (Step(("synth", "generate"), True),)),
    "synth_filter": StageKind("synth.filter_run:SynthFilterConfig", ("input",), ("output",),
                              (Step(("synth", "filter"), True),)),
    "pretrain": StageKind("pretrain.config:PretrainConfig", ("model", "sources.*.paths"), ("tokenized", "output"),
                          (Step(("pretrain", "tokenize"), True), Step(("pretrain", "train"), False))),
    "eval": StageKind("eval.run:EvalConfig", ("engine.model",), ("output",), (Step(("eval", "run"), True),)),
}
ORDER = tuple(STAGES)
# An output whose manifest is not at its top: featurize's folder holds the target features (a
# cache) beside its candidates store, the stage output the runner keeps.
MANIFEST_SUBFOLDER = {("influence", "featurize.output"): "candidates"}

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


class StageEntry(StrictConfig):
    config: str | dict[str, Any] = Field(..., description="a config file, or the config itself")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted keys laid over the config")
    shards: int = Field(1, ge=1, le=1024, description="shards of its sharded steps (local processes, array tasks)")


class RecipeFile(StrictConfig):
    workdir: str | None = Field(None, description="the recipe's own files (resolved configs, logs); "
                                                  "default runs/recipes/<recipe file name>; may use ${shared.NAME}")
    shared: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, StageEntry] = Field(..., min_length=1)


@dataclass
class ResolvedStage:
    name: str
    config: BaseModel
    raw: dict[str, Any]  # the config as written, placeholders filled: what the stage commands read
    outputs: dict[str, str]  # dotted key -> folder
    shards: int

    @property
    def kind(self) -> StageKind:
        return STAGES[self.name]

    @property
    def final_output(self) -> str:
        return self.outputs[self.kind.outputs[-1]]

    def state_folder(self, key: str) -> str:
        """The folder of output ``key`` that holds its manifest: where its state is read."""
        sub = MANIFEST_SUBFOLDER.get((self.name, key))
        return str(Path(self.outputs[key]) / sub) if sub else self.outputs[key]


@dataclass
class Recipe:
    path: Path
    workdir: Path
    stages: list[ResolvedStage]

    def stage(self, name: str) -> ResolvedStage:
        return next(s for s in self.stages if s.name == name)


def load_recipe(path: str | Path, shared: dict[str, Any] | None = None) -> Recipe:
    """Every stage's config, resolved and validated, in run order; a mistake anywhere is one line
    naming the recipe, the stage and the key, before anything runs. ``shared``: values laid over
    the recipe's own ``shared`` (``--set shared.NAME=VALUE``)."""
    path = Path(path)
    recipe = validate(RecipeFile, read_yaml_mapping(path), source=str(path))
    recipe.shared.update(shared or {})
    unknown = [name for name in recipe.stages if name not in STAGES]
    if unknown:
        raise ConfigError(f"{path}: stages.{unknown[0]}: not a stage (stages: {', '.join(ORDER)})")
    resolved: list[ResolvedStage] = []
    for name in [n for n in ORDER if n in recipe.stages]:
        where = f"{path}: stages.{name}"
        entry = recipe.stages[name]
        raw = _stage_raw(entry, where)
        raw = _substitute(raw, recipe.shared, {s.name: s for s in resolved}, name, where)
        kind = STAGES[name]
        config = validate(_model(kind), raw, source=where)
        outputs = {key: str(_lookup(config.model_dump(mode="json"), key)) for key in kind.outputs}
        _check_inputs(config, kind, resolved, where)
        resolved.append(ResolvedStage(name, config, raw, outputs, entry.shards))
    workdir = (Path(_substitute(recipe.workdir, recipe.shared, {}, ORDER[0], f"{path}: workdir")) if recipe.workdir
               else Path("runs") / "recipes" / path.stem)
    return Recipe(path, workdir, resolved)


def _stage_raw(entry: StageEntry, where: str) -> dict[str, Any]:
    if isinstance(entry.config, str):
        try:
            raw = load_raw(entry.config)
        except ConfigError as err:
            raise ConfigError(f"{where}.config: {err}") from None
    else:
        raw = copy.deepcopy(entry.config)
    for key, value in entry.set.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where}.set: {key}: {part} is not a mapping")
            node = child
        node[last] = value
    return raw


def _substitute(value: Any, shared: dict[str, Any], earlier: dict[str, ResolvedStage], stage: str, where: str) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, shared, earlier, stage, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, shared, earlier, stage, where) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return _reference(whole.group(1), shared, earlier, stage, where)
    return _PLACEHOLDER.sub(lambda m: str(_reference(m.group(1), shared, earlier, stage, where)), value)


def _reference(name: str, shared: dict[str, Any], earlier: dict[str, ResolvedStage], stage: str, where: str) -> Any:
    head, _, rest = name.partition(".")
    if head == "shared":
        if rest not in shared:
            raise ConfigError(f"{where}: ${{{name}}}: no shared.{rest} in the recipe")
        return shared[rest]
    if head not in STAGES:
        raise ConfigError(f"{where}: ${{{name}}}: {head!r} is neither shared nor a stage")
    if head not in earlier:
        later = ORDER.index(head) >= ORDER.index(stage)
        raise ConfigError(f"{where}: ${{{name}}}: the {head} stage "
                          + ("runs later" if later else "is not in this recipe"))
    try:
        return _lookup(earlier[head].config.model_dump(mode="json"), rest)
    except KeyError:
        raise ConfigError(f"{where}: ${{{name}}}: the {head} config has no key {rest!r}") from None


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _input_values(config: dict[str, Any], dotted: str) -> list[tuple[str, str]]:
    """(key, value) of every string an input key holds ("*" walks a list)."""
    found: list[tuple[str, Any]] = [("", config)]
    for part in dotted.split("."):
        step = []
        for key, node in found:
            if part == "*" and isinstance(node, list):
                step += [(f"{key}.{i}".lstrip("."), item) for i, item in enumerate(node)]
            elif isinstance(node, dict) and node.get(part) is not None:
                step.append((f"{key}.{part}".lstrip("."), node[part]))
        found = step
    values = []
    for key, node in found:
        for item in node if isinstance(node, list) else [node]:
            if isinstance(item, str):
                values.append((key, item))
    return values


def _check_inputs(config: BaseModel, kind: StageKind, earlier: list[ResolvedStage], where: str) -> None:
    written = [Path(folder) for stage in earlier for folder in stage.outputs.values()]
    dumped = config.model_dump(mode="json")
    for dotted in kind.inputs:
        for key, value in _input_values(dumped, dotted):
            path = Path(value)
            if any(path == folder or folder in path.parents for folder in written):
                continue
            if any(ch in value for ch in "*?["):  # a glob: the corpus reader resolves it
                continue
            if not path.exists():
                raise ConfigError(f"{where}: {key}: {value} does not exist and no earlier stage writes it")


def _model(kind: StageKind) -> type[BaseModel]:
    module, _, name = kind.config_model.partition(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------------------------
# Where each stage stands


def stage_state(folder: str) -> str:
    """``complete``, ``partial (i of N shards)`` or ``not started``."""
    from data.storage import MANIFEST, read_json

    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        return "not started"
    manifest = read_json(manifest_path)
    if manifest.get("complete"):
        return "complete"
    return f"partial ({len(manifest.get('shards_done', []))} of {manifest.get('num_shards', 1)} shards)"


def plan_lines(recipe: Recipe, stages: list[ResolvedStage] | None = None) -> list[str]:
    """The plan: each stage, its steps (with shards) and the state of each folder it writes."""
    chosen = recipe.stages if stages is None else stages
    lines = [f"recipe {recipe.path}: {len(chosen)} of {len(recipe.stages)} stages"]
    for stage in chosen:
        number = recipe.stages.index(stage) + 1
        steps = ", ".join(" ".join(step.command) + (f" x{stage.shards} shards" if step.sharded and stage.shards > 1 else "")
                          for step in stage.kind.steps)
        states = ", ".join(f"{key} {folder} [{stage_state(stage.state_folder(key))}]"
                           for key, folder in stage.outputs.items())
        lines.append(f"{number}. {stage.name} ({steps}): {states}")
    return lines
