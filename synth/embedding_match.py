"""Embedding-similarity decontamination: catches what shares no 13-gram with a benchmark item
(a short question copied verbatim, a light rewording) by cosine similarity of mean-pooled hidden
states of any local checkpoint (an embedding-tuned model is best; the synthesizer itself works).

The benchmark side is embedded once per (model, benchmarks, max_length) and cached as ``.npy``
in ``cache_dir``, so every shard and rerun reuses it; the lookup is an exact inner-product
search (faiss ``IndexFlatIP``) over unit vectors.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import Field, model_validator

from data.config_base import StrictConfig
from data.records import content_id

log = logging.getLogger(__name__)


class EmbeddingCheck(StrictConfig):
    enabled: bool = False
    model: str | None = Field(None, description="a local checkpoint folder (needed when enabled)")
    threshold: float = Field(0.95, gt=0, le=1, description="cosine at or above which a record is contaminated")
    max_length: int = Field(256, ge=8, description="tokens embedded per text")
    batch_size: int = Field(32, ge=1)
    dtype: str = "auto"
    device: str = "auto"

    @model_validator(mode="after")
    def _model_when_enabled(self):
        if self.enabled and not self.model:
            raise ValueError("model: give a checkpoint folder to embed with (or set enabled: false)")
        return self


@dataclass(frozen=True)
class Match:
    cosine: float
    benchmark: str
    record_id: str


class TextEmbedder:
    """Mean-pooled last hidden states of the checkpoint's base model (``AutoModel``): an encoder
    (all-MiniLM-L6-v2, BERT) or a causal LM without its head (the vocabulary projection is most
    of a small LM's cost and plays no part in the embedding)."""

    def __init__(self, check: EmbeddingCheck) -> None:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        from llm.loading import (
            load_tokenizer,
            pick_device,
            resolve_model_path,
            torch_dtype,
        )

        self.check = check
        self.tokenizer = load_tokenizer(check.model)
        device = pick_device(check.device)
        hf_logging.disable_progress_bar()  # as llm.loading: a bar per load buries the run's own output
        self.model = AutoModel.from_pretrained(resolve_model_path(check.model),
                                               dtype=torch_dtype(check.dtype, device)).to(device).eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 rows, one per text, in the order given."""
        import torch

        # Batches of similar lengths pad little: sort by length, embed, put the rows back.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows = []
        for lo in range(0, len(texts), self.check.batch_size):
            chunk = [texts[i] for i in order[lo : lo + self.check.batch_size]]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.check.max_length,
                                   return_tensors="pt").to(self.model.device)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        if not rows:
            return np.zeros((0, 1), dtype=np.float32)
        vectors = np.empty((len(texts), rows[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(rows)
        return vectors


class BenchmarkEmbeddings:
    """Every question of the named benchmarks (default: all shipped), embedded and indexed."""

    def __init__(self, check: EmbeddingCheck, benchmarks: Sequence[str] | None, cache_dir: Path) -> None:
        import faiss

        from data.benchmarks.registry import BENCHMARKS, load_benchmark
        from llm.loading import model_fingerprint

        names = list(benchmarks or BENCHMARKS)
        self.embedder = TextEmbedder(check)
        self.items: list[tuple[str, str]] = []
        questions: list[str] = []
        for name in names:
            for record in load_benchmark(name):
                self.items.append((name, record.id))
                questions.append(record.question)
        key = content_id(model_fingerprint(check.model), names, check.max_length, length=12)
        cache = Path(cache_dir) / f"benchmark-embeddings-{key}.npy"
        if cache.exists():
            vectors = np.load(cache)
        else:
            log.info("embedding %d benchmark questions with %s (cached in %s)", len(questions), check.model, cache)
            vectors = self.embedder.embed(questions)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(cache)
            (cache.with_suffix(".json")).write_text(json.dumps({"model": check.model, "benchmarks": names}))
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def nearest(self, texts: Sequence[str]) -> list[Match]:
        if not texts:
            return []
        scores, rows = self.index.search(self.embedder.embed(texts), 1)
        return [Match(float(s[0]), *self.items[int(r[0])]) for s, r in zip(scores, rows)]
