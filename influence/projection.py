"""Random projections of per-example gradients, rebuilt from a seed on any worker.

A dense Gaussian matrix for millions of LoRA weights x 8,192 dimensions does not fit anywhere,
and TRAK's CPU projector regenerates blocks of it on every call. We use a sparse random
projection instead (a count sketch when ``nnz`` is 1): each gradient coordinate is added, with a
random sign, into ``nnz`` of the ``dim`` output buckets. It preserves inner products in
expectation like a dense projection, at the cost of one scatter-add per coordinate.

Each module's buckets and signs come from a generator seeded by (seed, parameter name, size):
projecting a module's gradient separately and summing is the same as projecting the whole
concatenated gradient, so workers on any node agree without exchanging a matrix, and a module's
table is built once and kept.
"""
from __future__ import annotations

import math
from typing import Any

from data.records import stable_seed


class SketchProjector:
    def __init__(self, dim: int, seed: int, nnz: int = 1, device: str = "cpu") -> None:
        self.dim = dim
        self.seed = seed
        self.nnz = nnz
        self.device = device
        self._tables: dict[str, tuple[Any, Any]] = {}

    def table(self, name: str, numel: int):
        """(buckets (nnz, numel) int64, signs (nnz, numel) float32 of +-1/sqrt(nnz)) for a module."""
        import torch

        cached = self._tables.get(name)
        if cached is not None and cached[0].shape[1] == numel:
            return cached
        generator = torch.Generator(device="cpu").manual_seed(stable_seed(self.seed, name, numel))
        buckets = torch.randint(0, self.dim, (self.nnz, numel), generator=generator, dtype=torch.int64)
        signs = torch.randint(0, 2, (self.nnz, numel), generator=generator, dtype=torch.int8)
        signs = (signs.to(torch.float32) * 2 - 1) / math.sqrt(self.nnz)
        table = (buckets.to(self.device), signs.to(self.device))
        self._tables[name] = table
        return table

    def add(self, out, name: str, flat_gradients) -> None:
        """``out[b] += P_name @ flat_gradients[b]`` for every example b; out is (B, dim)."""
        buckets, signs = self.table(name, flat_gradients.shape[1])
        for j in range(self.nnz):
            out.index_add_(1, buckets[j], flat_gradients * signs[j])
