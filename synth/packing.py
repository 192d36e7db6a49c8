"""Reading the distill SFT export for ``synth train``. The token rows themselves (tokenizing,
packing, isolation, loss) are the shared training core's: :mod:`training.rows`."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data.errors import InputError
from data.jsonl import iter_json_objects
from training.rows import (
    IGNORE,
    PackedRow,
    SftExample,
    check_isolation,
    collate,
    pack,
    per_example_losses,
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
        where = f"{path}:{number}"
        if fmt == "raw":
            prompt, target = row.get("prompt"), row.get("completion")
            if not isinstance(prompt, str) or not isinstance(target, str) or not target.strip():
                raise InputError(f"{where}: a raw row needs string fields prompt and completion (non-empty)")
        else:
            messages = row.get("messages")
            if (not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages)
                    or messages[-1].get("role") != "assistant" or not isinstance(messages[-1].get("content"), str)):
                raise InputError(f"{where}: a chat row needs messages ending with an assistant message")
            prompt, target = messages[:-1], messages[-1]["content"]
        yield str(row.get("id", number)), prompt, target
        count += 1
        if limit is not None and count >= limit:
            return
