"""Token rows for training: tokens conditioned on, tokens scored, several examples (documents)
packed per row without seeing each other. ``synth train`` builds rows from SFT examples here;
``pretrain`` builds the same rows from its memory-mapped token arrays.

Isolation: every packed example's position ids restart at 0 and the model is called with NO
attention mask. transformers (>= 4.53, masking_utils.find_packed_sequence_indices) reads a
restart of the position ids as the start of a new sequence and builds a block-diagonal causal
mask for sdpa/eager/flex; flash-attention 2 turns the same position ids into varlen boundaries.
``check_isolation`` verifies this for the loaded model at start, since a model that ignores it
would train silently on cross-contaminated attention.
Labels: -100 everywhere except target tokens, and always at an example's first position, so no
token is ever predicted from the previous example's last one.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from data.errors import InputError

IGNORE = -100


@dataclass(frozen=True)
class SftExample:
    id: str
    input_ids: tuple[int, ...]
    first_target: int  # tokens [first_target:] are the target (>= 1)

    @property
    def target_tokens(self) -> int:
        return len(self.input_ids) - self.first_target


@dataclass(frozen=True)
class PackedRow:
    """One training row. The sequences are tuples (built from SFT examples) or int64 numpy
    arrays (read from a token file); ``collate`` takes either."""

    input_ids: Sequence[int]
    labels: Sequence[int]
    position_ids: Sequence[int]
    example_ids: tuple[str, ...]
    starts: tuple[int, ...]  # where each example begins in the row

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def sft_prompt_target(row: dict, fmt: str, where: str) -> tuple[str | list, str]:
    """(prompt, target) of an SFT row: ``raw`` rows ``{prompt, completion}``; ``chat`` rows
    ``{messages}`` whose last message is the assistant's target (the prompt is then the earlier
    messages). A row without them is a one-line error naming ``where`` (file:line)."""
    if fmt == "raw":
        prompt, target = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str) or not isinstance(target, str) or not target.strip():
            raise InputError(f"{where}: a raw row needs string fields prompt and completion (non-empty)")
        return prompt, target
    messages = row.get("messages")
    if (not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages)
            or messages[-1].get("role") != "assistant" or not isinstance(messages[-1].get("content"), str)):
        raise InputError(f"{where}: a chat row needs messages ending with an assistant message")
    return messages[:-1], messages[-1]["content"]


def tokenize_sft(tokenizer, example_id: str, prompt: str | list, target: str, max_length: int) -> SftExample:
    """Prompt and target tokenized apart (as the synthesizer is prompted at inference: the prompt
    alone, then it continues), the target ending with EOS. A chat prompt is rendered with the
    tokenizer's template (generation prompt included) and the target is what the template puts
    after it. Too long: the target keeps at most ``max_length - 1`` tokens and the prompt its start."""
    # Tokenize the prompt as vLLM will at inference: a raw prompt with the tokenizer's special
    # tokens (a Llama base gets its BOS), a rendered chat without (the template holds them).
    special = True
    if isinstance(prompt, list):
        from llm.loading import render_chat

        prompt_text = render_chat(tokenizer, prompt)
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": target}], tokenize=False)
        target = full[len(prompt_text):] if full.startswith(prompt_text) else target
        prompt, special = prompt_text, False
    eos = tokenizer.eos_token
    if eos and not target.endswith(eos):
        target_ids = tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
    else:
        target_ids = tokenizer.encode(target, add_special_tokens=False)
    target_ids = target_ids[: max_length - 1]
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=special)
    if special and tokenizer.eos_token_id is not None and len(prompt_ids) > 1 and prompt_ids[-1] == tokenizer.eos_token_id \
            and not prompt.endswith(tokenizer.eos_token or "\0"):
        prompt_ids = prompt_ids[:-1]  # a tokenizer that appends EOS: the prompt does not end there
    prompt_ids = prompt_ids[: max_length - len(target_ids)]
    if not prompt_ids:  # the first token is never scored: give an empty prompt one to predict from
        prompt_ids = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
    return SftExample(example_id, tuple(prompt_ids + target_ids), len(prompt_ids))


def _row(examples: Sequence[SftExample]) -> PackedRow:
    input_ids, labels, positions, starts = [], [], [], []
    for example in examples:
        starts.append(len(input_ids))
        input_ids.extend(example.input_ids)
        labels.extend([IGNORE] * example.first_target + list(example.input_ids[example.first_target:]))
        positions.extend(range(len(example.input_ids)))
    return PackedRow(tuple(input_ids), tuple(labels), tuple(positions), tuple(e.id for e in examples), tuple(starts))


def pack(examples: Iterable[SftExample], max_length: int, *, packing: bool = True) -> list[PackedRow]:
    """Rows of at most ``max_length`` tokens, filled in the given order (next-fit: an example
    that does not fit closes the row). Without packing, one example per row."""
    rows, current, used = [], [], 0
    for example in examples:
        if len(example.input_ids) > max_length:
            raise ValueError(f"example {example.id} has {len(example.input_ids)} tokens > max_length {max_length}")
        if current and (not packing or used + len(example.input_ids) > max_length):
            rows.append(_row(current))
            current, used = [], 0
        current.append(example)
        used += len(example.input_ids)
    if current:
        rows.append(_row(current))
    return rows


def collate(rows: Sequence[PackedRow], pad_id: int, device="cpu") -> dict:
    """Tensors for one micro-batch, padded to its longest row. The padding is a segment of its
    own (positions from 0, labels ignored), so it is isolated like any packed example.
    ``segment_ids`` numbers the examples in each row (padding: -1) for per-example losses."""
    import torch

    width = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[b, :n] = torch.as_tensor(row.input_ids)
        labels[b, :n] = torch.as_tensor(row.labels)
        position_ids[b, :n] = torch.as_tensor(row.position_ids)
        position_ids[b, n:] = torch.arange(width - n)
        ends = list(row.starts[1:]) + [n]
        for k, (start, end) in enumerate(zip(row.starts, ends)):
            segment_ids[b, start:end] = k
    return {name: t.to(device) for name, t in (("input_ids", input_ids), ("labels", labels),
                                                ("position_ids", position_ids), ("segment_ids", segment_ids))}


def token_losses(model, batch: dict):
    """Cross-entropy of every scored token, shape (B, T-1), zero where not scored; and the
    scored mask. The model gets position ids and no attention mask (see the module doc)."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    # Shift the labels, not the logits: slicing logits[:, :-1] copies the whole (B, T, vocab)
    # tensor, a full extra copy of the largest activation with a 128k-152k vocabulary.
    labels = batch["labels"]
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                             reduction="none").view_as(targets)[:, :-1]
    return losses, targets[:, :-1] != IGNORE


def per_example_losses(model, batch: dict) -> dict[tuple[int, int], float]:
    """Mean target loss of each (row, segment) in the batch: for checking packed == unpacked."""
    losses, mask = token_losses(model, batch)
    segments = batch["segment_ids"][:, 1:]
    out = {}
    for b in range(losses.shape[0]):
        for k in segments[b].unique().tolist():
            if k < 0:
                continue
            chosen = (segments[b] == k) & mask[b]
            if chosen.any():
                out[(b, k)] = (losses[b][chosen].sum() / chosen.sum()).item()
    return out


def check_isolation(model, vocab_size: int) -> float:
    """Largest logit difference between two short sequences run packed in one row and run
    alone; a model that lets packed examples attend to each other gives a large one."""
    import torch

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(0, vocab_size, (n,), generator=generator) for n in (7, 9))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        packed = model(input_ids=torch.cat([first, second])[None].to(device),
                       position_ids=torch.cat([torch.arange(7), torch.arange(9)])[None].to(device), use_cache=False).logits[0, 7:]
        alone = model(input_ids=second[None].to(device), position_ids=torch.arange(9)[None].to(device), use_cache=False).logits[0]
    model.train(was_training)
    return (packed.float() - alone.float()).abs().max().item()
