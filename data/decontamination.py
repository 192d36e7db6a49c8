"""Decontamination: does a text reproduce an item of a shipped benchmark test set?

Normalisation: :func:`canonical_math` first (``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\dbinom`` ->
``\\binom``, ``\\left``/``\\right`` and spacing macros dropped, ``\\mathbf{P}`` -> ``P``, ``^\\circ``
and ``°`` -> "degrees", ``\\cdot``/``\\times`` -> ``×``, ``\\le`` -> ``≤``, ``\\dots``/``…`` -> "dots"),
then :func:`data.dedup.words` with ``operators=False``: casefolded alphanumeric runs, so spacing,
case, punctuation, operators and LaTeX delimiters do not matter. Operators are left out because
they make formula n-grams generic ("x ^ 4 + x ^ 3 + x ^ 2 + x" is a 13-gram).

What an item offers: its question, its choices (joined in order) and its table (TabMWP), each a
*part*. A text is contaminated by an item when one of these holds (reported: an exact match, else
the item with the highest coverage, ties in registry order):

1. ``exact``: the whole text equals the item's question once normalised (the operator-aware
   :func:`data.dedup.words` of :func:`canonical_math`, so "What is 2+3?" is not "What is 2*3?").
   The only rule for questions under ``min_short_words`` words ("Find cos 120°.", "Evaluate
   $\\binom{7}{3}$."), whose word runs are too common to count inside a longer text.
2. ``verbatim``: every word of a part of at least ``n`` words lies inside an ``n``-gram the text
   shares with it: the whole part is reproduced, whatever its words.
3. ``coverage``: the shared *specific* ``n``-grams cover at least ``min_coverage`` of the part's
   *distinctive* words. A question of ``min_short_words`` to ``n - 1`` words is one gram (its whole
   word run, found anywhere in the text).

   * specific: the gram occurs in no *reference* question (by default the MATH and GSM8K train
     splits, which ship here). MATH and GSM8K reuse templates between train and test ("Let $a$ and
     $b$ be positive real numbers such that", "Enter your answer in the form", the same story with
     other numbers), so a gram that a train question holds is explained by it, not by the test item.
   * distinctive: the word lies inside at least one ``common_ngram``-word window that occurs in at
     most ``common_df`` distinct questions of the benchmarks and the reference. Number runs
     ("1 2 3 4 5 6"), sequence and matrix definitions and stock phrases sit in windows that many
     questions share, so copying them covers nothing.

   The coverage is of the part, not of the text: a stock phrase is a small share of a real
   question, while a copy, or a variant that changes a number or the quantity asked, reproduces
   most of it. ``min_coverage=0`` is the plain rule of GPT-3 and the decontamination literature:
   ANY shared ``n``-gram (no specific/distinctive screening, no coverage), kept as the baseline.

Why these defaults (``min_coverage`` 0.4, ``common_ngram`` 6, ``common_df`` 3): hand-read flags on
4,928 corpus documents (bench/RESULTS.md, "Decontamination"): the plain rule flagged 55, 10 of them
true copies; this one flags 12, the same 10 and 2 formula look-alikes. 0.5 loses two light
variants; windows of 5 to 8 words and ``common_df`` 2 to 5 change little.

The index is a sorted ``uint64`` array of distinct gram hashes (the hashing of :mod:`data.dedup`)
with, per hash, its entries (part, position, width, specific); ``check_many`` hashes a batch of
texts at once, screens the windows with a 16 MiB bitmap, binary-searches the rest and measures
coverage for all (text, part) pairs at once with prefix sums over the distinctive-word mask.
"""
from __future__ import annotations

import re
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from data.dedup import WordBatch, _mix, exact_key, words

FILTER_BITS = 24
REFERENCE_POOLS = ("math_train", "gsm8k_train")
WHOLE = 1 << 40  # a window width longer than any text: windows(WHOLE) is one hash per text, all its words


class Contamination(NamedTuple):
    contaminated: bool
    benchmark: str | None
    ngram: str | None  # the matched words, normalised (the first specific shared gram, or the question)
    record_id: str | None  # e.g. "gsm8k/test/0"
    coverage: float | None = None  # the share of the part's distinctive words covered (1.0 for exact/verbatim)
    rule: str | None = None  # "exact", "verbatim", "coverage" or "ngram" (min_coverage=0)


