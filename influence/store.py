"""Where features live, and the hash that keeps incomparable features apart.

    <featurize.output>/
      targets/space.json                  per checkpoint: the feature-space hash and what it hashes
      targets/<name>/epoch-<e>.npy        (n, dim) float32, L2-normalised SGD gradients
      targets/<name>/ids.json
      candidates/space.json
      candidates/layout.json              chunk_size: chunk j holds corpus rows [j*size, (j+1)*size)
      candidates/chunk-<j>/rows.jsonl     id, text, location, meta, tokens of each row
      candidates/chunk-<j>/epoch-<e>.npy  (n, dim) L2-normalised Adam directions
      candidates/total.json               the corpus's row and chunk count, once a shard saw its end
      candidates/manifest.json            featurize's stage output (see influence.featurize)
      candidates/part-<i>-of-<n>.jsonl    the chunks shard i wrote; .done once it is sealed

A chunk folder is written under a temporary name and renamed into place, so after a kill it
is either whole or absent; a rerun redoes only the absent ones. Temporary names carry the
writer's pid, so two processes never write into the same temporary file or folder.

Two features can be compared only when model, checkpoint, LoRA shape, projection (kind, size,
seed, nnz), parameter order, compute dtype and token budget are the same. All of those are
hashed into ``space.json`` on each side; featurize refuses to add to a folder of another space
and select refuses to score across spaces, naming what differs.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import InputError, OutputError, UserError
from data.records import content_id
from data.storage import atomic_write_json, read_json


def targets_folder(features: str | Path) -> Path:
    return Path(features) / "targets"


def candidates_folder(features: str | Path) -> Path:
    return Path(features) / "candidates"


def describe_space(*, model: str, checkpoint: str, lora: dict, projection: dict, order: list, dtype: str,
                   max_length: int) -> dict[str, Any]:
    return {"model": model, "checkpoint": checkpoint, "lora": lora, "projection": projection,
            "parameter_order": content_id(order), "dtype": dtype, "max_length": max_length}


def space_hash(description: dict[str, Any]) -> str:
    return content_id(description)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class SpaceFile:
    """``space.json`` of one side: {epoch: {"hash", "description"}}."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "space.json"

    def read(self) -> dict[str, dict[str, Any]] | None:
        return read_json(self.path) if self.path.exists() else None

    def check(self, spaces: dict[int, dict[str, Any]]) -> None:
        """Refuse to add features of ``spaces`` to a folder that holds another space (reads only)."""
        held = self.read()
        if held is not None:
            check_same_space(held, _space_entries(spaces), f"{self.path.parent} holds features of another feature "
                             "space", "use a new featurize.output or remove it", kind=OutputError)

    def claim(self, spaces: dict[int, dict[str, Any]]) -> None:
        """Record this side's space, or check that the folder already holds the same one."""
        self.check(spaces)
        if self.read() is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, _space_entries(spaces))


def _space_entries(spaces: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(e): {"hash": space_hash(d), "description": d} for e, d in spaces.items()}


def check_same_space(held: dict, wanted: dict, problem: str, advice: str,
                     kind: type[UserError] = InputError) -> None:
    """Features of two spaces must not be mixed; ``kind``: OutputError when ``held`` is the
    folder being written to, InputError when comparing features read as inputs."""
    if set(held) != set(wanted):
        raise kind(f"{problem}: checkpoints {sorted(held, key=int)} vs {sorted(wanted, key=int)}; {advice}")
    for epoch in held:
        if held[epoch]["hash"] != wanted[epoch]["hash"]:
            changed = differences(held[epoch]["description"], wanted[epoch]["description"])
            raise kind(f"{problem} (epoch {epoch}: {', '.join(changed)} differ; hash "
                       f"{held[epoch]['hash']} vs {wanted[epoch]['hash']}); {advice}")


def save_array(path: Path, array: np.ndarray) -> None:
    """Atomic, and safe when two processes save the same array (each renames its own temp file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    tmp.replace(path)


class CandidateChunks:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def chunk_dir(self, index: int) -> Path:
        return self.folder / f"chunk-{index:06d}"

    def is_done(self, index: int) -> bool:
        return self.chunk_dir(index).is_dir()

    def check_layout(self, chunk_size: int, corpus: dict[str, Any]) -> None:
        """Chunks are index ranges of one corpus read one way: a rerun with another chunk size,
        another corpus or other reading settings would mix rows, so it is refused (reads only)."""
        path = self.folder / "layout.json"
        if not path.exists():
            return
        held = read_json(path)
        if held["chunk_size"] != chunk_size:
            raise OutputError(f"{self.folder}: chunks hold {held['chunk_size']} rows each; featurize.chunk_size "
                              f"is {chunk_size} (use {held['chunk_size']} or a new featurize.output)")
        if held.get("corpus") != corpus:
            changed = differences(held.get("corpus") or {}, corpus)
            raise OutputError(f"{self.folder}: holds chunks of another candidate corpus ({', '.join(changed)} "
                              "differ); use a new featurize.output")

    def claim_layout(self, chunk_size: int, corpus: dict[str, Any]) -> None:
        self.check_layout(chunk_size, corpus)
        path = self.folder / "layout.json"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"chunk_size": chunk_size, "corpus": corpus})

    def write(self, index: int, rows: list[dict[str, Any]], features: dict[int, np.ndarray]) -> None:
        final = self.chunk_dir(index)
        tmp = self.folder / f".chunk-{index:06d}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with open(tmp / "rows.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        for epoch, array in features.items():
            with open(tmp / f"epoch-{epoch}.npy", "wb") as handle:
                np.save(handle, array)
        try:
            tmp.rename(final)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not self.is_done(index):
                raise
            shutil.rmtree(tmp)  # another process wrote the same chunk first: the same rows and features

    def remove_stale_temporaries(self, owned) -> None:
        """Temporary chunk folders left by killed processes, for the chunks ``owned(index)`` says
        are this shard's: only the holder of a shard's lock writes its chunks, so they are dead."""
        for tmp in self.folder.glob(".chunk-*.tmp"):
            if owned(int(tmp.name.split(".")[1].split("-")[1])):
                shutil.rmtree(tmp, ignore_errors=True)

    def record_total(self, rows: int, chunk_size: int) -> None:
        atomic_write_json(self.folder / "total.json", {"rows": rows, "chunks": -(-rows // chunk_size)})

    def total(self) -> dict[str, int] | None:
        path = self.folder / "total.json"
        return read_json(path) if path.exists() else None

    def rows(self, index: int) -> Iterator[dict[str, Any]]:
        with open(self.chunk_dir(index) / "rows.jsonl", encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def features(self, index: int, epoch: int) -> np.ndarray:
        return np.load(self.chunk_dir(index) / f"epoch-{epoch}.npy", mmap_mode="r")
