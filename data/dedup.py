"""Exact and near-duplicate detection for millions of texts, across shards.

Normalisation (one definition, used by dedup, decontamination and distill's index):

* ``words(text)``: casefolded runs of letters/digits, plus each math operator character
  (``+ - * / = < > ^ × ÷ − ≤ ≥ ≠``) as a word of its own. Other punctuation, ``$``, braces and
  backslashes are dropped, so LaTeX markup and spacing do not matter, but "2+3" and "2*3" differ.
* ``exact_text(text)``: casefolded, whitespace runs collapsed to one space, ends stripped;
  ``exact_key`` is its 8-byte blake2b. Anything subtler ("x + 1" vs "x+1") has equal ``words``
  and so shingle Jaccard 1.0: the near-duplicate pass drops it.

Hashing: each distinct word is hashed once (blake2b, 8 bytes, cached); a shingle (word n-gram)
hash is a polynomial of its word hashes mod 2^64, computed for all windows of a batch at once
from prefix sums, then mixed (splitmix64). A text of fewer than ``n`` words (but at least one)
has one shingle: all its words. MinHash functions are multiply-shift,
``((a * x + b) mod 2^64) >> 32`` with ``a`` odd, on the 64-bit shingle hash ``x``: numpy's
wrapping uint64 arithmetic does it with no modulo (5x faster than ``(a * x + b) mod p`` here,
and as accurate on mixed inputs: see tests), and a signature fits ``uint32``. Everything is
seeded and platform independent: runs agree.

Cross-shard use (one Slurm task per shard, then one merge)::

    sketch = ShardSketch.compute(ids, texts)          # per shard, parallel
    sketch.save(folder)                               # .npy files
    decisions = merge_shards([ShardSketch.load(f) for f in folders], threshold=0.8)

The merge decides in global order (shard order, then position): a record is an exact duplicate
of the first record with the same ``exact_key``; otherwise a near duplicate of the most similar
(exact shingle Jaccard >= threshold; ties: the earliest) earlier *kept* record among its LSH
candidates. Records sharing no LSH bucket with any other record are kept without a Python-level
step, so the merge holds per record only its band keys (``8 * bands`` bytes), its exact key and a
few decision bytes; shingles are read through memory maps only for candidates.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# The signature of a text without shingles. A real minimum equals it with probability 2^-32
# per permutation (times the shingle count): emptiness is read from the shingle counts instead.
EMPTY = np.uint32(0xFFFFFFFF)

# --------------------------------------------------------------------------- normalisation

_WORD = re.compile(r"[^\W_]+|[+\-*/=<>^×÷−≤≥≠]")
_ALNUM = re.compile(r"[^\W_]+")


def words(text: str, operators: bool = True) -> list[str]:
    """Casefolded alphanumeric runs and (unless ``operators`` is off) math operators: the unit
    of shingles and n-grams."""
    return (_WORD if operators else _ALNUM).findall(text.casefold())


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def exact_text(text: str) -> str:
    """What two texts must share to be exact duplicates: case and whitespace aside."""
    return " ".join(text.casefold().split())


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8"), digest_size=8).digest(), "little")


def exact_key(text: str) -> int:
    return _hash64(exact_text(text))


def exact_keys(texts: Iterable[str]) -> np.ndarray:
    return np.fromiter((exact_key(t) for t in texts), dtype=np.uint64)


# --------------------------------------------------------------------------- shingle hashing

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2^64
_BASE_INV = np.uint64(pow(int(_BASE), -1, 1 << 64))
_WORD_CACHE: dict[str, int] = {}
_WORD_CACHE_MAX = 2_000_000


def _word_hash(word: str) -> int:
    value = _WORD_CACHE.get(word)
    if value is None:
        if len(_WORD_CACHE) >= _WORD_CACHE_MAX:
            _WORD_CACHE.clear()  # bounded memory; the values are recomputed identically
        value = _WORD_CACHE[word] = _hash64(word)
    return value


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@dataclass
class WordBatch:
    """The word hashes of a batch of texts, end to end, with prefix sums for O(1) windows."""

    lengths: np.ndarray  # (m,) int64 words per text
    starts: np.ndarray  # (m,) int64 offset of each text's first word
    prefix: np.ndarray  # (T + 1,) uint64: sum_{k < i} h[k] * BASE^k
    inv_powers: np.ndarray  # (T + 1,) uint64: BASE^-i
    tokens: list[list[str]] | None = None

    @classmethod
    def of(cls, texts: Iterable[str], keep_tokens: bool = False, operators: bool = True) -> WordBatch:
        flat: list[int] = []
        lengths: list[int] = []
        kept: list[list[str]] | None = [] if keep_tokens else None
        cached = _WORD_CACHE.__getitem__
        for text in texts:
            tokens = words(text, operators)
            try:
                hashes = list(map(cached, tokens))
            except KeyError:
                hashes = [_word_hash(w) for w in tokens]
            flat.extend(hashes)
            lengths.append(len(tokens))
            if kept is not None:
                kept.append(tokens)
        hashes = np.array(flat, dtype=np.uint64)
        total = len(hashes)
        powers = np.full(total + 1, _BASE, dtype=np.uint64)
        powers[0] = 1
        np.cumprod(powers, out=powers)  # wraps mod 2^64, as intended
        inv = np.full(total + 1, _BASE_INV, dtype=np.uint64)
        inv[0] = 1
        np.cumprod(inv, out=inv)
        prefix = np.zeros(total + 1, dtype=np.uint64)
        np.cumsum(hashes * powers[:total], out=prefix[1:])
        lengths_arr = np.array(lengths, dtype=np.int64)
        starts = np.zeros(len(lengths_arr), dtype=np.int64)
        np.cumsum(lengths_arr[:-1], out=starts[1:])
        return cls(lengths_arr, starts, prefix, inv, kept)

    def windows(self, n: int, *, short: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hashes, owner text, start position in text) of every n-word window; a text of
        1..n-1 words gives one window of all its words when ``short``."""
        lengths = self.lengths
        count = np.maximum(lengths - n + 1, 0)
        size = np.full(len(lengths), n, dtype=np.int64)
        if short:
            is_short = (lengths > 0) & (lengths < n)
            count[is_short] = 1
            size[is_short] = lengths[is_short]
        owner = np.repeat(np.arange(len(lengths), dtype=np.int64), count)
        first = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(count[:-1], out=first[1:])
        position = np.arange(len(owner), dtype=np.int64) - first[owner]
        begin = self.starts[owner] + position
        width = size[owner]
        hashes = (self.prefix[begin + width] - self.prefix[begin]) * self.inv_powers[begin]
        hashes += width.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)  # the length matters
        return _mix(hashes), owner, position


