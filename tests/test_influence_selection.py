import json
import math

import faiss
import numpy as np
import pytest

from influence.selection import (
    cluster_quota_select,
    rank,
    remove_near_duplicates,
    render_report_markdown,
    selection_report,
    selection_size,
)

# One thread keeps timings steady on shared CI cores and rules out thread-count-dependent results.
faiss.omp_set_num_threads(1)


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --- rank and selection_size -------------------------------------------------------------------


def test_rank_is_best_first_and_ties_keep_the_lower_index_first():
    scores = np.array([0.5, 0.9, 0.5, -1.0, 0.9, 0.5])
    assert rank(scores).tolist() == [1, 4, 0, 2, 5, 3]
    assert rank(np.array([3, 1, 2])).tolist() == [0, 2, 1]  # integer scores work too
    assert rank(np.array([])).tolist() == []


def test_rank_refuses_nan_and_says_how_many():
    with pytest.raises(ValueError, match="2 of 4 scores are NaN"):
        rank(np.array([1.0, np.nan, 0.0, np.nan]))
    with pytest.raises(ValueError, match="one-dimensional"):
        rank(np.zeros((2, 2)))


@pytest.mark.parametrize(
    ("n", "top_k", "top_fraction", "expected"),
    [
        (100, 10, None, 10),
        (5, 10, None, 5),  # top_k larger than the pool takes the pool
        (30, None, 0.1, 3),  # 0.1 * 30 is 3.0000000000000004 in floats: still 3
        (31, None, 0.1, 4),  # ceil
        (7, None, 1.0, 7),
        (3, None, 0.01, 1),  # at least one item of a non-empty pool
        (0, None, 0.5, 0),
        (0, 4, None, 0),
    ],
)
def test_selection_size(n, top_k, top_fraction, expected):
    assert selection_size(n, top_k=top_k, top_fraction=top_fraction) == expected


@pytest.mark.parametrize(
    ("top_k", "top_fraction", "message"),
    [
        (None, None, "exactly one"),
        (5, 0.5, "exactly one"),
        (0, None, "top_k"),
        (None, 0.0, "top_fraction"),
        (None, 1.5, "top_fraction"),
    ],
)
def test_selection_size_refuses_bad_arguments(top_k, top_fraction, message):
    with pytest.raises(ValueError, match=message):
        selection_size(10, top_k=top_k, top_fraction=top_fraction)


# --- remove_near_duplicates ----------------------------------------------------------------------


def brute_force_dedup(features, ranked, threshold):
    """The definition: walk in order, drop an item whose float64 cosine with a kept one is >= threshold,
    mapping it to the best-ranked such kept item."""
    x = features.astype(np.float64)
    sims = x @ x.T
    kept, dropped = [], {}
    for i in ranked:
        duplicates_of = [k for k in kept if sims[i, k] >= threshold]
        if duplicates_of:
            dropped[int(i)] = duplicates_of[0]
        else:
            kept.append(int(i))
    return kept, dropped


def planted_duplicates(seed=0, n=500, n_copies=50, n_chains=20, d=64):
    """Random unit vectors, noisy copies at a spread of distances, and chains a-b-c on a great circle
    (cos(a, b) = cos(b, c) = 0.92, cos(a, c) = 0.69) where only the greedy order decides whether c
    survives: at threshold 0.85 c is kept exactly when b was dropped before c was reached."""
    rng = np.random.default_rng(seed)
    base = unit(rng.standard_normal((n, d)))
    sources = rng.integers(0, n, n_copies)
    noise = rng.uniform(0.05, 0.6, n_copies)[:, None]
    copies = unit(base[sources] + noise * rng.standard_normal((n_copies, d)) / math.sqrt(d))
    a = base[:n_chains].astype(np.float64)
    u = rng.standard_normal((n_chains, d))
    u = u - (u * a).sum(1, keepdims=True) * a  # a direction orthogonal to a
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    angle = math.acos(0.92)
    b = unit(math.cos(angle) * a + math.sin(angle) * u)
    c = unit(math.cos(2 * angle) * a + math.sin(2 * angle) * u)
    return np.concatenate([base, copies, b, c])


@pytest.mark.parametrize("batch", [1, 7, 64, 4096])
def test_remove_near_duplicates_equals_brute_force_greedy(batch):
    features = planted_duplicates()
    rng = np.random.default_rng(1)
    # A shuffled subset: rows outside `ranked` must neither be kept nor suppress anything.
    ranked = rng.permutation(len(features))[:520]
    for threshold in (0.85, 0.95):
        kept, dropped = remove_near_duplicates(features, ranked, threshold, batch=batch)
        expected_kept, expected_dropped = brute_force_dedup(features, ranked, threshold)
        assert kept.tolist() == expected_kept
        assert dropped == expected_dropped
        assert len(dropped) >= 10  # the planted copies really are exercised
        if threshold == 0.85:
            # Some kept item has a near neighbour ranked before it that was itself dropped: the case
            # a non-greedy "drop anything near an earlier item" would get wrong.
            sims = features @ features.T
            position = {int(i): p for p, i in enumerate(ranked)}
            assert any(
                sims[k, j] >= threshold and position[j] < position[int(k)]
                for k in kept
                for j in dropped
            )
        assert len(kept) + len(dropped) == len(ranked)


