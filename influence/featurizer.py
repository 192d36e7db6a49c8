"""Examples -> L2-normalised gradient features at one checkpoint.

Targets use the plain (SGD) gradient; candidates the Adam update direction from the checkpoint's
optimizer state (LESS). Both go through the same projection, parameter order and dtype.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from influence.config import ProjectionSettings
from influence.examples import TokenizedExample, length_sorted_batches
from influence.gradients import AdamDirection, PerExampleGradients
from influence.projection import SketchProjector


class Featurizer:
    def __init__(self, model, pad_id: int, projection: ProjectionSettings, batch_size: int) -> None:
        self.gradients = PerExampleGradients(model, pad_id)
        self.projection = projection
        self.batch_size = batch_size
        self.device = self.gradients.device
        self.order = self.gradients.order
        self.projector = SketchProjector(projection.dim, projection.seed, projection.nnz, str(self.device))
        self._offsets = {}
        offset = 0
        for name, shape in self.order:
            numel = int(np.prod(shape))
            self._offsets[name] = (offset, offset + numel)
            offset += numel
        self.num_parameters = offset

    @property
    def dim(self) -> int:
        return self.num_parameters if self.projection.kind == "exact" else self.projection.dim

    def featurize(self, examples: Sequence[TokenizedExample], *, adam: AdamDirection | None = None,
                  normalize: bool = True) -> np.ndarray:
        """(N, dim) float32 features in the order of ``examples``. ``adam``: the candidate side's
        update direction; None: the raw gradient (target side, and tests)."""
        out = np.zeros((len(examples), self.dim), dtype=np.float32)
        for batch in length_sorted_batches(examples, self.batch_size):
            out[batch] = self._batch([examples[i] for i in batch], adam)
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-30)
        return out

    def _batch(self, examples: Sequence[TokenizedExample], adam: AdamDirection | None) -> np.ndarray:
        import torch

        features = torch.zeros((len(examples), self.dim), dtype=torch.float32, device=self.device)

        def sink(name: str, grads) -> None:
            if adam is not None:
                grads = adam(name, grads)
            if self.projection.kind == "exact":
                start, end = self._offsets[name]
                features[:, start:end] = grads
            else:
                self.projector.add(features, name, grads)

        self.gradients.run(examples, sink)
        return features.cpu().numpy()
