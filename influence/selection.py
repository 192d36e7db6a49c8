"""From influence scores to a selected subset: rank, drop near-duplicates, keep diversity, report bias.

Pure numpy + faiss, no model: everything here runs on a laptop and is tested against brute force.
The features are the (projected, L2-normalised) gradient features the scores came from, so
"near-duplicate" and "cluster" mean "pushes the model the same way", not "reads the same".
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

import faiss
import numpy as np

# faiss computes inner products in float32 with BLAS, so a pair at the threshold can land on either
# side depending on batch shape. Candidates are searched with this much slack and pairs inside the
# band are re-decided in float64, which makes the result independent of batching and BLAS.
_SLACK = 1e-3
_NORM_TOLERANCE = 1e-3
_LENGTH_RATIO_BOUNDS = (0.67, 1.5)
_LIFT_BOUNDS = (0.5, 2.0)
_MIN_SHARE_FOR_LIFT_WARNING = 0.05


def rank(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores`` best (highest) first; ties keep the lower index first.

    NaN scores are refused rather than sorted last: a NaN means a broken gradient upstream, and
    silently ranking it would hide that.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {values.shape}")
    n_nan = int(np.isnan(values).sum())
    if n_nan:
        raise ValueError(f"{n_nan} of {len(values)} scores are NaN")
    # A stable sort of the negated scores keeps equal scores in index order.
    return np.argsort(-values, kind="stable")


def selection_size(n: int, *, top_k: int | None, top_fraction: float | None) -> int:
    """How many of ``n`` scored items to select, from exactly one of ``top_k`` / ``top_fraction``."""
    if n < 0:
        raise ValueError(f"pool size must be >= 0, got {n}")
    if (top_k is None) == (top_fraction is None):
        raise ValueError("give exactly one of top_k and top_fraction")
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        return min(int(top_k), n)
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if n == 0:
        return 0
    # Rounding first keeps float noise from adding an item: 0.1 * 30 is 3.0000000000000004.
    return max(1, math.ceil(round(top_fraction * n, 9)))


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """``features`` as contiguous float32 (what faiss takes), after checking rows are unit length,
    since inner product only means cosine for L2-normalised rows."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be (m, d), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    bad = int((np.abs(norms - 1) > _NORM_TOLERANCE).sum())
    if bad:
        raise ValueError(f"{bad} of {len(x)} feature rows are not L2-normalised")
    return x


def _checked_indices(indices: np.ndarray, m: int, name: str = "ranked") -> np.ndarray:
    """``indices`` as int64 after checking they name each of ``m`` rows at most once (a repeat would
    let an item be its own duplicate, fill two slots, or count twice in a report)."""
    order = np.asarray(indices, dtype=np.int64)
    if order.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {order.shape}")
    if order.size and (order.min() < 0 or order.max() >= m):
        raise ValueError(f"{name} holds indices outside [0, {m})")
    if len(np.unique(order)) != len(order):
        raise ValueError(f"{name} holds repeated indices")
    return order


