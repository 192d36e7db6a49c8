"""Where a stage output stands, read from its folder alone: ``mathsynth status FOLDER``.

pending (no shard sealed), partial (i of N shards sealed, and which are running now),
finishing (every shard sealed, the finish step not yet recorded), complete.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.shards import Shard
from data.storage import lock_is_held, part_stem, read_manifest


@dataclass
class OutputState:
    folder: Path
    stage: str
    num_shards: int
    sealed: list[int]
    running: list[int] = field(default_factory=list)
    complete: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.complete:
            return "complete"
        if len(self.sealed) == self.num_shards:
            return "finishing"
        return "partial" if self.sealed else "pending"

    def line(self, summary: str | None = None) -> str:
        text = f"{self.folder}: {self.stage} {self.state}"
        if self.state in ("partial", "pending"):
            missing = sorted(set(range(self.num_shards)) - set(self.sealed))
            text += f" ({len(self.sealed)} of {self.num_shards} shards sealed; missing {_ranges(missing)}"
            text += f"; running now: {_ranges(self.running)})" if self.running else ")"
        elif self.state == "finishing":
            text += " (every shard sealed; the finish step has not run: rerun any shard)"
        if summary:
            text += f": {summary}"
        for warning in self.manifest.get("warnings", []):
            text += f"\n  warning: {warning}"
        return text


def read_state(folder: str | Path) -> OutputState:
    folder = Path(folder)
    manifest = read_manifest(folder)
    count = int(manifest.get("num_shards", 1))
    sealed = sorted(manifest.get("shards_done", []))
    running = [i for i in sorted(set(range(count)) - set(sealed)) if lock_is_held(folder / f".{part_stem(Shard(i, count))}.lock")]
    return OutputState(folder, str(manifest.get("stage")), count, sealed, running, bool(manifest.get("complete")), manifest)


def _ranges(indices: list[int]) -> str:
    """``0-3, 7, 9-10``: a readable list of shard indices, however many."""
    if not indices:
        return "none"
    spans, start, prev = [], indices[0], indices[0]
    for index in indices[1:] + [None]:
        if index is not None and index == prev + 1:
            prev = index
            continue
        spans.append(f"{start}-{prev}" if prev > start else str(start))
        if index is not None:
            start = prev = index
    return ", ".join(spans)
