"""How work is split across the shards of a run: named policies, not ad-hoc code per stage.

Every policy partitions the work: the union of what shards 0..N-1 own is everything, once,
whatever N is, so a run on 16 array tasks holds the same records as a run on one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypeVar

from data.corpus import CorpusInput, CorpusStats, read_corpus
from data.errors import ConfigError
from data.records import Document
from data.shards import Shard

T = TypeVar("T")


class Ownership:
    """The base: ``name`` appears in logs and in ``mathsynth status``."""

    name = "ownership"

    def check(self, shard: Shard, stage: str) -> None:
        """Refuse a shard layout the policy cannot serve (one line, before anything is written)."""


class ByCorpusRecord(Ownership):
    """Documents of a corpus stream: whole files when the corpus has at least N files, else
    rows round-robin by global position (the rule of :func:`data.corpus.read_corpus`)."""

    name = "by record"

    def documents(self, corpus: CorpusInput, shard: Shard, stats: CorpusStats) -> Iterator[Document]:
        return read_corpus(corpus, shard, stats)


class ByPosition(Ownership):
    """Item ``i`` of a list known up front (benchmark problems) belongs to shard ``i mod N``."""

    name = "by position"

    def items(self, items: Sequence[T], shard: Shard) -> list[T]:
        return [item for position, item in enumerate(items) if shard.owns(position)]


class ByInputPart(Ownership):
    """Part file ``j`` of an input stage folder belongs to shard ``j mod N``."""

    name = "by input part"

    def parts(self, parts: Sequence[Path], shard: Shard) -> list[Path]:
        return [part for j, part in enumerate(parts) if shard.owns(j)]


class ByChunk(Ownership):
    """Chunk ``j`` (``size`` consecutive rows of the whole stream) belongs to shard ``j mod N``.
    Every shard reads the whole stream, so chunk boundaries do not depend on N."""

    name = "by chunk"

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows = 0  # rows of the stream seen by the last ``chunks`` call

    def chunks(self, rows: Iterable[T], shard: Shard) -> Iterator[tuple[int, list[T]]]:
        current, owned = 0, []
        self.rows = 0
        for row in rows:
            index = self.rows // self.size
            self.rows += 1
            if index != current:
                if owned:
                    yield current, owned
                current, owned = index, []
            if shard.owns(index):
                owned.append(row)
        if owned:
            yield current, owned


class Whole(Ownership):
    """One job does all of it (training: several processes come from accelerate, not shards)."""

    name = "whole"

    def check(self, shard: Shard, stage: str) -> None:
        if shard.count != 1:
            raise ConfigError(f"--shard {shard}: {stage} runs as one job, not as shards "
                            "(run it on more GPUs with accelerate launch)")
