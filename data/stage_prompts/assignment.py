"""Deterministic assignment of (stage, variant) to each source window.

The draw depends only on the run's seed and the window's id, so every shard, rerun or
resumed run makes the same assignment, and the overall mix follows the configured weights.
"""
from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from data.records import content_id


def uniform_draw(seed: int, key: str, salt: str) -> float:
    """A number in [0, 1) fixed by (seed, key, salt)."""
    return int(content_id(seed, key, salt, length=15), 16) / 16**15


def weighted_choice(weights: dict[str, float], draw: float) -> str:
    names = [name for name, weight in weights.items() if weight > 0]
    if not names:
        raise ValueError("no positive weight")
    cumulative = list(accumulate(weights[name] for name in names))
    return names[min(bisect_right(cumulative, draw * cumulative[-1]), len(names) - 1)]


def assign(key: str, seed: int, stage_weights: dict[str, float], variant_weights: dict[str, float]) -> tuple[str, str]:
    """Stage and variant are drawn independently, so their mixtures can be set separately."""
    stage = weighted_choice(stage_weights, uniform_draw(seed, key, "stage"))
    variant = weighted_choice(variant_weights, uniform_draw(seed, key, "variant"))
    return stage, variant