@dataclass
class Shingles:
    """Each text's distinct shingle hashes, sorted, end to end: text i is ``hashes[offsets[i]:offsets[i+1]]``."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64 (m + 1,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]


def shingle_texts(texts: Iterable[str], n: int = 5) -> Shingles:
    batch = WordBatch.of(texts)
    hashes, owner, _ = batch.windows(n)
    order = np.lexsort((hashes, owner))
    hashes, owner = hashes[order], owner[order]
    distinct = np.ones(len(hashes), dtype=bool)
    distinct[1:] = (hashes[1:] != hashes[:-1]) | (owner[1:] != owner[:-1])
    hashes, owner = hashes[distinct], owner[distinct]
    offsets = np.zeros(len(batch.lengths) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=len(batch.lengths)), out=offsets[1:])
    return Shingles(hashes, offsets)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted distinct hash arrays (0.0 when both are empty)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common)


# --------------------------------------------------------------------------- MinHash


class MinHasher:
    """``num_perm`` hash functions ``h(x) = ((a * x + b) mod 2^64) >> 32`` (multiply-shift, ``a``
    odd) from a fixed seed, over 64-bit shingle hashes; values fit ``uint32``."""

    def __init__(self, num_perm: int = 128, seed: int = 1, chunk: int = 16) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm, self.chunk = num_perm, chunk
        self.a = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.b = rng.integers(0, 1 << 64, size=num_perm, dtype=np.uint64, endpoint=False)

    def signatures(self, shingles: Shingles) -> np.ndarray:
        """(m, num_perm) uint32; a text without shingles gets ``EMPTY`` everywhere."""
        m = len(shingles)
        out = np.full((m, self.num_perm), EMPTY, dtype=np.uint32)
        sizes = np.diff(shingles.offsets)
        nonempty = np.flatnonzero(sizes > 0)
        if len(nonempty) == 0:
            return out
        x = np.ascontiguousarray(shingles.hashes)[None, :]
        starts = shingles.offsets[nonempty]
        buffer = np.empty((self.chunk, x.shape[1]), dtype=np.uint64)  # reused: no per-step allocation
        for lo in range(0, self.num_perm, self.chunk):
            a, b = self.a[lo : lo + self.chunk, None], self.b[lo : lo + self.chunk, None]
            view = buffer[: len(a)]
            np.multiply(a, x, out=view)
            view += b
            view >>= np.uint64(32)
            out[nonempty, lo : lo + len(a)] = np.minimum.reduceat(view, starts, axis=1).T
        return out


def signatures(texts: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 1,
               batch: int = 4096) -> np.ndarray:
    """MinHash signatures, (len(texts), num_perm) uint32, computed in batches of ``batch`` texts."""
    hasher = MinHasher(num_perm, seed)
    parts = [hasher.signatures(shingle_texts(texts[i : i + batch], ngram)) for i in range(0, len(texts), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, num_perm), dtype=np.uint32)


def estimate_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if (a == EMPTY).all() or (b == EMPTY).all():
        return 0.0
    return float(np.mean(a == b))


# --------------------------------------------------------------------------- LSH


def lsh_params(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest spurious candidates) that still makes a pair
    at exactly ``threshold`` a candidate with probability >= ``recall``. Candidates are verified,
    so a spurious one costs time, never a wrong decision."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def band_keys(signatures: np.ndarray, bands: int, rows: int, chunk: int = 65536) -> np.ndarray:
    """(m, bands) uint64: one hash per band of ``rows`` signature values."""
    m = len(signatures)
    out = np.empty((m, bands), dtype=np.uint64)
    weights = _mix(np.arange(1, rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    for lo in range(0, m, chunk):
        block = np.asarray(signatures[lo : lo + chunk, : bands * rows]).astype(np.uint64)
        block = block.reshape(len(block), bands, rows)
        out[lo : lo + chunk] = _mix((block * weights).sum(axis=2, dtype=np.uint64))
    return out


class MinHashLSH:
    """Banded LSH over MinHash signatures: ``query`` returns every inserted key sharing a band.

    Memory: one dict entry per band per inserted key (~100 bytes each in CPython); for millions
    of records use :func:`merge_shards`, which only indexes records that have a bucket mate.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, bands: int | None = None,
                 rows: int | None = None) -> None:
        if bands is None or rows is None:
            bands, rows = lsh_params(threshold, num_perm)
        if bands * rows > num_perm:
            raise ValueError(f"bands * rows = {bands * rows} exceeds num_perm = {num_perm}")
        self.threshold, self.num_perm, self.bands, self.rows = threshold, num_perm, bands, rows
        self._buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def keys_of(self, signatures: np.ndarray) -> np.ndarray:
        return band_keys(np.atleast_2d(signatures), self.bands, self.rows)

    def insert(self, key: int, signature: np.ndarray | None = None, *, bands: np.ndarray | None = None) -> None:
        row = self.keys_of(signature)[0] if bands is None else bands
        for bucket, band in zip(self._buckets, row.tolist()):
            bucket.setdefault(band, []).append(key)
        self._count += 1

    def query(self, signature: np.ndarray | None = None, *, bands: np.ndarray | None = None) -> list[int]:
        row = self.keys_of(signature)[0] if bands is None else bands
        found: set[int] = set()
        for bucket, band in zip(self._buckets, row.tolist()):
            found.update(bucket.get(band, ()))
        return sorted(found)