CLEAN = Contamination(False, None, None, None)

# --------------------------------------------------------------------------- normalisation

_MACRO_SUBS = [
    (r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])", " "),  # delimiter sizing
    (r"\\(?:[,;:! ]|quad|qquad|displaystyle|textstyle)(?![a-zA-Z])", " "),  # spacing and style
    (r"\\(?:text|mathrm|mathbf|textbf|mathit|textit|boldsymbol|operatorname|mbox)\s*(?=\{)", " "),
    (r"\\[dt]frac(?![a-zA-Z])", r"\\frac"),
    (r"\\[dt]binom(?![a-zA-Z])", r"\\binom"),
    (r"\^\s*\{?\s*\\circ\s*\}?|°", " degrees "),
    (r"\\(?:cdot|times)(?![a-zA-Z])", " × "),
    (r"\\div(?![a-zA-Z])", " ÷ "),
    (r"\\(?:leq?|leqslant)(?![a-zA-Z])", " ≤ "),
    (r"\\(?:geq?|geqslant)(?![a-zA-Z])", " ≥ "),
    (r"\\(?:neq?)(?![a-zA-Z])", " ≠ "),
    (r"\\(?:[lc]?dots|dotsb|dotsc)(?![a-zA-Z])|\.\.\.|…", " dots "),
    (r"−", "-"),
]
_MACROS = [(re.compile(pattern), replacement) for pattern, replacement in _MACRO_SUBS]
_SCREEN = re.compile(r"[\\°.…−]")  # texts without any of these need no substitution at all


def canonical_math(text: str) -> str:
    """The same problem typed two ways reads the same afterwards (see the module docstring)."""
    if not _SCREEN.search(text):
        return text
    for pattern, replacement in _MACROS:
        text = pattern.sub(replacement, text)
    return text


def problem_key(text: str) -> int:
    """What two whole problems must share to be the same problem: operator-aware words of the
    canonical text (so case, spacing, punctuation and LaTeX delimiters aside)."""
    return exact_key(" ".join(words(canonical_math(text))))


# --------------------------------------------------------------------------- index


def _mix_pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _mix(a ^ _mix(b * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)))


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each one's first occurrence, count): np.unique by sorting
    (numpy 2's hash-table path for uint64 was 6x slower here)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.ones(len(ordered), dtype=bool)
    new[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(ordered)))
    return ordered[starts], order[starts], counts


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    slot = np.searchsorted(sorted_set, values).clip(max=len(sorted_set) - 1)
    return sorted_set[slot] == values


