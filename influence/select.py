"""``mathsynth influence select``: score candidates against the targets and pick the best.

Score of a candidate = sum over checkpoints e of (eta_e / sum eta) * cos(candidate_e, target_e),
where target_e is the mean of a target set's normalised gradients (LESS); then the max (or mean)
over target sets.

``--shard I/N`` scores only the chunks of shard I (chunk j mod N), so scoring runs as a Slurm
array too; scores are a cache beside the features (written atomically under per-process temp
names, so two processes scoring the same chunk cannot tear a file), not a stage output. Without
it, the merge is a stage of one job (:class:`SelectStage`): any chunk not yet scored is scored,
then the global top-k (or top fraction) from all chunks' scores, near-duplicate removal and
optional cluster quotas among the best candidates, and the selection written to ``select.output``
as a stage output that ``distill`` reads as its corpus, with a report of its length and source
bias (``report.json``, ``report.md``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import InputError
from data.records import content_id
from data.shards import Shard
from data.storage import atomic_write_json, atomic_write_text, read_json
from influence.config import InfluenceConfig
from influence.lora import require_finished_warmup
from influence.selection import (
    cluster_quota_select,
    rank,
    remove_near_duplicates,
    render_report_markdown,
    selection_report,
    selection_size,
)
from influence.store import (
    CandidateChunks,
    SpaceFile,
    candidates_folder,
    check_same_space,
    save_array,
    targets_folder,
)
from runner.ownership import Whole
from runner.run import run_stage
from runner.stage import ShardWork, Stage

log = logging.getLogger(__name__)


def _target_folder(config: InfluenceConfig) -> Path:
    return targets_folder(config.select.target_features or config.featurize.output)


def load_target_means(config: InfluenceConfig, epochs: list[int]) -> dict[str, dict[int, np.ndarray]]:
    folder = _target_folder(config)
    means = {}
    for target in config.targets:
        means[target.name] = {}
        held = folder / target.name / "target.json"
        if not (folder / target.name / "ids.json").exists() or not held.exists():
            raise InputError(f"{folder / target.name}: no target features; run `mathsynth influence featurize --side targets`")
        if read_json(held) != target.model_dump(mode="json"):
            raise InputError(f"targets.{target.name}: changed since its features were computed ({held}); "
                             "run `mathsynth influence featurize --side targets` again")
        for epoch in epochs:
            path = folder / target.name / f"epoch-{epoch}.npy"
            if not path.exists():
                raise InputError(f"{path}: no target features; run `mathsynth influence featurize --side targets`")
            means[target.name][epoch] = np.load(path).astype(np.float32).mean(axis=0)
    return means


def checkpoint_weights(spaces: dict[str, Any], warmup_folder: str) -> dict[int, float]:
    """eta_e / sum eta for the checkpoints the features were computed at."""
    from influence.lora import learning_rate_weights, list_checkpoints

    epochs = sorted(int(e) for e in spaces)
    checkpoints = list_checkpoints(warmup_folder, epochs)
    return dict(zip(epochs, learning_rate_weights(checkpoints)))


class Scorer:
    def __init__(self, config: InfluenceConfig) -> None:
        self.config = config
        self.chunks = CandidateChunks(candidates_folder(config.featurize.output))
        candidate_space = SpaceFile(self.chunks.folder).read()
        if candidate_space is None:
            raise InputError(f"{self.chunks.folder}: no candidate features; run `mathsynth influence featurize`")
        target_space = SpaceFile(_target_folder(config)).read()
        if target_space is None:
            raise InputError(f"{_target_folder(config)}: no target features; run `mathsynth influence featurize`")
        check_same_space(target_space, candidate_space,
                         f"target features ({_target_folder(config)}) and candidate features ({self.chunks.folder}) "
                         "come from different feature spaces", "featurize both with the same model, checkpoints "
                         "and projection")
        self.epochs = sorted(int(e) for e in candidate_space)
        self.weights = checkpoint_weights(candidate_space, config.warmup.output)
        self.means = load_target_means(config, self.epochs)
        self.target_names = [t.name for t in config.targets]
        definitions = [read_json(_target_folder(config) / name / "target.json") for name in self.target_names]
        key = {"space": {e: candidate_space[e]["hash"] for e in candidate_space}, "targets": definitions,
               "weights": self.weights, "target_folder": str(_target_folder(config).resolve())}
        # Kept beside the features: a new selection (another top_k, say) reuses them.
        self.scores_folder = Path(config.featurize.output) / f"scores-{content_id(key)}"

    def score_chunk(self, index: int) -> np.ndarray:
        """(rows, targets) scores of one chunk, computed once and kept."""
        path = self.scores_folder / f"chunk-{index:06d}.npy"
        if path.exists():
            return np.load(path)
        scores = None
        for epoch in self.epochs:
            features = np.asarray(self.chunks.features(index, epoch), dtype=np.float32)
            targets = np.stack([self.means[name][epoch] for name in self.target_names], axis=1)
            part = self.weights[epoch] * (features @ targets)
            scores = part if scores is None else scores + part
        self.scores_folder.mkdir(parents=True, exist_ok=True)
        save_array(path, scores)
        return scores


def required_chunks(chunks: CandidateChunks, shard: Shard = Shard(0, 1)) -> list[int]:
    """The chunks ``shard`` owns, once every one of them is featurized."""
    total = chunks.total()
    if total is None:
        raise InputError(f"{chunks.folder}: featurize has not reached the end of the corpus yet "
                         "(no total.json); finish every featurize shard first")
    owned = [j for j in range(total["chunks"]) if j % shard.count == shard.index]
    missing = [j for j in owned if not chunks.is_done(j)]
    if missing:
        raise InputError(f"{chunks.folder}: chunks {missing[:10]}{' ...' if len(missing) > 10 else ''} of "
                         f"{total['chunks']} not featurized (chunk j belongs to featurize shard j mod N); finish them first")
    return owned


def score_shard(config: InfluenceConfig, shard: Shard) -> dict[str, Any]:
    scorer = Scorer(config)
    owned = required_chunks(scorer.chunks, shard)
    for index in owned:
        scorer.score_chunk(index)
    return {"shard": str(shard), "chunks_scored": len(owned), "scores": str(scorer.scores_folder)}


def _source(row: dict[str, Any], field: str) -> str:
    value = row.get("meta", {}).get(field)
    if isinstance(value, str) and value:
        return value
    location = row.get("location") or "unknown"
    return Path(location.rsplit(":", 1)[0]).name


class SelectStage(Stage):
    """The merge: one job, whose output folder is the selection."""

    name = "influence-select"
    ownership = Whole()

    @property
    def output(self) -> Path:
        return Path(self.config.select.output)

    def inputs(self) -> list[str]:
        return [str(candidates_folder(self.config.featurize.output)), str(_target_folder(self.config)),
                self.config.warmup.output]

    def check(self) -> None:
        """Features of one space for every chunk, target features of these definitions (the
        scorer that checked them is kept for ``run_shard``)."""
        require_finished_warmup(self.config.warmup.output)
        self.scorer = Scorer(self.config)
        self.chunk_indices = required_chunks(self.scorer.chunks)

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        records, report = select(self.config, self.scorer, self.chunk_indices)
        for record in records:
            work.writer.write(record)
        atomic_write_json(self.output / "report.json", report)
        atomic_write_text(self.output / "report.md", render_report_markdown(report))
        for warning in report.get("warnings", []):
            log.warning("selection: %s", warning)
        work.output.annotate_manifest({"selection": {"pool": report["pool"], "selected": report["selected"]},
                                       "report": "report.json"})
        return {"selected": len(records), "pool": report["pool"]}

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        return (f"{counts.get('selected', 0)} of {counts.get('pool', 0)} candidates selected "
                f"(report: {Path(self.output) / 'report.md'})")


def run_select(config: InfluenceConfig) -> dict[str, Any]:
    """Score what is left, merge, select, write. Returns the output's manifest."""
    return run_stage(SelectStage(config), Shard(0, 1))