# --------------------------------------------------------------------------- text-level index


class NearDuplicateIndex:
    """Texts added one by one; ``nearest`` gives the exact shingle Jaccard of the most similar
    LSH candidate (no false positives: candidates are verified on their shingle sets)."""

    def __init__(self, shingle: int = 5, threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> None:
        self.shingle = shingle
        self.hasher = MinHasher(num_perm, seed)
        self.lsh = MinHashLSH(threshold, num_perm)
        self._sets: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._sets)

    def shingles(self, text: str) -> np.ndarray:
        return shingle_texts([text], self.shingle)[0]

    def _prepare(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        shingles = shingle_texts([text], self.shingle)
        return shingles[0], self.lsh.keys_of(self.hasher.signatures(shingles))[0]

    def nearest(self, text: str) -> tuple[float, int | None]:
        """(Jaccard, index) of the most similar stored text (earliest on ties); (0.0, None) if none."""
        query, bands = self._prepare(text)
        return self._nearest(query, bands)

    def _nearest(self, query: np.ndarray, bands: np.ndarray) -> tuple[float, int | None]:
        best, best_index = 0.0, None
        if len(query) == 0:
            return best, best_index
        for i in self.lsh.query(bands=bands):
            score = jaccard(query, self._sets[i])
            if score > best:
                best, best_index = score, i
        return best, best_index

    def add(self, text: str) -> int | None:
        query, bands = self._prepare(text)
        return self._add(query, bands)

    def _add(self, query: np.ndarray, bands: np.ndarray) -> int | None:
        if len(query) == 0:
            return None
        index = len(self._sets)
        self._sets.append(query)
        self.lsh.insert(index, bands=bands)
        return index


# --------------------------------------------------------------------------- decisions

KEEP, EXACT, NEAR = 0, 1, 2
REASONS = ("keep", "exact_duplicate", "near_duplicate")


@dataclass(frozen=True)
class Decision:
    id: str
    keep: bool
    reason: str  # "keep", "exact_duplicate" or "near_duplicate"
    duplicate_of: str | None  # the id of the earlier record it duplicates
    jaccard: float  # 1.0 for exact duplicates, the exact shingle Jaccard for near ones


class Deduplicator:
    """A stream of (id, text), in order: the first occurrence is kept, later copies dropped.

    Holds every kept text's shingles and LSH entries in memory (one process, up to a few hundred
    thousand records); for millions across shards use :class:`ShardSketch` + :func:`merge_shards`.
    """

    def __init__(self, threshold: float = 0.8, ngram: int = 5, num_perm: int = 128, seed: int = 1) -> None:
        self.threshold = threshold
        self.index = NearDuplicateIndex(ngram, threshold, num_perm, seed)
        self._exact: dict[int, str] = {}
        self._kept_ids: list[str] = []

    def add(self, id: str, text: str) -> Decision:
        return self.add_many([(id, text)])[0]

    def add_many(self, items: Iterable[tuple[str, str]]) -> list[Decision]:
        items = list(items)
        texts = [text for _, text in items]
        shingles = shingle_texts(texts, self.index.shingle)
        bands = self.index.lsh.keys_of(self.index.hasher.signatures(shingles))
        decisions = []
        for i, (id, text) in enumerate(items):
            key = exact_key(text)
            if key in self._exact:  # the first record with this text, kept or not (as merge_shards)
                decisions.append(Decision(id, False, REASONS[EXACT], self._exact[key], 1.0))
                continue
            self._exact[key] = id
            score, j = self.index._nearest(shingles[i], bands[i])
            if j is not None and score >= self.threshold:
                decisions.append(Decision(id, False, REASONS[NEAR], self._kept_ids[j], score))
                continue
            if self.index._add(shingles[i], bands[i]) is not None:
                self._kept_ids.append(id)
            decisions.append(Decision(id, True, REASONS[KEEP], None, 0.0))
        return decisions


@dataclass
class Decisions:
    """Global decisions, as arrays (index = global position)."""

    ids: Sequence[str]
    reason: np.ndarray  # uint8: KEEP, EXACT or NEAR
    duplicate_of: np.ndarray  # int64 global index, -1 when kept
    jaccard: np.ndarray  # float32

    @property
    def keep(self) -> np.ndarray:
        return self.reason == KEEP

    def __len__(self) -> int:
        return len(self.reason)

    def __getitem__(self, i: int) -> Decision:
        dup = int(self.duplicate_of[i])
        return Decision(self.ids[i], bool(self.reason[i] == KEEP), REASONS[self.reason[i]],
                        self.ids[dup] if dup >= 0 else None, float(self.jaccard[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _ShardedShingles:
    """Shingle sets of several shards (memory-mapped) addressed by global index."""

    def __init__(self, parts: Sequence[Shingles]) -> None:
        self.parts = list(parts)
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts])

    def __getitem__(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.bounds, i, side="right")) - 1
        return np.asarray(self.parts[shard][i - int(self.bounds[shard])])


def _decide(ids: Sequence[str], keys: np.ndarray, exact: np.ndarray, empty: np.ndarray, score, threshold: float
            ) -> Decisions:
    """The global decision pass; ``score(i, j)`` is the similarity used to verify a candidate."""
    n = len(exact)
    reason = np.zeros(n, dtype=np.uint8)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.zeros(n, dtype=np.float32)
    if n == 0:
        return Decisions(ids, reason, duplicate_of, similarity)
    _, first, inverse = np.unique(exact, return_index=True, return_inverse=True)
    first_of = first[inverse.reshape(-1)]
    is_exact = first_of != np.arange(n)
    reason[is_exact], duplicate_of[is_exact], similarity[is_exact] = EXACT, first_of[is_exact], 1.0

    # Only records sharing some band bucket with another live record need the ordered pass.
    live = np.flatnonzero(~is_exact & ~empty)
    has_mate = np.zeros(len(live), dtype=bool)
    for band in range(keys.shape[1]):
        column = keys[live, band]
        order = np.argsort(column, kind="stable")
        same = column[order][1:] == column[order][:-1]
        has_mate[order[1:][same]] = True
        has_mate[order[:-1][same]] = True
    candidates = live[has_mate]
    buckets: list[dict[int, list[int]]] = [{} for _ in range(keys.shape[1])]
    for i, row in zip(candidates.tolist(), keys[candidates].tolist()):
        found: set[int] = set()
        for bucket, band in zip(buckets, row):
            found.update(bucket.get(band, ()))
        best, best_j = 0.0, -1
        for j in sorted(found):
            value = score(i, j)
            if value > best:
                best, best_j = value, j
        if best_j >= 0 and best >= threshold:
            reason[i], duplicate_of[i], similarity[i] = NEAR, best_j, best
            continue
        for bucket, band in zip(buckets, row):
            bucket.setdefault(band, []).append(i)
    return Decisions(ids, reason, duplicate_of, similarity)


def dedup_in_order(ids: Sequence[str], signatures: np.ndarray, exact_keys: np.ndarray, threshold: float = 0.8,
                   shingles: Shingles | None = None) -> Decisions:
    """Global keep/drop in the given order. Candidates are verified on exact shingle Jaccard when
    ``shingles`` are given, else on the MinHash estimate (then off by ~0.04 at 128 permutations)."""
    bands, rows = lsh_params(threshold, signatures.shape[1])
    keys = band_keys(signatures, bands, rows)
    empty = np.concatenate([(np.asarray(signatures[lo : lo + 65536]) == EMPTY).all(axis=1)
                            for lo in range(0, len(signatures), 65536)] or [np.zeros(0, dtype=bool)])
    if shingles is not None:
        def score(i: int, j: int) -> float:
            return jaccard(shingles[i], shingles[j])
    else:
        def score(i: int, j: int) -> float:
            return estimate_jaccard(signatures[i], signatures[j])
    return _decide(ids, keys, np.asarray(exact_keys, dtype=np.uint64), empty, score, threshold)


# --------------------------------------------------------------------------- shards


@dataclass
class ShardSketch:
    """What the merge needs from one shard: ids, exact keys, MinHash signatures, shingle sets."""

    ids: list[str]
    exact_keys: np.ndarray
    signatures: np.ndarray
    shingles: Shingles
    ngram: int = 5
    seed: int = 1

    @classmethod
    def compute(cls, ids: Sequence[str], texts: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 1,
                batch: int = 4096) -> ShardSketch:
        hasher = MinHasher(num_perm, seed)
        sigs, hashes, sizes = [], [], []
        for lo in range(0, len(texts), batch):
            part = shingle_texts(texts[lo : lo + batch], ngram)
            sigs.append(hasher.signatures(part))
            hashes.append(part.hashes)
            sizes.append(np.diff(part.offsets))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        if sizes:
            np.cumsum(np.concatenate(sizes), out=offsets[1:])
        return cls(list(ids), exact_keys(texts),
                   np.concatenate(sigs) if sigs else np.zeros((0, num_perm), dtype=np.uint32),
                   Shingles(np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64), offsets), ngram, seed)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (("exact_keys", self.exact_keys), ("signatures", self.signatures),
                            ("shingles", self.shingles.hashes), ("shingle_offsets", self.shingles.offsets)):
            tmp = folder / f"{name}.tmp.npy"
            np.save(tmp, array)
            tmp.replace(folder / f"{name}.npy")
        meta = {"ids": self.ids, "ngram": self.ngram, "seed": self.seed, "num_perm": int(self.signatures.shape[1])}
        tmp = folder / "sketch.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(folder / "sketch.json")

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> ShardSketch:
        folder = Path(folder)
        mode = "r" if mmap else None
        meta = json.loads((folder / "sketch.json").read_text())
        return cls(meta["ids"], np.load(folder / "exact_keys.npy"), np.load(folder / "signatures.npy", mmap_mode=mode),
                   Shingles(np.load(folder / "shingles.npy", mmap_mode=mode), np.load(folder / "shingle_offsets.npy")),
                   meta["ngram"], meta["seed"])