def _union_sums(group: np.ndarray, begin: np.ndarray, end: np.ndarray, weights: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per group (sorted by group, then begin): (covered words, covered weight) of the union of
    the intervals [begin, end). ``weights`` are prefix sums over the flat word positions."""
    clipped = end.copy()
    same = group[1:] == group[:-1]
    # Intervals sorted by start: cutting each at the next start of its group makes them disjoint.
    clipped[:-1][same] = np.minimum(end[:-1][same], np.maximum(begin[1:][same], begin[:-1][same]))
    groups, first, _ = _distinct(group)
    words_covered = np.add.reduceat(clipped - begin, first) if len(first) else np.zeros(0, np.int64)
    weight = weights[clipped] - weights[begin]
    weight_covered = np.add.reduceat(weight, first) if len(first) else np.zeros(0, np.int64)
    return groups, np.stack([words_covered, weight_covered])


class Decontaminator:
    def __init__(self, items: Iterable[tuple[str, str, Sequence[tuple[str, bool]]]], n: int = 13,
                 min_short_words: int = 6, batch: int = 4096, *, min_coverage: float = 0.4,
                 common_ngram: int = 6, common_df: int = 3, reference: Iterable[str] = ()) -> None:
        """``items``: (benchmark, record id, [(text, is_question), ...]) in priority order (only a
        question is matched whole, or as a short gram); ``reference``: texts whose grams are not
        evidence (and which count towards how common a window is)."""
        if not 0 <= min_coverage <= 1:
            raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage}")
        for name, value in (("n", n), ("min_short_words", min_short_words), ("common_ngram", common_ngram),
                            ("common_df", common_df)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.n, self.min_short_words, self.min_coverage = n, min_short_words, min_coverage
        self.common_ngram, self.common_df = common_ngram, common_df
        self.items: list[tuple[str, str]] = []
        part_text, part_item, part_question = [], [], []
        for benchmark, record_id, parts in items:
            for text, question in parts:
                part_text.append(canonical_math(text))
                part_item.append(len(self.items))
                part_question.append(question)
            self.items.append((benchmark, record_id))
        self.part_item = np.array(part_item, dtype=np.int32)
        question = np.array(part_question, dtype=bool)

        self.exact: dict[int, int] = {}  # whole-problem key -> item, the first in priority order
        for text, item, is_question in zip(part_text, part_item, part_question):
            if is_question:
                self.exact.setdefault(problem_key(text), item)

        parts = WordBatch.of(part_text, operators=False)
        # Equal problems have equal operator-free word runs: a vectorised screen before problem_key.
        whole, whole_owner, _ = parts.windows(WHOLE)
        self._question_runs = _distinct(whole[question[whole_owner]])[0]
        self.part_lengths = parts.lengths
        self.part_starts = parts.starts
        refs = WordBatch.of((canonical_math(t) for t in reference), operators=False)
        self._distinctive_prefix = self._distinctive(parts, refs)

        grams, owner, start = parts.windows(n, short=False)
        width = np.full(len(grams), n, dtype=np.int64)
        short = question & (parts.lengths >= min_short_words) & (parts.lengths < n)
        short_parts = np.flatnonzero(short)
        keep = short[whole_owner]
        grams = np.concatenate([grams, whole[keep]])
        owner = np.concatenate([owner, whole_owner[keep]])
        start = np.concatenate([start, np.zeros(len(short_parts), dtype=np.int64)])
        width = np.concatenate([width, parts.lengths[whole_owner[keep]]])
        self.short_lengths = sorted(set(parts.lengths[short_parts].tolist()))

        # A gram is specific unless a reference question holds it (a short gram: holds its words in a row).
        reference_grams = [refs.windows(w, short=False)[0] for w in [n, *self.short_lengths]]
        specific = ~_member(grams, _distinct(np.concatenate(reference_grams))[0])

        order = np.lexsort((start, owner, grams))  # by hash, then part (registry order), then position
        grams, self.entry_part = grams[order], owner[order].astype(np.int32)
        self.entry_start, self.entry_width = start[order].astype(np.int32), width[order].astype(np.int32)
        self.entry_specific = specific[order]
        new = np.ones(len(grams), dtype=bool)
        new[1:] = grams[1:] != grams[:-1]
        self.first = np.flatnonzero(new)
        self.hashes = grams[self.first]
        self.counts = np.diff(np.append(self.first, len(grams))).astype(np.int32)
        # A 16 MiB presence bitmap on the top 24 hash bits: most windows miss it, and only the
        # few that hit it pay for a binary search (random probes into the sorted array are slow).
        self._filter = np.zeros(1 << FILTER_BITS, dtype=bool)
        self._filter[self.hashes >> np.uint64(64 - FILTER_BITS)] = True

    def _distinctive(self, parts: WordBatch, refs: WordBatch) -> np.ndarray:
        """Prefix sums (over the flat word positions of all parts) of the distinctive-word mask."""
        k = self.common_ngram
        docs, doc_owner, _ = parts.windows(WHOLE)
        ref_docs, ref_owner, _ = refs.windows(WHOLE)
        all_docs = np.concatenate([docs, ref_docs])
        owner_of = np.concatenate([doc_owner, ref_owner + len(parts.lengths)])
        representative = _distinct(all_docs)[1]  # the same question twice counts once
        is_representative = np.zeros(len(parts.lengths) + len(refs.lengths), dtype=bool)
        is_representative[owner_of[representative]] = True

        grams, owner, start = parts.windows(k)
        ref_grams, ref_owner_k, _ = refs.windows(k)
        pool = np.concatenate([grams, ref_grams])
        pool_owner = np.concatenate([owner, ref_owner_k + len(parts.lengths)])
        keep = is_representative[pool_owner]
        pool, pool_owner = pool[keep], pool_owner[keep].astype(np.uint64)
        # One hash per (gram, doc) pair, so a gram twice in a question counts once.
        one_per_doc = _distinct(_mix_pair(pool, pool_owner))[1]
        distinct, _, df = _distinct(pool[one_per_doc])
        gram_df = df[np.searchsorted(distinct, grams)]  # every part gram is in the pool (even a duplicate's)
        rare = gram_df <= self.common_df

        total = int(parts.lengths.sum())
        begin = (parts.starts[owner] + start)[rare]
        end = begin + np.minimum(k, parts.lengths[owner[rare]])
        # Per word, how many rare windows hold it (difference array): distinctive when any does.
        marks = np.bincount(begin, minlength=total + 1) - np.bincount(end, minlength=total + 1)
        mask = np.cumsum(marks[:-1]) > 0
        prefix = np.zeros(total + 1, dtype=np.int64)
        np.cumsum(mask, out=prefix[1:])
        return prefix

    @classmethod
    def from_benchmarks(cls, names: Sequence[str] | None = None, n: int = 13, min_short_words: int = 6, *,
                        min_coverage: float = 0.4, common_ngram: int = 6, common_df: int = 3,
                        reference: Sequence[str] | None = REFERENCE_POOLS) -> Decontaminator:
        """Every shipped benchmark test set (or ``names``), in registry order; ``reference``: the
        exemplar pools (registry names) whose questions are not evidence, none when empty."""
        from data.benchmarks.registry import BENCHMARKS, EXEMPLAR_POOLS, load_benchmark
        from data.errors import ConfigError

        def items():
            for name in names or list(BENCHMARKS):
                for record in load_benchmark(name):
                    parts = [(record.question, True)]
                    if record.choices:
                        parts.append((" ".join(record.choices), False))
                    if record.table:
                        parts.append((record.table, False))
                    yield name, record.id, parts

        reference_texts = []
        for pool in reference or ():
            if pool not in EXEMPLAR_POOLS:
                raise ConfigError(f"unknown reference pool {pool!r}; known: {', '.join(sorted(EXEMPLAR_POOLS))}")
            reference_texts.extend(record.question for record in load_benchmark(EXEMPLAR_POOLS[pool].spec))
        return cls(items(), n, min_short_words, min_coverage=min_coverage, common_ngram=common_ngram,
                   common_df=common_df, reference=reference_texts)

    @property
    def nbytes(self) -> int:
        arrays = (self.hashes, self.first, self.counts, self.entry_part, self.entry_start, self.entry_width,
                  self.entry_specific, self._distinctive_prefix, self._filter)
        return sum(a.nbytes for a in arrays)

    def check(self, text: str) -> Contamination:
        return self.check_many([text])[0]

    def check_many(self, texts: Sequence[str]) -> list[Contamination]:
        texts = list(texts)
        results = [CLEAN] * len(texts)
        batch = WordBatch.of((canonical_math(t) for t in texts), keep_tokens=True, operators=False)
        runs, run_owner, _ = batch.windows(WHOLE)
        for t in run_owner[_member(runs, self._question_runs)].tolist():
            item = self.exact.get(problem_key(texts[t]))
            if item is not None:
                benchmark, record_id = self.items[item]
                results[t] = Contamination(True, benchmark, " ".join(batch.tokens[t]), record_id, 1.0, "exact")
        if len(self.hashes) == 0:
            return results
        hit_text, hit_entry, hit_at = self._hits(batch)
        found = self._any(hit_text, hit_entry, hit_at) if self.min_coverage == 0 else \
            self._covered(hit_text, hit_entry, hit_at)
        for t, (entry, at, coverage, rule) in found.items():
            if results[t].contaminated:
                continue  # an exact match says more
            benchmark, record_id = self.items[int(self.part_item[self.entry_part[entry]])]
            gram = " ".join(batch.tokens[t][at : at + int(self.entry_width[entry])])
            results[t] = Contamination(True, benchmark, gram, record_id, coverage, rule)
        return results

    def _hits(self, batch: WordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(text, index entry, start in text) of every shared gram, all widths."""
        texts, entries, starts = [], [], []
        for width in [self.n, *self.short_lengths]:
            grams, owner, start = batch.windows(width, short=False)
            maybe = np.flatnonzero(self._filter[grams >> np.uint64(64 - FILTER_BITS)])
            slot = np.searchsorted(self.hashes, grams[maybe]).clip(max=len(self.hashes) - 1)
            hit = np.flatnonzero(self.hashes[slot] == grams[maybe])
            slot, where = slot[hit], maybe[hit]
            count = self.counts[slot]
            # Each hash has count entries from first on: expand every hit to all of them.
            offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
            entries.append(np.repeat(self.first[slot], count) + offset)
            texts.append(np.repeat(owner[where], count))
            starts.append(np.repeat(start[where], count))
        return np.concatenate(texts), np.concatenate(entries), np.concatenate(starts)

    def _any(self, hit_text, hit_entry, hit_at) -> dict[int, tuple[int, int, float | None, str]]:
        """The plain rule: a width-n gram before a short one, then the earliest in the text, then
        registry order."""
        found: dict[int, tuple[int, int, float | None, str]] = {}
        best: dict[int, tuple[int, int, int]] = {}
        for t, entry, at in zip(hit_text.tolist(), hit_entry.tolist(), hit_at.tolist()):
            key = (int(self.entry_width[entry] != self.n), at, int(self.entry_part[entry]))
            if t not in best or key < best[t]:
                best[t] = key
                found[t] = (entry, at, None, "ngram")
        return found

    def _covered(self, hit_text, hit_entry, hit_at) -> dict[int, tuple[int, int, float, str]]:
        """The coverage rules, for every (text, part) pair that shares a gram at once."""
        if len(hit_text) == 0:
            return {}
        part = self.entry_part[hit_entry].astype(np.int64)
        begin = self.entry_start[hit_entry].astype(np.int64)
        order = np.lexsort((begin, part, hit_text))
        text, part, entry, at = hit_text[order], part[order], hit_entry[order], hit_at[order]
        group = text * len(self.part_lengths) + part
        flat_begin = self.part_starts[part] + self.entry_start[entry]
        flat_end = flat_begin + self.entry_width[entry]
        groups, (covered, _) = _union_sums(group, flat_begin, flat_end, self._distinctive_prefix)
        specific = self.entry_specific[entry]
        spec_groups, (_, spec_weight) = _union_sums(group[specific], flat_begin[specific], flat_end[specific],
                                                    self._distinctive_prefix)
        weight = np.zeros(len(groups), dtype=np.int64)
        weight[np.searchsorted(groups, spec_groups)] = spec_weight
        g_part = groups % len(self.part_lengths)
        g_text = groups // len(self.part_lengths)
        length = self.part_lengths[g_part]
        starts = self.part_starts[g_part]
        distinctive = self._distinctive_prefix[starts + length] - self._distinctive_prefix[starts]
        coverage = np.where(distinctive > 0, weight / np.maximum(distinctive, 1), 0.0)
        verbatim = (length >= self.n) & (covered == length)
        hit = verbatim | ((coverage >= self.min_coverage) & (weight > 0))
        score = np.where(verbatim, 1.0, coverage)

        # Report the earliest specific gram of a group (any gram when none is specific): after
        # sorting by (group, rank), the first row of each group, in the order of ``groups``.
        rank = np.where(specific, 0, 1 << 40) + at
        pick = np.lexsort((rank, group))
        lead = pick[np.flatnonzero(np.r_[True, group[pick][1:] != group[pick][:-1]])]
        found: dict[int, tuple[int, int, float, str]] = {}
        best: dict[int, tuple[float, int]] = {}
        for i in np.flatnonzero(hit).tolist():
            t, p, s = int(g_text[i]), int(g_part[i]), float(score[i])
            key = (-s, int(self.part_item[p]))  # highest score, then registry order
            if t not in best or key < best[t]:
                best[t] = key
                rule = "verbatim" if verbatim[i] else "coverage"
                found[t] = (int(entry[lead[i]]), int(at[lead[i]]), round(s, 4), rule)
        return found