def select(config: InfluenceConfig, scorer: Scorer, chunk_indices: list[int]) -> tuple[list[dict], dict[str, Any]]:
    """The selection's records, best first, and its report."""
    settings = config.select
    per_target, chunk_of, offset_of, lengths, sources = [], [], [], [], []
    for index in chunk_indices:
        scores = scorer.score_chunk(index)
        per_target.append(scores)
        chunk_of.append(np.full(len(scores), index, dtype=np.int64))
        offset_of.append(np.arange(len(scores), dtype=np.int64))
        for row in scorer.chunks.rows(index):
            lengths.append(row["tokens"])
            sources.append(_source(row, settings.source_field))
    per_target_all = np.concatenate(per_target) if per_target else np.zeros((0, len(scorer.target_names)))
    chunk_of_all, offset_of_all = np.concatenate(chunk_of), np.concatenate(offset_of)
    scores = per_target_all.max(axis=1) if settings.aggregate == "max" else per_target_all.mean(axis=1)
    n = len(scores)
    if n == 0:
        raise InputError(f"{scorer.chunks.folder}: no candidates were featurized")
    n_select = selection_size(n, top_k=settings.top_k, top_fraction=settings.top_fraction)
    ranked = rank(scores)
    selected, dropped, clusters = _pick(scorer, ranked, n_select, chunk_of_all, offset_of_all, config)
    report = selection_report(selected, scores, np.asarray(lengths), sources, dropped_duplicates=dropped)
    if clusters is not None:
        report["diversity"] = clusters
    report["targets"] = scorer.target_names
    report["checkpoint_weights"] = {str(e): round(w, 6) for e, w in scorer.weights.items()}
    return _selected_records(scorer, selected, scores, per_target_all, chunk_of_all, offset_of_all), report