def merge_shards(sketches: Sequence[ShardSketch], threshold: float = 0.8) -> Decisions:
    """Global decisions over shards in the given order; equal to one pass over the concatenation."""
    if not sketches:
        return Decisions([], np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if len({(s.ngram, s.seed, s.signatures.shape[1]) for s in sketches}) > 1:
        raise ValueError("shard sketches were computed with different ngram/seed/num_perm")
    bands, rows = lsh_params(threshold, sketches[0].signatures.shape[1])
    keys = np.empty((sum(len(s.ids) for s in sketches), bands), dtype=np.uint64)  # filled in place: no 2nd copy
    lo = 0
    for sketch in sketches:
        keys[lo : lo + len(sketch.ids)] = band_keys(sketch.signatures, bands, rows)
        lo += len(sketch.ids)
    empty = np.concatenate([np.diff(s.shingles.offsets) == 0 for s in sketches])
    ids = [i for s in sketches for i in s.ids]
    shingles = _ShardedShingles([s.shingles for s in sketches])

    def score(i: int, j: int) -> float:
        return jaccard(shingles[i], shingles[j])

    return _decide(ids, keys, np.concatenate([s.exact_keys for s in sketches]), empty, score, threshold)


__all__ = [
    "Decision", "Decisions", "Deduplicator", "MinHashLSH", "MinHasher", "NearDuplicateIndex", "ShardSketch",
    "Shingles", "band_keys", "dedup_in_order", "estimate_jaccard", "exact_key", "exact_keys", "exact_text",
    "jaccard", "lsh_params", "merge_shards", "ngrams", "shingle_texts", "signatures", "words",
]
