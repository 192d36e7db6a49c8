"""Shared by the influence tests: a small config on the tiny model, and selection checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_config(tiny_model: Path, data: Path, out: Path, **changes) -> dict:
    """An influence config over ``data/pool.jsonl`` and ``data/targets.jsonl``, warmed up in
    ``data/warmup``, writing under ``out``. ``changes``: ``section__key=value`` overrides."""
    config = {
        "model": str(tiny_model), "max_length": 128,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "candidates": {"paths": [str(data / "pool.jsonl")]},
        "targets": [{"name": "word_problems", "path": str(data / "targets.jsonl")}],
        "warmup": {"output": str(data / "warmup"), "fraction": 0.25, "epochs": 2, "learning_rate": 1e-3,
                   "batch_size": 8},
        "featurize": {"output": str(out / "features"), "chunk_size": 16, "batch_size": 8,
                      "projection": {"dim": 4096}},
        "select": {"output": str(out / "selection"), "top_fraction": 0.1, "dedup": {"threshold": None}},
    }
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return config


def read_selection(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "part-00000-of-00001.jsonl").read_text().splitlines()]


def assert_same_selection(first: Path, second: Path) -> None:
    a, b = read_selection(first), read_selection(second)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    np.testing.assert_allclose([r["influence"]["score"] for r in a], [r["influence"]["score"] for r in b],
                               rtol=0, atol=1e-6)
