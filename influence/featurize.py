"""``mathsynth influence featurize``: target and candidate gradient features, streamed and sharded.

Candidates are read as a stream and cut into chunks of ``chunk_size`` consecutive rows; chunk j
belongs to shard ``j mod N`` (:class:`runner.ownership.ByChunk`). A chunk is the unit of work
and of resume: it is featurized at every checkpoint, written whole, and then listed in its
shard's part file (``{"id": "chunk-000012", "rows": ..., "examples": ...}``), so a rerun skips
the chunks listed. The candidates folder is the stage output the runner keeps (manifest, part
files, ``.done`` markers, the per-shard lock). The target features are a cache beside it, keyed
by each target set's definition: computed once, under a lock, by whichever process gets there
first, and again when a definition changes. Only one chunk of the corpus is held in memory.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from data.corpus import CorpusStats, read_corpus, resolve_sources
from data.errors import ConfigError, InputError
from data.jsonl import iter_json_objects
from data.records import Document
from data.shards import Shard
from data.storage import MANIFEST, StageOutput, atomic_write_json, read_json, waiting_lock
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
    require_finished_warmup,
)
from influence.store import (
    CandidateChunks,
    SpaceFile,
    candidates_folder,
    describe_space,
    save_array,
    targets_folder,
)
from runner.ownership import ByChunk
from runner.run import run_stage
from runner.stage import ShardWork, Stage

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


def featurize_targets(scoring: ScoringModel) -> dict[str, int]:
    config = scoring.config
    folder = targets_folder(config.featurize.output)
    counts = {}
    # One array task computes the targets; the others wait for it and then find them done.
    with waiting_lock(folder / ".lock"):
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


def chunk_id(index: int) -> str:
    return f"chunk-{index:06d}"


class FeaturizeStage(Stage):
    """Candidate features chunk by chunk (see the module docstring). ``side``: what the run
    covers, checked before anything is written; the targets themselves are computed by
    :func:`run_featurize`, outside the shard's life, since any shard may be the one to do it."""

    name = "influence-featurize"

    def __init__(self, config: InfluenceConfig, side: str = "both") -> None:
        super().__init__(config)
        self.side = side
        self.ownership = ByChunk(config.featurize.chunk_size)
        self.chunks = CandidateChunks(candidates_folder(config.featurize.output))
        self.shard_run: dict[str, Any] | None = None  # what this process's shard run did, if it ran

    @property
    def output(self) -> Path:
        return self.chunks.folder

    def inputs(self) -> list[str]:
        return [*self.config.candidates.paths, self.config.warmup.output]

    def manifest_config(self) -> dict[str, Any]:
        # Target sets are a cache keyed by their own definitions and select is a later step:
        # neither changes a candidate's features.
        return self.config.model_dump(mode="json", exclude={"targets", "select"})

    @cached_property
    def scoring(self) -> ScoringModel:
        return load_scoring_model(self.config)

    def check(self) -> None:
        """The warm-up is finished, the corpus is there, and the folders being added to hold
        features of this space and chunks of this corpus (the model is loaded to know the space)."""
        require_finished_warmup(self.config.warmup.output)
        resolve_sources(self.config.candidates.paths)
        if self.side != "candidates":
            SpaceFile(targets_folder(self.config.featurize.output)).check(self.scoring.spaces)
        if self.side != "targets":
            self.chunks.check_layout(self.config.featurize.chunk_size, corpus_identity(self.config))
            SpaceFile(self.chunks.folder).check(self.scoring.spaces)

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        config, chunks, shard = self.config, self.chunks, work.shard
        chunks.claim_layout(config.featurize.chunk_size, corpus_identity(config))
        SpaceFile(chunks.folder).claim(self.scoring.spaces)
        chunks.remove_stale_temporaries(shard.owns)
        corpus = CorpusStats()
        written = already = examples = 0
        started = time.monotonic()
        with work.progress("text") as advance:
            for index, docs in self.ownership.chunks(read_corpus(config.candidates, Shard(0, 1), corpus), shard):
                if chunk_id(index) in work.writer:
                    already += 1
                    continue
                if chunks.is_done(index):  # written whole by a run killed before listing it
                    kept = sum(1 for _ in chunks.rows(index))
                    already += 1
                else:
                    rows, features = self.featurize_chunk(docs, corpus)
                    chunks.write(index, rows, features)
                    kept = len(rows)
                    written += 1
                    examples += kept
                    advance(len(docs))
                work.writer.write({"id": chunk_id(index), "chunk": index, "rows": len(docs), "examples": kept})
        chunks.record_total(self.ownership.rows, config.featurize.chunk_size)  # the stream ended: the grid is known
        if corpus.skipped:
            log.warning("featurize %s: %s", shard, corpus.summary())
        elapsed = time.monotonic() - started
        self.shard_run = {"chunks_written": written, "chunks_already_done": already, "examples": examples,
                          "seconds": round(elapsed, 2), "examples_per_second": round(examples / max(elapsed, 1e-9), 2)}
        log.info("featurize %s: %s", shard, self.shard_run)
        work.writer.flush()
        listed = [row for _, row in iter_json_objects(work.writer.path)]
        return {**self.shard_run, "rows": sum(r["rows"] for r in listed), "examples": sum(r["examples"] for r in listed)}

    def featurize_chunk(self, docs: list[Document], corpus: CorpusStats) -> tuple[list[dict], dict[int, np.ndarray]]:
        """A chunk's rows (what select reads back) and their features at every checkpoint."""
        scoring = self.scoring
        examples, rows = [], []
        for doc in docs:
            example = candidate_example(doc, self.config, scoring.tokenizer, corpus)
            if example is None:
                continue
            examples.append(example)
            rows.append({"id": doc.id, "text": doc.text, "meta": doc.meta,
                         "location": str(doc.location) if doc.location else None,
                         "tokens": len(example.input_ids), "scored_tokens": example.scored_tokens})
        dtype = np.dtype(self.config.featurize.store_dtype)
        return rows, {c.epoch: scoring.features(examples, c.epoch, adam=True).astype(dtype) for c in scoring.checkpoints}

    def this_run(self, shard: Shard) -> dict[str, Any]:
        """What this process did for ``shard``: its shard run, or nothing when it was sealed."""
        if self.shard_run is not None:
            return self.shard_run
        total = self.chunks.total() or {"chunks": 0}
        owned = sum(1 for j in range(total["chunks"]) if shard.owns(j))
        return {"chunks_written": 0, "chunks_already_done": owned, "examples": 0}

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        return (f"{counts.get('records', 0)} chunks, {counts.get('examples', 0)} candidates featurized "
                f"({len(manifest.get('shards_done', []))} of {manifest.get('num_shards', '?')} shards done)")


