"""The order of training: which documents, how often, in which rows, at which step.

A pure function of the tokenized index and the config, computed the same way on every process
and every rerun, so a resumed run trains on exactly the rows it would have:

1. Each document's phase: its source's ``phase``, or by kind (text: pre-training, SFT rows: SFT).
2. Mixture: a source of weight w gives every document floor(w) copies and one more to a
   fraction w - floor(w) of them, drawn from (seed, source).
3. Order: the copies of each phase shuffled (seed, phase); all pre-training rows, then all SFT
   rows, never mixed (the JiuZhang3.0 run).
4. Rows of ``max_length`` tokens. Pre-training documents fill rows end to end, a document that
   does not fit continuing in the next row as a new segment; SFT documents are packed whole
   (next-fit), one longer than a row keeping its first ``max_length`` tokens. Without packing,
   one document (or piece) per row.
5. Step s trains rows [s x G, (s + 1) x G) for a global batch of G rows; the rows after the last
   whole global batch are not trained on (counted in the stats).

Rows are read from the memory-mapped arrays when a step needs them: positions restart at every
segment, labels are the tokens whose loss bit is set, never a segment's first token.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.records import stable_seed
from data.shards import Shard
from pretrain.config import PretrainConfig
from pretrain.examples import SFT
from pretrain.tokenize import INDEX_FILE, array_path
from training.rows import IGNORE, PackedRow

PRETRAIN, SFT_PHASE = 0, 1
PHASE_NAMES = ("pretrain", "sft")
SOURCE, FILE, LINE, OFFSET, LENGTH, KIND, SHARD = range(7)


@dataclass
class Plan:
    """Segments (document, start within it, length) in training order; row r is segments
    ``row_ptr[r]:row_ptr[r+1]``; ``row_phase`` says which phase each row belongs to."""

    seg_doc: np.ndarray
    seg_start: np.ndarray
    seg_length: np.ndarray
    row_ptr: np.ndarray
    row_phase: np.ndarray
    copies: np.ndarray  # per document of the index: how many times it is trained on

    @property
    def rows(self) -> int:
        return len(self.row_ptr) - 1


def document_phases(index: np.ndarray, config: PretrainConfig) -> np.ndarray:
    configured = np.array([{"pretrain": PRETRAIN, "sft": SFT_PHASE, "auto": -1}[s.phase] for s in config.sources])
    phases = configured[index[:, SOURCE]]
    by_kind = np.where(index[:, KIND] == SFT, SFT_PHASE, PRETRAIN)
    return np.where(phases < 0, by_kind, phases)


def document_copies(index: np.ndarray, config: PretrainConfig) -> np.ndarray:
    copies = np.zeros(len(index), dtype=np.int64)
    for k, source in enumerate(config.sources):
        mine = np.flatnonzero(index[:, SOURCE] == k)
        whole, fraction = int(source.weight), source.weight - int(source.weight)
        draw = np.random.default_rng(stable_seed(config.seed, "mixture", k)).random(len(mine))
        copies[mine] = whole + (draw < fraction)
    return copies


def build_plan(index: np.ndarray, config: PretrainConfig) -> Plan:
    phases, copies = document_phases(index, config), document_copies(index, config)
    pieces, row_phase, offset = [], [], 0
    for phase in (PRETRAIN, SFT_PHASE):
        docs = np.repeat(np.flatnonzero(phases == phase), copies[phases == phase])
        if config.shuffle:
            docs = docs[np.random.default_rng(stable_seed(config.seed, "order", phase)).permutation(len(docs))]
        lengths = index[docs, LENGTH]
        if phase == PRETRAIN and config.packing:
            seg_doc, seg_start, seg_length, row_ptr = _fill_rows(docs, lengths, config.max_length)
        else:
            seg_doc, seg_start, seg_length, row_ptr = _whole_rows(docs, lengths, config.max_length,
                                                                  config.packing, split=phase == PRETRAIN)
        pieces.append((seg_doc, seg_start, seg_length, row_ptr[1:] + offset))
        offset += len(seg_doc)
        row_phase.append(np.full(len(row_ptr) - 1, phase, dtype=np.int8))
    return Plan(seg_doc=np.concatenate([p[0] for p in pieces]), seg_start=np.concatenate([p[1] for p in pieces]),
                seg_length=np.concatenate([p[2] for p in pieces]),
                row_ptr=np.concatenate([[0], *[p[3] for p in pieces]]).astype(np.int64),
                row_phase=np.concatenate(row_phase), copies=copies)


def _fill_rows(docs: np.ndarray, lengths: np.ndarray, width: int):
    """Documents end to end, cut every ``width`` tokens (vectorised: millions of documents)."""
    if len(docs) == 0:
        return _empty()
    ends = np.cumsum(lengths)
    starts = ends - lengths
    first_row, last_row = starts // width, (ends - 1) // width
    pieces = last_row - first_row + 1
    seg_doc = np.repeat(docs, pieces)
    seg_item = np.repeat(np.arange(len(docs)), pieces)
    seg_row = np.repeat(first_row, pieces) + (np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces))
    seg_begin = np.maximum(starts[seg_item], seg_row * width)
    seg_end = np.minimum(ends[seg_item], (seg_row + 1) * width)
    row_ptr = np.searchsorted(seg_row, np.arange(seg_row[-1] + 2), side="left")
    return seg_doc, seg_begin - starts[seg_item], seg_end - seg_begin, row_ptr


def _whole_rows(docs: np.ndarray, lengths: np.ndarray, width: int, packing: bool, split: bool):
    """Whole documents next-fit (or one per row); a longer one cut at ``width`` (``split``: the
    rest as more rows, else dropped)."""
    seg_doc, seg_start, seg_length, row_ptr = [], [], [], [0]
    used = 0
    for doc, length in zip(docs.tolist(), lengths.tolist()):
        starts = range(0, length, width) if split else [0]
        for start in starts:
            piece = min(width, length - start)
            if seg_doc and (not packing or used + piece > width):
                row_ptr.append(len(seg_doc))
                used = 0
            seg_doc.append(doc)
            seg_start.append(start)
            seg_length.append(piece)
            used += piece
    if seg_doc:
        row_ptr.append(len(seg_doc))
    return (np.asarray(seg_doc, dtype=np.int64), np.asarray(seg_start, dtype=np.int64),
            np.asarray(seg_length, dtype=np.int64), np.asarray(row_ptr, dtype=np.int64))


def _empty():
    none = np.zeros(0, dtype=np.int64)
    return none, none, none, np.zeros(1, dtype=np.int64)


class TokenArrays:
    """The tokenize pass's arrays, memory-mapped (never read whole)."""

    def __init__(self, folder: Path, num_shards: int) -> None:
        self.index = np.load(folder / INDEX_FILE)
        self.tokens, self.loss = [], []
        for k in range(num_shards):
            shard = Shard(k, num_shards)
            self.tokens.append(_map(array_path(folder, "tokens", shard), np.uint32))
            self.loss.append(_map(array_path(folder, "loss", shard), np.uint8))

    def segment(self, doc: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        shard = self.index[doc, SHARD]
        begin = self.index[doc, OFFSET] + start
        return self.tokens[shard][begin:begin + length], self.loss[shard][begin:begin + length]


def _map(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # mmap refuses an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def sft_documents_without_loss(plan: Plan, arrays: TokenArrays) -> int:
    """SFT documents whose kept part (the first ``max_length`` tokens) holds no answer token: the
    prompt fills the row, so they train nothing. Worth a warning: ``max_length`` is too short."""
    seg_phase = np.repeat(plan.row_phase, np.diff(plan.row_ptr))
    empty = set()
    for s in np.flatnonzero(seg_phase == SFT_PHASE).tolist():
        doc = int(plan.seg_doc[s])
        _, loss = arrays.segment(doc, int(plan.seg_start[s]), int(plan.seg_length[s]))
        if not loss[1:].any():
            empty.add(doc)
    return len(empty)


class PlannedRows:
    """The pretrain run's data for :func:`training.loop.train_model`."""

    def __init__(self, plan: Plan, arrays: TokenArrays, global_rows: int, total_steps: int,
                 stats: dict[str, Any]) -> None:
        self.plan, self.arrays, self.global_rows = plan, arrays, global_rows
        self.total_steps, self.stats = total_steps, stats

    def epoch(self, step: int) -> int:
        return 0  # one pass; repeats come from the mixture weights

    def step_rows(self, step: int) -> list[int]:
        return list(range(step * self.global_rows, (step + 1) * self.global_rows))

    def _segments(self, index: int):
        plan = self.plan
        for s in range(plan.row_ptr[index], plan.row_ptr[index + 1]):
            yield int(plan.seg_doc[s]), int(plan.seg_start[s]), int(plan.seg_length[s])

    def row(self, index: int) -> PackedRow:
        ids, labels, positions, starts, names = [], [], [], [], []
        used = 0
        for doc, start, length in self._segments(index):
            tokens, loss = self.arrays.segment(doc, start, length)
            tokens = tokens.astype(np.int64)
            label = np.where(loss.astype(bool), tokens, IGNORE)
            label[0] = IGNORE  # never predicted from the previous segment's last token
            ids.append(tokens)
            labels.append(label)
            positions.append(np.arange(length, dtype=np.int64))
            starts.append(used)
            names.append(f"{doc}@{start}")
            used += length
        return PackedRow(np.concatenate(ids), np.concatenate(labels), np.concatenate(positions),
                         tuple(names), tuple(starts))

    def row_target_tokens(self, index: int) -> int:
        total = 0
        for doc, start, length in self._segments(index):
            _, loss = self.arrays.segment(doc, start, length)
            total += int(loss[1:].sum())
        return total

    def row_tokens(self, index: int) -> int:
        return int(self.plan.seg_length[self.plan.row_ptr[index]:self.plan.row_ptr[index + 1]].sum())
