"""One dataset row -> its tokens and loss mask (1 = the token is scored).

A row is plain text, a JiuZhang3.0 text (``## Question`` ... then a header naming the solution:
``## Solution``, ``## Code Solution``, ``## Step-by-Step Solution``), a prompt/completion pair
or chat ``messages``. What carries loss follows the source's ``loss`` key; ``auto`` is the paper's choice: a JiuZhang3.0 text its solution (the
header line is the question's), other text every token, an SFT row its completion.

Text rows are tokenized in batches with offsets (one fast-tokenizer call per chunk of rows), so
the solution boundary is a character position and the text is tokenized exactly as at
inference. Every text ends with EOS, scored, so the model learns where a document stops.
SFT rows are tokenized as ``synth train`` tokenizes them (prompt and completion apart).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from data.errors import ConfigError, InputError
from data.records import SourceLocation
from pretrain.config import Source
from training.rows import sft_prompt_target, tokenize_sft

# Kinds, as stored per document in the index.
PLAIN_TEXT, QUESTION_SOLUTION, SFT = 0, 1, 2
KIND_NAMES = {PLAIN_TEXT: "text", QUESTION_SOLUTION: "question/solution", SFT: "sft"}
NO_CUT = 1 << 30  # tokenize_sft's max_length: the packer, not the tokenizer, decides about length

_QUESTION = re.compile(r"\A\s*## Question\n")
# The solution header: "## Solution", "## Code Solution" (tool data), "## Step-by-Step Solution"
# (a quarter of the paper's released SFT rows use that one): the first header line naming a solution.
_SOLUTION = re.compile(r"\n## [^\n]*\bSolution\b[^\n]*\n")


@dataclass(frozen=True)
class TokenizedRow:
    location: SourceLocation
    ids: np.ndarray  # uint32
    loss: np.ndarray  # uint8, 1 where the token is scored
    kind: int


class BadRow(Exception):
    """A row this source cannot use; the message starts with file:line."""


def solution_start(text: str) -> int | None:
    """Character where a JiuZhang3.0 text's solution begins (after its header), or None."""
    if not _QUESTION.match(text):
        return None
    found = _SOLUTION.search(text)
    return found.end() if found else None


class RowTokenizer:
    def __init__(self, tokenizer, source: Source) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("tokenizer: a fast (Rust) tokenizer is needed (character offsets mark the solution)")
        self.tokenizer, self.source = tokenizer, source
        self.eos = tokenizer.eos_token_id

    def tokenize(self, rows: list[tuple[SourceLocation, dict]]) -> list[TokenizedRow | BadRow]:
        """The rows in order; a row that cannot be used is a :class:`BadRow` in its place."""
        out: list[TokenizedRow | BadRow | None] = [None] * len(rows)
        texts, text_slots = [], []
        for k, (location, row) in enumerate(rows):
            try:
                prepared = self._prepare(location, row)
            except BadRow as bad:
                out[k] = bad
                continue
            if isinstance(prepared, TokenizedRow):
                out[k] = prepared
            else:
                texts.append(prepared)
                text_slots.append(k)
        if texts:
            encoded = self.tokenizer([text for text, _, _ in texts], add_special_tokens=True,
                                     return_offsets_mapping=True, return_attention_mask=False)
            for k, (text, boundary, kind), ids, offsets in zip(text_slots, texts, encoded["input_ids"],
                                                                encoded["offset_mapping"]):
                out[k] = self._text_row(rows[k][0], ids, offsets, boundary, kind)
        return out  # type: ignore[return-value]

    def _prepare(self, location: SourceLocation, row: dict):
        """A text row: (text, solution boundary, kind) for the batched call. An SFT row: done here."""
        source, where = self.source, str(location)
        field = source.text_field
        if field in row:
            text = row[field]
            if not isinstance(text, str) or not text.strip():
                raise BadRow(f"{where}: {field!r} must be a non-empty string")
            if source.loss == "completion":
                raise BadRow(f"{where}: loss: completion needs prompt/completion or messages rows, not {field!r}")
            boundary = solution_start(text)
            if source.loss == "solution" and boundary is None:
                raise BadRow(f"{where}: loss: solution needs a '## Question' text with a solution header "
                             f"('## Solution', '## Code Solution', ...)")
            if source.loss == "all" or boundary is None:
                return text, 0, PLAIN_TEXT
            return text, boundary, QUESTION_SOLUTION
        if "messages" in row or "prompt" in row:
            if source.loss == "solution":
                raise BadRow(f"{where}: loss: solution needs '## Question' texts in {field!r}, not SFT rows")
            try:
                prompt, target = sft_prompt_target(row, "chat" if "messages" in row else "raw", where)
            except InputError as err:
                raise BadRow(str(err)) from None
            example = tokenize_sft(self.tokenizer, where, prompt, target, NO_CUT)
            ids = np.asarray(example.input_ids, dtype=np.uint32)
            loss = np.ones(len(ids), dtype=np.uint8)
            if source.loss != "all":
                loss[:example.first_target] = 0
            return TokenizedRow(location, ids, loss, SFT)
        raise BadRow(f"{where}: a row needs {field!r}, prompt/completion or messages")

    def _text_row(self, location, ids: list[int], offsets, boundary: int, kind: int) -> TokenizedRow:
        loss = [1 if kind == PLAIN_TEXT or start >= boundary else 0 for start, _ in offsets]
        if self.eos is not None and (not ids or ids[-1] != self.eos):
            ids, loss = [*ids, self.eos], [*loss, 1]
        return TokenizedRow(location, np.asarray(ids, dtype=np.uint32), np.asarray(loss, dtype=np.uint8), kind)
