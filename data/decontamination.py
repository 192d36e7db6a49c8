"""Decontamination: does a text share a word n-gram with any shipped benchmark test set?

The convention of GPT-3 / Llama / the LLM-decontamination literature: after normalisation
(:func:`data.dedup.words` with ``operators=False``: casefolded alphanumeric runs, so spacing,
case, punctuation, operators and LaTeX markup do not matter), ANY shared 13-gram makes a text
contaminated. Operators are left out here (unlike dedup) because they make formula n-grams
generic: with them, "x ^ 4 + x ^ 3 + x ^ 2 + x" is a 13-gram, and 14 of the 1,298 sample-corpus
texts matched MATH/AQuA that way; without them, none do.

What a benchmark item contributes: every n-gram of its question, of its choices (joined in
order) and of its table (TabMWP). A question of fewer than ``n`` words (short MATH items such as
"Find the sum of all solutions to 2x^2 + 5x = 7.") contributes its whole word sequence instead,
and a text is also contaminated when it contains that sequence contiguously;
``min_short_words`` (default 6) leaves out the shortest ones, whose word runs ("compute dbinom
8 4", "the k means algorithm") are too common to mean a copy.
Short choices and tables contribute nothing (choices like "12" are not evidence of a copy).

The index is one sorted ``uint64`` array of n-gram hashes (the hashing of :mod:`data.dedup`),
with, per hash, the first benchmark item (registry order) that holds it; ``check_many`` hashes
a batch of texts at once, screens the windows with a 16 MiB bitmap and binary-searches the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from data.dedup import WordBatch

FILTER_BITS = 24


class Contamination(NamedTuple):
    contaminated: bool
    benchmark: str | None
    ngram: str | None  # the matched words, normalised
    record_id: str | None  # e.g. "gsm8k/test/0"


CLEAN = Contamination(False, None, None, None)


@dataclass
class _Item:
    benchmark: str
    record_id: str
    parts: list[tuple[str, bool]]  # (text, may contribute a short whole-sequence gram)


class Decontaminator:
    def __init__(self, items: Iterable[tuple[str, str, Sequence[tuple[str, bool]]]], n: int = 13,
                 min_short_words: int = 6, batch: int = 4096) -> None:
        """``items``: (benchmark, record id, [(text, short_allowed), ...]) in priority order."""
        self.n, self.min_short_words = n, min_short_words
        self.items = [_Item(b, r, list(parts)) for b, r, parts in items]
        hashes, owners = [], []
        short_lengths: set[int] = set()
        flat = [(i, text, short) for i, item in enumerate(self.items) for text, short in item.parts]
        for lo in range(0, len(flat), batch):
            chunk = flat[lo : lo + batch]
            words = WordBatch.of((text for _, text, _ in chunk), operators=False)
            grams, owner, _ = words.windows(n)
            lengths = words.lengths[owner]
            allowed = np.array([short for _, _, short in chunk], dtype=bool)[owner]
            keep = (lengths >= n) | (allowed & (lengths >= min_short_words))
            item_of = np.array([i for i, _, _ in chunk], dtype=np.int64)
            hashes.append(grams[keep])
            owners.append(item_of[owner[keep]])
            short_lengths.update(lengths[keep & (lengths < n)].tolist())
        hashes_all = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        owners_all = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        order = np.lexsort((owners_all, hashes_all))  # by hash, then registry order
        hashes_all, owners_all = hashes_all[order], owners_all[order]
        first = np.ones(len(hashes_all), dtype=bool)
        first[1:] = hashes_all[1:] != hashes_all[:-1]
        self.hashes, self.owners = hashes_all[first], owners_all[first].astype(np.int32)
        self.short_lengths = sorted(short_lengths)
        # A 16 MiB presence bitmap on the top 24 hash bits: most windows miss it, and only the
        # few that hit it pay for a binary search (random probes into the sorted array are slow).
        self._filter = np.zeros(1 << FILTER_BITS, dtype=bool)
        self._filter[self.hashes >> np.uint64(64 - FILTER_BITS)] = True

    @classmethod
    def from_benchmarks(cls, names: Sequence[str] | None = None, n: int = 13, min_short_words: int = 6
                        ) -> Decontaminator:
        """Every shipped benchmark test set (or ``names``), in registry order."""
        from data.benchmarks.registry import BENCHMARKS, load_benchmark

        def items():
            for name in names or list(BENCHMARKS):
                for record in load_benchmark(name):
                    parts = [(record.question, True)]
                    if record.choices:
                        parts.append((" ".join(record.choices), False))
                    if record.table:
                        parts.append((record.table, False))
                    yield name, record.id, parts

        return cls(items(), n, min_short_words)

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.owners.nbytes + self._filter.nbytes

    def check(self, text: str) -> Contamination:
        return self.check_many([text])[0]

    def check_many(self, texts: Sequence[str]) -> list[Contamination]:
        texts = list(texts)
        if len(self.hashes) == 0:
            return [CLEAN] * len(texts)
        words = WordBatch.of(texts, keep_tokens=True, operators=False)
        found: dict[int, tuple[int, int, int]] = {}  # text -> (item, start, width), first match wins
        for width in [self.n, *self.short_lengths]:
            grams, owner, start = words.windows(width, short=width == self.n)
            maybe = np.flatnonzero(self._filter[grams >> np.uint64(64 - FILTER_BITS)])
            slot = np.searchsorted(self.hashes, grams[maybe]).clip(max=max(len(self.hashes) - 1, 0))
            hit = np.flatnonzero(self.hashes[slot] == grams[maybe])
            for h in hit.tolist():
                text = int(owner[maybe[h]])
                if text not in found:  # the first width, then the earliest position
                    found[text] = (int(self.owners[slot[h]]), int(start[maybe[h]]), width)
        results = []
        for t in range(len(texts)):
            if t not in found:
                results.append(CLEAN)
                continue
            item, start, width = found[t]
            gram = " ".join(words.tokens[t][start : start + width])
            results.append(Contamination(True, self.items[item].benchmark, gram, self.items[item].record_id))
        return results
