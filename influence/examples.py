"""Texts -> token ids with a mask of the tokens whose loss is scored, and padded batches.

A candidate text is scored on its own tokens (language-modelling loss), or, when the
synthesizer's output for it is given, on that output's tokens with the text as the prompt.
A target example is scored on its solution, with its question as the prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from data.errors import InputError

if TYPE_CHECKING:
    from data.corpus import CorpusStats
    from data.records import Document
    from influence.config import InfluenceConfig

# How a target (question, solution) pair is shown to the scoring model: the JiuZhang3.0 format
# the eval stage prompts with, so the target gradient is that of solving in the format we test.
TARGET_PROMPT = "## Question\n{prompt}\n\n## Solution\n"


MISSING_PAIR = "missing pair field"


@dataclass(frozen=True)
class TokenizedExample:
    id: str
    input_ids: tuple[int, ...]
    first_scored: int  # tokens [first_scored:] are predicted and counted in the loss (>= 1)

    @property
    def scored_tokens(self) -> int:
        return len(self.input_ids) - self.first_scored


def tokenize_example(tokenizer, example_id: str, completion: str, prompt: str | None, max_length: int) -> TokenizedExample:
    """``completion`` (plus EOS, so a text always has a scored token) is scored; ``prompt``, when
    given, comes first and is only conditioned on. Too long: the completion keeps at most
    ``max_length - 1`` tokens, and the prompt is cut to what is left (its start is kept, as the
    synthesizer reads a text from its start)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    target = (tokenizer.encode(completion, add_special_tokens=False) + eos)
    if prompt is None:
        ids = target[:max_length]
        return TokenizedExample(example_id, tuple(ids), 1)
    target = target[: max_length - 1]
    context = tokenizer.encode(prompt, add_special_tokens=False)[: max_length - len(target)] or eos[:1] or [0]
    return TokenizedExample(example_id, tuple(context + target), len(context))


def candidate_example(doc: Document, config: InfluenceConfig, tokenizer, stats: CorpusStats) -> TokenizedExample | None:
    """A candidate as warm-up trains on it and influence scores it: the text on its own, or, with
    ``candidates.pair_field``, the pair's text written given the document's text. A bad pair
    field fails (one line, file:line) or, under ``policy: skip``, is counted and gives None."""
    pair_field = config.candidates.pair_field
    if pair_field is None:
        return tokenize_example(tokenizer, doc.id, doc.text, None, config.max_length)
    completion = doc.meta.get(pair_field)
    if not isinstance(completion, str) or not completion.strip():
        problem = "missing" if completion is None else ("not a string" if not isinstance(completion, str) else "empty")
        message = f"{doc.location or doc.id}: candidates.pair_field {pair_field!r} is {problem}"
        if config.candidates.policy == "fail":
            raise InputError(message)
        stats.record_skip(MISSING_PAIR, message)
        return None
    return tokenize_example(tokenizer, doc.id, completion, doc.text, config.max_length)


def length_sorted_batches(examples: Sequence[TokenizedExample], batch_size: int) -> list[list[int]]:
    """Positions of ``examples`` grouped into batches of similar length: padding is wasted
    compute, and per-example results do not depend on who shares the batch."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_ids), i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def collate(examples: Sequence[TokenizedExample], pad_id: int, device: str = "cpu"):
    """Right-padded ``input_ids`` (B, T), ``attention_mask`` (B, T) and ``scored`` (B, T), where
    ``scored[b, t]`` says token t of example b is predicted from tokens < t and counted.

    Right padding keeps the per-example gradient exact for a causal model: real tokens never
    attend to the pads after them, and pads carry no loss, so nothing flows through them.
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    scored = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        scored[row, example.first_scored:n] = True
    return input_ids.to(device), attention_mask.to(device), scored.to(device)
