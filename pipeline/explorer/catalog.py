"""What ``mathsynth explore`` looks at: the datasets behind the paths it is given.

A path is a stage output folder (it holds ``manifest.json``), a run folder holding stage folders,
a recipe file (every output folder of every stage, plus the corpus files it reads), or a JSONL
file (a corpus). Anything else is still listed, with the reason it cannot be read, so the page
can say so instead of failing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.storage import MANIFEST

# Upstream first: lineage calls a dataset earlier in this order "where a record came from".
KIND_ORDER = ("corpus", "influence", "distill", "synth_generate", "judge", "synth_filter", "pretrain", "eval", "other")
KIND_OF_STAGE = {"influence-select": "influence", "distill": "distill", "synth_generate": "synth_generate",
                 "judge": "judge", "synth_filter": "synth_filter", "pretrain-tokenize": "pretrain", "eval": "eval"}
RECORD_FILES = ("part-*-of-*.jsonl", "rejects-*-of-*.jsonl")
SEARCH_DEPTH = 4  # how deep a run folder is searched for stage folders


@dataclass
class Dataset:
    name: str
    path: Path
    kind: str
    stage: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # the JSONL files whose lines are its records
    error: str | None = None

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete")) if self.manifest else self.error is None

    @property
    def rank(self) -> int:
        return KIND_ORDER.index(self.kind)


def stage_folder(path: Path) -> Dataset:
    """A folder with a manifest: its part files (and a filter's rejects) are the records."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return Dataset(path.name, path, "other", error=f"{path / MANIFEST}: unreadable ({err})")
    stage = str(manifest.get("stage")) if manifest.get("stage") else None
    files = sorted(f for pattern in RECORD_FILES for f in path.glob(pattern))
    return Dataset(path.name, path, KIND_OF_STAGE.get(stage or "", "other"), stage, manifest, files)


def corpus_file(path: Path) -> Dataset:
    return Dataset(path.stem, path, "corpus", files=[path])


def from_path(path: str | Path) -> list[Dataset]:
    path = Path(path)
    if not path.exists():
        return [Dataset(path.name or str(path), path, "other", error=f"{path}: no such file or folder")]
    if path.is_file():
        if path.suffix in (".yaml", ".yml"):
            return from_recipe(path)
        if path.suffix == ".jsonl":
            return [corpus_file(path)]
        return [Dataset(path.name, path, "other", error=f"{path}: not a stage folder, a recipe (.yaml) or a .jsonl file")]
    if (path / MANIFEST).exists():
        return [stage_folder(path)]
    found = sorted(p.parent for p in _manifests_below(path, SEARCH_DEPTH))
    if not found:
        return [Dataset(path.name, path, "other",
                        error=f"{path}: not a stage output (no {MANIFEST} in it or in the folders below it)")]
    datasets = [stage_folder(folder) for folder in found]
    for dataset in datasets:  # named from the run folder: influence/selection, eval
        dataset.name = dataset.path.relative_to(path).as_posix()
    return datasets


def _manifests_below(folder: Path, depth: int):
    if depth == 0:
        return
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            if (child / MANIFEST).is_file():
                yield child / MANIFEST
            else:
                yield from _manifests_below(child, depth - 1)


def from_recipe(path: Path) -> list[Dataset]:
    """Every output folder of the recipe's stages (those not started are listed as such) and the
    corpus files its first stages read."""
    from data.errors import ConfigError
    from pipeline.recipe import load_recipe

    try:
        recipe = load_recipe(path)
    except ConfigError as err:
        return [Dataset(path.name, path, "other", error=str(err))]
    datasets: list[Dataset] = []
    for stage in recipe.stages:
        for key in stage.outputs:
            folder = Path(stage.state_folder(key))
            if (folder / MANIFEST).is_file():
                datasets.append(stage_folder(folder))
            else:
                datasets.append(Dataset(folder.name, folder, "other", error=f"{folder}: not started yet"))
        for value in _corpus_paths(stage.raw):
            candidate = Path(value)
            if candidate.is_file() and candidate.suffix == ".jsonl":
                datasets.append(corpus_file(candidate))
    return datasets


def _corpus_paths(raw: dict[str, Any]) -> list[str]:
    """The corpus files a stage reads: influence's candidates and distill's input."""
    paths = []
    for section in ("candidates", "input"):
        value = raw.get(section)
        if isinstance(value, dict):
            listed = value.get("paths")
            paths += [listed] if isinstance(listed, str) else [str(p) for p in listed or []]
    return paths


def collect(paths: list[str | Path]) -> list[Dataset]:
    """The datasets of every path, each folder once, named uniquely by its shortest distinct
    path suffix (``eval``, or ``run-a/eval`` and ``run-b/eval``)."""
    seen: dict[Path, Dataset] = {}
    for path in paths:
        for dataset in from_path(path):
            seen.setdefault(dataset.path.resolve(), dataset)
    for dataset in list(seen.values()):  # the corpus files the stages read: where "source text" links go
        if dataset.kind == "pretrain":
            continue  # its files are training rows (an SFT export...), not source texts
        for path in input_files(dataset):
            seen.setdefault(path.resolve(), corpus_file(path))
    datasets = list(seen.values())
    _name_uniquely(datasets)
    return sorted(datasets, key=lambda d: (d.rank, d.name))


def input_files(dataset: Dataset) -> list[Path]:
    """The JSONL files (not stage folders) a stage output's manifest names as its inputs."""
    found = []
    for entry in dataset.manifest.get("inputs", []) if dataset.manifest else []:
        path = Path(entry.get("path", "")) if isinstance(entry, dict) else None
        if path is not None and "stage" not in entry and path.suffix == ".jsonl" and path.is_file():
            found.append(path)
    return found


def _name_uniquely(datasets: list[Dataset]) -> None:
    parts = {id(d): d.path.resolve().parts for d in datasets}
    depth = {id(d): len(Path(d.name).parts) for d in datasets}
    for _ in range(32):
        names: dict[str, list[Dataset]] = {}
        for d in datasets:
            names.setdefault("/".join(parts[id(d)][-depth[id(d)]:]), []).append(d)
        clashes = [group for group in names.values() if len(group) > 1]
        if not clashes:
            break
        for group in clashes:
            for d in group:
                depth[id(d)] += 1
    for d in datasets:
        name = "/".join(parts[id(d)][-depth[id(d)]:])
        d.name = name[:-len(".jsonl")] if name.endswith(".jsonl") else name