def finished_with_another_layout(stage: FeaturizeStage, shard: Shard) -> dict[str, Any] | None:
    """Chunks, not shards, are the unit: a finished candidate store serves a resubmission with
    another array size, as a no-op (every chunk a task owns is there). Its manifest, or None when
    the store is unfinished or of this layout (the runner's case)."""
    path = stage.output / MANIFEST
    held = read_json(path) if path.is_file() else None
    if held is None or not held.get("complete") or held.get("num_shards") == shard.count:
        return None
    # Opening it under its own layout refuses a folder of another config, and writes nothing.
    StageOutput(stage.output, stage=stage.name, config=stage.manifest_config(), num_shards=held["num_shards"],
                operational=stage.operational_keys())
    return held


def run_featurize(config: InfluenceConfig, shard: Shard, side: str = "both") -> dict[str, Any]:
    """Targets (``side`` both or targets) and this shard's candidate chunks (both or candidates).
    Returns the candidate store's manifest with what this run did: ``targets`` (examples per
    set), ``candidates`` (chunks written and already done)."""
    stage = FeaturizeStage(config, side)
    stage.check()  # both sides, before the targets are written
    scoring = stage.scoring
    facts: dict[str, Any] = {"checkpoints": [c.epoch for c in scoring.checkpoints], "dim": scoring.featurizer.dim,
                             "lora_parameters": scoring.featurizer.num_parameters}
    if side != "candidates":
        facts["targets"] = featurize_targets(scoring)
    if side == "targets":
        path = stage.output / MANIFEST
        return {**(read_json(path) if path.is_file() else {}), **facts}
    manifest = finished_with_another_layout(stage, shard)
    if manifest is None:
        manifest = run_stage(stage, shard)
    return {**manifest, **facts, "candidates": stage.this_run(shard)}