def _exact_cosines(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 cosines of row pairs (a[i], b[i]), in chunks so a long pair list stays small in memory."""
    out = np.empty(len(a), dtype=np.float64)
    chunk = max(1, (1 << 22) // max(1, x.shape[1]))
    for start in range(0, len(a), chunk):
        rows_a = x[a[start : start + chunk]].astype(np.float64)
        rows_b = x[b[start : start + chunk]].astype(np.float64)
        out[start : start + chunk] = np.einsum("ij,ij->i", rows_a, rows_b)
    return out


def _earlier_neighbours(
    index: faiss.Index, pool: np.ndarray, start: int, stop: int, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (position p in [start, stop), earlier position q < p) whose cosine is >= threshold,
    grouped by p in increasing order. Later neighbours are dropped: the greedy pass never needs them."""
    lims, sims, neighbours = index.range_search(pool[start:stop], threshold - _SLACK)
    counts = np.diff(lims.astype(np.int64))
    queries = start + np.repeat(np.arange(stop - start, dtype=np.int64), counts)
    earlier = neighbours < queries
    queries, neighbours, sims = queries[earlier], neighbours[earlier], sims[earlier]
    borderline = sims < threshold + _SLACK
    if borderline.any():
        exact = _exact_cosines(pool, queries[borderline], neighbours[borderline]) >= threshold
        keep = ~borderline
        keep[np.flatnonzero(borderline)[exact]] = True
        queries, neighbours = queries[keep], neighbours[keep]
    return queries, neighbours


def remove_near_duplicates(
    features: np.ndarray, ranked: np.ndarray, threshold: float, *, batch: int = 4096
) -> tuple[np.ndarray, dict[int, int]]:
    """Greedy near-duplicate removal in preference order.

    Walk ``ranked`` (indices into ``features``, best first); an item is dropped when its cosine with
    an already kept item is >= ``threshold``, so of each group of near-copies the best-scored one
    survives. Returns (kept indices in ranked order, {dropped index: best-ranked kept index it
    duplicates}). Only items in ``ranked`` take part. Cosines are decided in float64, so exact copies
    can miss a threshold of exactly 1.0: use e.g. 0.999 for "identical".

    faiss range search finds the neighbour lists ``batch`` queries at a time (memory grows with the
    batch, not the pool); the greedy decisions are made batch by batch as the lists arrive.
    """
    x = _unit_rows(features)
    order = _checked_indices(ranked, len(x))
    if not 0 < threshold <= 1:
        # A non-positive radius would return most of the pool as neighbours of every query.
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if order.size == 0:
        return order, {}

    pool = np.ascontiguousarray(x[order])  # positions in ranked order from here on
    index = faiss.IndexFlatIP(pool.shape[1])
    kept = np.zeros(len(pool), dtype=bool)
    dropped: dict[int, int] = {}
    for start in range(0, len(pool), batch):
        stop = min(start + batch, len(pool))
        # The index grows with the walk: only earlier items can make an item a duplicate, so
        # searching the not-yet-reached part of the pool would be wasted (about half the work).
        index.add(pool[start:stop])
        queries, neighbours = _earlier_neighbours(index, pool, start, stop, threshold)
        # Items with no earlier near neighbour are kept whatever happens; the others are decided in
        # position order, so each sees the final state of every item ranked before it.
        kept[start:stop] = True
        positions, group_starts = np.unique(queries, return_index=True)
        for p, candidates in zip(positions, np.split(neighbours, group_starts[1:])):
            kept_candidates = candidates[kept[candidates]]
            if kept_candidates.size:
                kept[p] = False
                dropped[int(order[p])] = int(order[kept_candidates.min()])
    return order[kept], dropped


def _quotas(sizes: np.ndarray, n_select: int) -> np.ndarray:
    """Largest-remainder (Hamilton) split of ``n_select`` slots in proportion to cluster ``sizes``.
    Equal remainders go to the lower cluster id, i.e. the cluster holding the better-ranked item."""
    exact = sizes * n_select / sizes.sum()
    quotas = np.floor(exact).astype(np.int64)
    short = n_select - int(quotas.sum())
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[:short]] += 1
    return np.minimum(quotas, sizes)


def _spherical_kmeans_labels(x: np.ndarray, k: int, *, seed: int, niter: int) -> np.ndarray:
    """Cluster label of each row of ``x`` from spherical k-means with ``k`` centroids."""
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        # k-means++ seeding: random seeding often puts two centroids in one big cluster and never
        # finds a small one, which is exactly the cluster a diversity quota is meant to protect.
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
        # Small pools are legitimate here; faiss would otherwise warn about too few points.
        min_points_per_centroid=1,
    )
    kmeans.train(x)
    _, labels = kmeans.index.search(x, 1)
    return labels[:, 0].astype(np.int64)