def test_remove_near_duplicates_keeps_the_best_ranked_of_a_group():
    a = unit([[1.0, 0.0, 0.0]])[0]
    near_a = unit([[1.0, 0.05, 0.0]])[0]
    b = unit([[0.0, 1.0, 0.0]])[0]
    features = np.stack([near_a, b, a])
    kept, dropped = remove_near_duplicates(features, np.array([2, 1, 0]), 0.99)
    assert kept.tolist() == [2, 1]
    assert dropped == {0: 2}
    kept, dropped = remove_near_duplicates(features, np.array([0, 1, 2]), 0.99)
    assert kept.tolist() == [0, 1] and dropped == {2: 0}


def test_remove_near_duplicates_refuses_bad_input():
    features = unit(np.eye(3))
    with pytest.raises(ValueError, match="not L2-normalised"):
        remove_near_duplicates(features * 2, np.arange(3), 0.9)
    with pytest.raises(ValueError, match="repeated"):
        remove_near_duplicates(features, np.array([0, 0, 1]), 0.9)
    with pytest.raises(ValueError, match="outside"):
        remove_near_duplicates(features, np.array([3]), 0.9)
    with pytest.raises(ValueError, match="threshold"):
        remove_near_duplicates(features, np.arange(3), 0.0)
    kept, dropped = remove_near_duplicates(features, np.array([], dtype=np.int64), 0.9)
    assert kept.tolist() == [] and dropped == {}


# --- cluster_quota_select ------------------------------------------------------------------------


