"""Reading the distill SFT export for ``synth train``. The token rows themselves (tokenizing,
packing, isolation, loss) are the shared training core's: :mod:`training.rows`."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data.jsonl import iter_json_objects
from training.rows import (
    IGNORE,
    PackedRow,
    SftExample,
    check_isolation,
    collate,
    pack,
    per_example_losses,
    sft_prompt_target,
    token_losses,
    tokenize_sft,
)

__all__ = ["IGNORE", "PackedRow", "SftExample", "check_isolation", "collate", "pack", "per_example_losses",
           "read_sft_rows", "token_losses", "tokenize_sft"]


def read_sft_rows(path: Path, fmt: str, limit: int | None = None) -> Iterator[tuple[str, str | list, str]]:
    """(id, prompt, target) from the distill export: raw rows ``{id, prompt, completion}``; chat
    rows ``{id, messages}`` whose last message is the assistant's target (the prompt is then the
    earlier messages)."""
    count = 0
    for number, row in iter_json_objects(path):
        prompt, target = sft_prompt_target(row, fmt, f"{path}:{number}")
        yield str(row.get("id", number)), prompt, target
        count += 1
        if limit is not None and count >= limit:
            return