def cluster_quota_select(
    features: np.ndarray,
    ranked: np.ndarray,
    n_select: int,
    *,
    n_clusters: int,
    seed: int = 0,
    niter: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Select ``n_select`` of ``ranked`` so every gradient cluster keeps its share of the pool.

    Top-k on influence scores alone tends to pick many items that help in the same way; here each
    spherical k-means cluster of ``features[ranked]`` gets a quota proportional to its size
    (largest-remainder rounding, so quotas sum to ``n_select``) and fills it with its best-ranked
    members. Slots a cluster cannot fill go to the best-ranked items left over.

    Returns (selected indices ordered by their position in ``ranked``, cluster id for every row of
    ``features``, -1 for rows not in ``ranked``). Cluster ids are numbered by their best-ranked
    member (cluster 0 holds ``ranked[0]``), so they do not depend on faiss's internal numbering.
    """
    x = _unit_rows(features)
    order = _checked_indices(ranked, len(x))
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    if not 0 <= n_select <= len(order):
        raise ValueError(f"n_select must be in [0, {len(order)}], got {n_select}")
    cluster_of = np.full(len(x), -1, dtype=np.int64)
    if order.size == 0:
        return order, cluster_of

    raw = _spherical_kmeans_labels(
        np.ascontiguousarray(x[order]), min(n_clusters, len(order)), seed=seed, niter=niter
    )
    _, first_seen, by_position = np.unique(raw, return_index=True, return_inverse=True)
    renumber = np.argsort(np.argsort(first_seen))  # faiss label -> id by first appearance
    labels = renumber[by_position]
    cluster_of[order] = labels

    quotas = _quotas(np.bincount(labels), n_select)
    # Rank of each position within its own cluster (0 = the cluster's best-ranked member).
    rank_in_cluster = np.empty(len(order), dtype=np.int64)
    for cluster in range(len(quotas)):
        members = np.flatnonzero(labels == cluster)
        rank_in_cluster[members] = np.arange(len(members))
    chosen = rank_in_cluster < quotas[labels]
    shortfall = n_select - int(chosen.sum())
    if shortfall:  # only when a quota exceeded its cluster; best-ranked leftovers fill the gap
        chosen[np.flatnonzero(~chosen)[:shortfall]] = True
    return order[chosen], cluster_of


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (what Spearman's rho needs)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho: Pearson correlation of average ranks; None when either side is constant."""
    if len(a) < 2:
        return None
    ra = _average_ranks(a) - (len(a) + 1) / 2
    rb = _average_ranks(b) - (len(b) + 1) / 2
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return None if denominator == 0 else float(ra @ rb) / denominator


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


def _source_rows(sources: list[str], selected: np.ndarray) -> list[dict[str, Any]]:
    """Per-source counts and shares in pool and selection; lift > 1 means over-represented."""
    pool_counts = Counter(sources)
    selected_counts = Counter(sources[i] for i in selected)
    rows = []
    for source, count in sorted(pool_counts.items(), key=lambda item: (-item[1], item[0])):
        pool_share = count / len(sources)
        selected_share = selected_counts[source] / len(selected) if len(selected) else None
        rows.append({
            "source": source,
            "pool": count,
            "pool_share": _round(pool_share),
            "selected": selected_counts[source],
            "selected_share": _round(selected_share),
            "lift": None if selected_share is None else _round(selected_share / pool_share),
        })
    return rows


def _warnings(length: dict[str, Any], source_rows: list[dict[str, Any]]) -> list[str]:
    """One line per bias worth a human look: influence scores are known to favour short texts
    (gradient norm falls with length), and a selection can quietly drop or flood a source."""
    warnings = []
    ratio = length["ratio_of_means"]
    if ratio is not None and not _LENGTH_RATIO_BOUNDS[0] <= ratio <= _LENGTH_RATIO_BOUNDS[1]:
        side = "short" if ratio < _LENGTH_RATIO_BOUNDS[0] else "long"
        warnings.append(
            f"selection favours {side} texts: mean length {length['selected_mean']:g} "
            f"vs {length['pool_mean']:g} in the pool"
        )
    for row in source_rows:
        lift = row["lift"]
        if lift is None or row["pool_share"] < _MIN_SHARE_FOR_LIFT_WARNING:
            continue
        if not _LIFT_BOUNDS[0] <= lift <= _LIFT_BOUNDS[1]:
            side = "under" if lift < _LIFT_BOUNDS[0] else "over"
            warnings.append(
                f"source {row['source']!r} is {side}-represented: {row['selected_share']:.1%} of the "
                f"selection vs {row['pool_share']:.1%} of the pool (lift {lift:g})"
            )
    return warnings


def selection_report(
    selected: np.ndarray,
    scores: np.ndarray,
    lengths: np.ndarray,
    sources: list[str] | np.ndarray,
    *,
    dropped_duplicates: int = 0,
) -> dict:
    """A JSON-serialisable report of how the selection differs from the whole scored pool.

    ``scores``, ``lengths`` and ``sources`` describe every pool item; ``selected`` indexes them.
    Floats are rounded to 4 decimals; statistics of an empty selection are None.
    """
    score_values = np.asarray(scores, dtype=np.float64)
    length_values = np.asarray(lengths, dtype=np.float64)
    source_names = [str(s) for s in sources]
    n = len(score_values)
    if not len(length_values) == len(source_names) == n:
        raise ValueError(
            f"scores, lengths and sources must have one entry per pool item: "
            f"{n}, {len(length_values)}, {len(source_names)}"
        )
    chosen = _checked_indices(selected, n, "selected")

    selected_lengths = length_values[chosen]
    pool_mean_length = _mean(length_values)
    selected_mean_length = _mean(selected_lengths)
    ratio = (
        selected_mean_length / pool_mean_length
        if selected_mean_length is not None and pool_mean_length
        else None
    )
    length = {
        "pool_mean": _round(pool_mean_length),
        "pool_median": _round(_median(length_values)),
        "selected_mean": _round(selected_mean_length),
        "selected_median": _round(_median(selected_lengths)),
        "ratio_of_means": _round(ratio),
        "spearman_score_vs_length": _round(_spearman(score_values, length_values)),
    }
    selected_scores = score_values[chosen]
    source_rows = _source_rows(source_names, chosen)
    return {
        "pool": n,
        "selected": len(chosen),
        "dropped_near_duplicates": int(dropped_duplicates),
        "score": {
            "selected_min": _round(selected_scores.min()) if chosen.size else None,
            "selected_mean": _round(_mean(selected_scores)),
            "pool_mean": _round(_mean(score_values)),
            "pool_max": _round(score_values.max()) if n else None,
        },
        "length": length,
        "sources": source_rows,
        "warnings": _warnings(length, source_rows),
    }


def _cell(value: Any, *, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:g}" if isinstance(value, float) else str(value)


def render_report_markdown(report: dict) -> str:
    """A short markdown summary of a ``selection_report``: counts, a length table, a source table,
    and the warnings."""
    score, length = report["score"], report["length"]
    lines = [
        "## Selection report",
        "",
        (
            f"Selected {report['selected']} of {report['pool']} scored items "
            f"({report['dropped_near_duplicates']} near-duplicates dropped). "
            f"Score: selected min {_cell(score['selected_min'])}, mean {_cell(score['selected_mean'])}; "
            f"pool mean {_cell(score['pool_mean'])}, max {_cell(score['pool_max'])}."
        ),
        "",
        "| length | pool | selected |",
        "|---|---|---|",
        f"| mean | {_cell(length['pool_mean'])} | {_cell(length['selected_mean'])} |",
        f"| median | {_cell(length['pool_median'])} | {_cell(length['selected_median'])} |",
        "",
        (
            f"Ratio of means {_cell(length['ratio_of_means'])}; "
            f"Spearman(score, length) over the pool {_cell(length['spearman_score_vs_length'])}."
        ),
        "",
        "| source | pool | pool share | selected | selected share | lift |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["sources"]:
        lines.append(
            f"| {row['source'].replace('|', '&#124;')} | {row['pool']} | {_cell(row['pool_share'], percent=True)} "
            f"| {row['selected']} | {_cell(row['selected_share'], percent=True)} | {_cell(row['lift'])} |"
        )
    lines += ["", "### Warnings", ""]
    lines += [f"- {warning}" for warning in report["warnings"]] or ["None."]
    return "\n".join(lines) + "\n"