def _pick(scorer: Scorer, ranked: np.ndarray, n_select: int, chunk_of: np.ndarray, offset_of: np.ndarray,
          config: InfluenceConfig) -> tuple[np.ndarray, int, dict[str, Any] | None]:
    """The selection (global indices, best first), how many near-duplicates were dropped, and
    with cluster quotas, the clusters' sizes in the pool and in the selection.

    Dedup and quotas look at the best ``pool_factor`` x n_select candidates; when dedup leaves
    fewer than needed, the pool doubles until it is enough or everything was looked at.
    """
    settings = config.select
    if settings.dedup.threshold is None and settings.diversity.clusters == 0:
        return ranked[:n_select], 0, None
    pool_size = min(len(ranked), math.ceil(n_select * settings.pool_factor))
    last_epoch = scorer.epochs[-1]
    while True:
        pool = ranked[:pool_size]
        features = _gather_features(scorer, pool, chunk_of, offset_of, last_epoch)
        kept, dropped = np.arange(len(pool)), {}
        if settings.dedup.threshold is not None:
            kept, dropped = remove_near_duplicates(features, kept, settings.dedup.threshold)
        if len(kept) >= n_select or pool_size == len(ranked):
            break
        pool_size = min(len(ranked), pool_size * 2)
    n_take = min(n_select, len(kept))
    clusters = None
    if settings.diversity.clusters > 0:
        chosen, cluster_of = cluster_quota_select(features, kept, n_take, n_clusters=settings.diversity.clusters,
                                                  seed=settings.diversity.seed)
        count = int(cluster_of.max()) + 1
        clusters = {"clusters": count, "pool": len(kept),
                    "pool_sizes": np.bincount(cluster_of[kept], minlength=count).tolist(),
                    "selected_sizes": np.bincount(cluster_of[np.asarray(chosen)], minlength=count).tolist()}
    else:
        chosen = kept[:n_take]
    return pool[np.asarray(chosen, dtype=np.int64)], len(dropped), clusters


def _gather_features(scorer: Scorer, indices: np.ndarray, chunk_of: np.ndarray, offset_of: np.ndarray,
                     epoch: int) -> np.ndarray:
    """Features of some candidates, read chunk by chunk from the memory-mapped files."""
    out = None
    for index in np.unique(chunk_of[indices]):
        rows = np.nonzero(chunk_of[indices] == index)[0]
        block = scorer.chunks.features(int(index), epoch)
        if out is None:
            out = np.zeros((len(indices), block.shape[1]), dtype=np.float32)
        out[rows] = block[offset_of[indices[rows]]]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-30)  # stored in float16: renormalise


def _selected_records(scorer: Scorer, selected: np.ndarray, scores: np.ndarray, per_target: np.ndarray,
                      chunk_of: np.ndarray, offset_of: np.ndarray) -> list[dict[str, Any]]:
    wanted: dict[int, dict[int, int]] = {}  # chunk -> offset -> position in the selection
    for position, g in enumerate(selected):
        wanted.setdefault(int(chunk_of[g]), {})[int(offset_of[g])] = position
    records: list[dict[str, Any] | None] = [None] * len(selected)
    for index, offsets in wanted.items():
        for offset, row in enumerate(scorer.chunks.rows(index)):
            if offset in offsets:
                position = offsets[offset]
                g = int(selected[position])
                records[position] = {
                    **row.get("meta", {}), "id": row["id"], "text": row["text"],
                    "influence": {"rank": position + 1, "score": round(float(scores[g]), 6),
                                  "by_target": {name: round(float(per_target[g, k]), 6)
                                                for k, name in enumerate(scorer.target_names)},
                                  "source_location": row.get("location")},
                }
    return records
