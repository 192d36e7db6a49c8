"""``mathsynth influence featurize``: target and candidate gradient features, streamed and sharded.

Candidates are read as a stream and cut into chunks of ``chunk_size`` consecutive rows; chunk j
belongs to Slurm array task ``j mod N``. A chunk is the unit of work and of resume: it is
featurized at every checkpoint, then written whole. The corpus is never held in memory, only one
chunk of it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data.corpus import CorpusStats, read_corpus, resolve_sources
from data.errors import ConfigError, InputError
from data.progress import progress_bar
from data.records import Document
from data.shards import Shard
from data.storage import atomic_write_json, read_json
from influence.config import InfluenceConfig, TargetSet
from influence.examples import (
    TARGET_PROMPT,
    TokenizedExample,
    candidate_example,
    tokenize_example,
)
from influence.featurizer import Featurizer
from influence.gradients import AdamDirection
from influence.lora import (
    Checkpoint,
    apply_weights,
    attach_lora,
    list_checkpoints,
    read_checkpoint,
)
from influence.store import (
    CandidateChunks,
    SpaceFile,
    describe_space,
    save_array,
)

log = logging.getLogger(__name__)


@dataclass
class ScoringModel:
    """The LoRA model, its checkpoints held in memory, and the featurizer over it."""

    config: InfluenceConfig
    tokenizer: Any
    featurizer: Featurizer
    checkpoints: list[Checkpoint]
    states: dict[int, tuple[dict, Any]]  # epoch -> (LoRA weights, Adam state)
    spaces: dict[int, dict[str, Any]]  # epoch -> feature-space description

    directions: dict[int, AdamDirection] = field(default_factory=dict)  # epoch -> its Adam transform

    def features(self, examples: list[TokenizedExample], epoch: int, *, adam: bool) -> np.ndarray:
        weights, state = self.states[epoch]
        apply_weights(self.featurizer.gradients.model, weights)
        direction = None
        if adam:
            if epoch not in self.directions:  # built once: it scales the moments on the device
                self.directions[epoch] = AdamDirection(state, self.featurizer.device)
            direction = self.directions[epoch]
        return self.featurizer.featurize(examples, adam=direction)


def load_scoring_model(config: InfluenceConfig) -> ScoringModel:
    import torch

    from llm.loading import (
        load_model,
        load_tokenizer,
        model_fingerprint,
        resolve_model_path,
    )

    checkpoints = list_checkpoints(config.warmup.output, config.featurize.checkpoints)
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, dtype=config.dtype, device=config.device)
    torch.manual_seed(0)  # LoRA init is overwritten by each checkpoint; seeded anyway
    model = attach_lora(model, config.lora, for_training=False)
    featurizer = Featurizer(model, tokenizer.pad_token_id, config.featurize.projection, config.featurize.batch_size)
    fingerprint = model_fingerprint(resolve_model_path(config.model))
    spaces = {
        c.epoch: describe_space(model=fingerprint, checkpoint=c.fingerprint(), lora=config.lora.model_dump(),
                                projection=config.featurize.projection.model_dump(), order=featurizer.order,
                                dtype=str(next(model.parameters()).dtype), max_length=config.max_length)
        for c in checkpoints
    }
    states = {c.epoch: read_checkpoint(c) for c in checkpoints}
    return ScoringModel(config, tokenizer, featurizer, checkpoints, states, spaces)


# ---------------------------------------------------------------------------------- targets


def target_rows(target: TargetSet) -> list[tuple[str, str, str]]:
    """(id, solution, question shown as the prompt) of a target set."""
    if target.benchmark is not None:
        from data.benchmarks.registry import BENCHMARKS, EXEMPLAR_POOLS, load_benchmark

        spec = EXEMPLAR_POOLS[target.benchmark].spec if target.benchmark in EXEMPLAR_POOLS else None
        if spec is None and target.benchmark not in BENCHMARKS:
            known = sorted(EXEMPLAR_POOLS) + sorted(BENCHMARKS)
            raise ConfigError(f"targets.{target.name}.benchmark: unknown {target.benchmark!r}; known: {', '.join(known)}")
        records = load_benchmark(spec or target.benchmark, limit=target.limit)
        rows = [(r.id, r.reference_solution, r.question) for r in records if r.reference_solution]
        if not rows:
            raise ConfigError(f"targets.{target.name}: {target.benchmark} has no worked solutions to take gradients of")
        return rows
    from data.jsonl import iter_json_objects

    rows = []
    for line, row in iter_json_objects(target.path):
        where = f"{target.path}:{line}"
        prompt, completion = row.get(target.prompt_field), row.get(target.completion_field)
        for name, value in ((target.prompt_field, prompt), (target.completion_field, completion)):
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: target field {name!r} missing or empty")
        rows.append((str(row.get("id", f"{target.name}/{line}")), completion, prompt))
        if target.limit is not None and len(rows) >= target.limit:
            break
    return rows


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One array task computes the targets; the others wait for it and then find them done."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def featurize_targets(scoring: ScoringModel) -> dict[str, int]:
    config = scoring.config
    folder = Path(config.featurize.output) / "targets"
    counts = {}
    with _exclusive(folder / ".lock"):
        SpaceFile(folder).claim(scoring.spaces)
        for target in config.targets:
            out = folder / target.name
            ids_path, definition = out / "ids.json", target.model_dump(mode="json")
            # ids.json is written last and target.json names what was featurized: a set whose
            # definition changed (another file, limit or field) is computed again.
            if (ids_path.exists() and all((out / f"epoch-{c.epoch}.npy").exists() for c in scoring.checkpoints)
                    and read_json(out / "target.json") == definition):
                counts[target.name] = len(json.loads(ids_path.read_text()))
                continue
            ids_path.unlink(missing_ok=True)
            rows = target_rows(target)
            examples = [tokenize_example(scoring.tokenizer, i, solution, TARGET_PROMPT.format(prompt=question),
                                         config.max_length) for i, solution, question in rows]
            out.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            for c in scoring.checkpoints:
                save_array(out / f"epoch-{c.epoch}.npy", scoring.features(examples, c.epoch, adam=False))
            atomic_write_json(out / "target.json", definition)
            atomic_write_json(ids_path, [e.id for e in examples])
            log.info("targets %s: %d examples x %d checkpoints in %.1fs", target.name, len(examples),
                     len(scoring.checkpoints), time.monotonic() - started)
            counts[target.name] = len(examples)
    return counts


# ------------------------------------------------------------------------------- candidates


def corpus_identity(config: InfluenceConfig) -> dict[str, Any]:
    """The candidate corpus as chunks depend on it: how it is read, and its files by name and
    size (not modification time: a copy on another node is the same corpus)."""
    files = resolve_sources(config.candidates.paths)
    return {"input": config.candidates.model_dump(mode="json"),
            "files": [[path, os.path.getsize(path) if os.path.isfile(path) else None] for path in files]}


class _ChunkStream:
    """The corpus as consecutive chunks of ``chunk_size`` rows; yields (chunk index, its
    documents) for the chunks ``shard`` owns. Every shard reads the whole stream, so chunk
    boundaries are the same whatever the number of shards; ``rows`` counts what was seen."""

    def __init__(self, config: InfluenceConfig, shard: Shard, stats: CorpusStats) -> None:
        self.config, self.shard, self.stats = config, shard, stats
        self.rows = 0

    def __iter__(self) -> Iterator[tuple[int, list[Document]]]:
        size = self.config.featurize.chunk_size
        current, docs = 0, []
        for doc in read_corpus(self.config.candidates, Shard(0, 1), self.stats):
            index = self.rows // size
            self.rows += 1
            if index != current:
                if docs:
                    yield current, docs
                current, docs = index, []
            if index % self.shard.count == self.shard.index:
                docs.append(doc)
        if docs:
            yield current, docs


def featurize_candidates(scoring: ScoringModel, shard: Shard) -> dict[str, Any]:
    config = scoring.config
    chunks = CandidateChunks(Path(config.featurize.output) / "candidates")
    chunks.claim_layout(config.featurize.chunk_size, corpus_identity(config))
    SpaceFile(chunks.folder).claim(scoring.spaces)
    stats = CorpusStats()
    done_before, written, examples_done = 0, 0, 0
    started = time.monotonic()
    with progress_bar(f"featurize candidates {shard}", unit="text") as advance:
        stream = _ChunkStream(config, shard, stats)
        for index, docs in stream:
            if chunks.is_done(index):
                done_before += 1
                continue
            examples, rows = [], []
            for doc in docs:
                example = candidate_example(doc, config, scoring.tokenizer, stats)
                if example is None:
                    continue
                examples.append(example)
                rows.append({"id": doc.id, "text": doc.text, "meta": doc.meta,
                             "location": str(doc.location) if doc.location else None,
                             "tokens": len(example.input_ids), "scored_tokens": example.scored_tokens})
            dtype = np.dtype(config.featurize.store_dtype)
            features = {c.epoch: scoring.features(examples, c.epoch, adam=True).astype(dtype) for c in scoring.checkpoints}
            chunks.write(index, rows, features)
            written += 1
            examples_done += len(examples)
            advance(len(examples))
    chunks.record_total(stream.rows, config.featurize.chunk_size)  # the stream ended: the grid is known
    elapsed = time.monotonic() - started
    summary = {"shard": str(shard), "chunks_written": written, "chunks_already_done": done_before,
               "examples": examples_done, "seconds": round(elapsed, 2),
               "examples_per_second": round(examples_done / elapsed, 2) if elapsed > 0 else None,
               "corpus": stats.as_dict()}
    atomic_write_json(chunks.folder / f"shard-{shard.index:05d}-of-{shard.count:05d}.json", summary)
    return summary


def run_featurize(config: InfluenceConfig, shard: Shard, side: str = "both") -> dict[str, Any]:
    scoring = load_scoring_model(config)
    summary: dict[str, Any] = {"checkpoints": [c.epoch for c in scoring.checkpoints],
                               "dim": scoring.featurizer.dim, "lora_parameters": scoring.featurizer.num_parameters}
    if side in ("both", "targets"):
        summary["targets"] = featurize_targets(scoring)
    if side in ("both", "candidates"):
        summary["candidates"] = featurize_candidates(scoring, shard)
    return summary