def planted_clusters(sizes=(60, 30, 10), d=16, seed=0):
    """Well-separated clusters around orthogonal directions; returns features and true cluster per row."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    centres = np.eye(d)[truth]
    features = unit(centres + 0.05 * rng.standard_normal((len(truth), d)))
    # Shuffle rows so cluster membership is not readable from the index.
    perm = rng.permutation(len(truth))
    return features[perm], truth[perm]


def test_cluster_quotas_follow_the_pool_not_the_scores():
    features, truth = planted_clusters()
    rng = np.random.default_rng(2)
    # Every member of the big cluster outranks everything else: plain top-20 would be all cluster 0.
    ranked = np.concatenate([rng.permutation(np.flatnonzero(truth == c)) for c in (0, 1, 2)])
    selected, cluster_of = cluster_quota_select(features, ranked, 20, n_clusters=3, seed=0)
    assert np.bincount(truth[selected], minlength=3).tolist() == [12, 6, 2]
    # The recovered clusters are the planted ones, numbered by their best-ranked member.
    assert (cluster_of == truth).all()
    # Within each cluster the best-ranked members are the ones taken, and the output is in ranked order.
    position = {int(i): p for p, i in enumerate(ranked)}
    assert [position[int(i)] for i in selected] == sorted(position[int(i)] for i in selected)
    for c, quota in zip((0, 1, 2), (12, 6, 2)):
        members_in_order = [int(i) for i in ranked if truth[i] == c]
        assert sorted(int(i) for i in selected if truth[i] == c) == sorted(members_in_order[:quota])


@pytest.mark.parametrize("n_select", [0, 1, 7, 33, 150, 200])
def test_cluster_quotas_sum_to_n_select_and_follow_largest_remainders(n_select):
    rng = np.random.default_rng(3)
    features = unit(rng.standard_normal((300, 8)))
    ranked = rng.permutation(300)[:200]
    selected, cluster_of = cluster_quota_select(features, ranked, n_select, n_clusters=6, seed=1)
    assert len(selected) == n_select == len(set(selected.tolist()))
    assert set(selected.tolist()) <= set(ranked.tolist())
    outside = np.setdiff1d(np.arange(300), ranked)
    assert (cluster_of[outside] == -1).all() and (cluster_of[ranked] >= 0).all()
    sizes = np.bincount(cluster_of[ranked])
    taken = np.bincount(cluster_of[selected], minlength=len(sizes))
    share = sizes * n_select / sizes.sum()
    assert ((taken == np.floor(share)) | (taken == np.ceil(share))).all()


def test_cluster_quota_select_is_deterministic_for_a_seed():
    rng = np.random.default_rng(4)
    features = unit(rng.standard_normal((400, 12)))
    ranked = rng.permutation(400)
    first = cluster_quota_select(features, ranked, 50, n_clusters=8, seed=7)
    second = cluster_quota_select(features, ranked, 50, n_clusters=8, seed=7)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[1][ranked[0]] == 0  # cluster ids follow the ranking


def test_more_clusters_than_items_gives_one_cluster_per_item():
    features, _ = planted_clusters(sizes=(2, 2, 1), d=8)
    ranked = np.array([4, 0, 3, 1, 2])
    selected, cluster_of = cluster_quota_select(features, ranked, 3, n_clusters=50)
    assert sorted(cluster_of.tolist()) == [0, 1, 2, 3, 4]
    # Equal quotas (0.6 each) go to the clusters holding the best-ranked items.
    assert selected.tolist() == [4, 0, 3]
    with pytest.raises(ValueError, match="n_select"):
        cluster_quota_select(features, ranked, 6, n_clusters=2)


# --- selection_report and markdown ----------------------------------------------------------------


def test_report_warns_when_the_selection_favours_short_texts():
    lengths = np.arange(10, 110)
    scores = -lengths.astype(float)  # shorter scores higher, as raw gradient norms tend to
    selected = rank(scores)[:10]
    report = selection_report(selected, scores, lengths, ["a"] * 100)
    assert report["length"]["selected_mean"] == 14.5
    assert report["length"]["pool_mean"] == 59.5
    assert report["length"]["ratio_of_means"] == round(14.5 / 59.5, 4)
    assert report["length"]["spearman_score_vs_length"] == -1.0
    assert report["warnings"] == ["selection favours short texts: mean length 14.5 vs 59.5 in the pool"]
    unbiased = selection_report(np.arange(0, 100, 10), scores, lengths, ["a"] * 100)
    assert not any("length" in w for w in unbiased["warnings"])
    long_bias = selection_report(np.arange(90, 100), scores, np.r_[np.ones(90), 10 * np.ones(10)], ["a"] * 100)
    assert any(w.startswith("selection favours long texts") for w in long_bias["warnings"])


def handcrafted_report():
    sources = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    lengths = np.array([10, 10, 10, 10, 10, 10, 10, 10, 10, 10])
    selected = np.array([0, 5, 8, 9])  # one a, one b, both c
    return selection_report(selected, scores, lengths, np.array(sources), dropped_duplicates=3)


def test_report_source_lift_on_a_handcrafted_pool():
    report = handcrafted_report()
    assert report["pool"] == 10 and report["selected"] == 4 and report["dropped_near_duplicates"] == 3
    assert report["sources"] == [
        {"source": "a", "pool": 5, "pool_share": 0.5, "selected": 1, "selected_share": 0.25, "lift": 0.5},
        {"source": "b", "pool": 3, "pool_share": 0.3, "selected": 1, "selected_share": 0.25, "lift": 0.8333},
        {"source": "c", "pool": 2, "pool_share": 0.2, "selected": 2, "selected_share": 0.5, "lift": 2.5},
    ]
    assert report["score"] == {"selected_min": 1.0, "selected_mean": 6.5, "pool_mean": 5.5, "pool_max": 10.0}
    # c is over-represented; a sits exactly on the 0.5 bound, which is not a warning.
    assert report["warnings"] == [
        "source 'c' is over-represented: 50.0% of the selection vs 20.0% of the pool (lift 2.5)"
    ]
    assert report["length"]["spearman_score_vs_length"] is None  # constant lengths: undefined


def test_report_spearman_uses_average_ranks_for_ties():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    lengths = np.array([5, 6, 7, 7, 1])
    # Length ranks with the tie averaged: [2, 3, 4.5, 4.5, 1]; centred score ranks [-2, -1, 0, 1, 2],
    # centred length ranks [-1, 0, 1.5, 1.5, -2]: rho = -0.5 / sqrt(10 * 9.5).
    report = selection_report(np.array([0]), scores, lengths, ["x"] * 5)
    assert report["length"]["spearman_score_vs_length"] == round(-0.5 / math.sqrt(95), 4) == -0.0513


def test_report_is_plain_json_and_refuses_mismatched_inputs():
    report = handcrafted_report()
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    empty = selection_report(np.array([], dtype=np.int64), np.array([1.0, 2.0]), np.array([3, 4]), ["a", "b"])
    assert empty["score"]["selected_mean"] is None and empty["sources"][0]["lift"] is None
    json.dumps(empty, allow_nan=False)
    with pytest.raises(ValueError, match="one entry per pool item"):
        selection_report(np.array([0]), np.array([1.0, 2.0]), np.array([3]), ["a", "b"])
    with pytest.raises(ValueError, match="selected holds repeated"):
        selection_report(np.array([0, 0]), np.array([1.0, 2.0]), np.array([3, 4]), ["a", "b"])


def test_markdown_has_a_table_row_per_source_and_the_warnings():
    text = render_report_markdown(handcrafted_report())
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 7]
    assert rows[0].startswith("| source |")
    assert rows[1:] == [
        "| a | 5 | 50.0% | 1 | 25.0% | 0.5 |",
        "| b | 3 | 30.0% | 1 | 25.0% | 0.8333 |",
        "| c | 2 | 20.0% | 2 | 50.0% | 2.5 |",
    ]
    assert "| mean | 10 | 10 |" in text
    assert "- source 'c' is over-represented" in text
    assert "Selected 4 of 10" in text and "3 near-duplicates dropped" in text
