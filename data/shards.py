"""Which slice of the work this process owns: ``--shard I/N`` or the Slurm array variables."""
from __future__ import annotations

import os
from dataclasses import dataclass

from data.errors import ConfigError

# A bound far above any real array, so that a typo (10**20) is refused at once: every stage
# keeps per-shard files and markers, and some loops run over all N shards.
MAX_SHARDS = 100_000


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: need 0 <= I < N and N >= 1")
        if self.count > MAX_SHARDS:
            raise ConfigError(f"shard {self.index}/{self.count}: N must be at most {MAX_SHARDS}")

    def owns(self, position: int) -> bool:
        """Round-robin ownership of the item at ``position`` in a stream."""
        return position % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 3/16") from None
    if count > MAX_SHARDS:
        raise ConfigError(f"--shard {text!r}: N must be at most {MAX_SHARDS}")
    return Shard(index, count)


def resolve_shard(cli_value: str | None, environ: dict[str, str] | None = None) -> Shard:
    """``--shard`` wins; else a Slurm array task; else the whole job is one shard.

    Slurm arrays may start at any index (``--array=1-8``), so the task id is taken relative
    to SLURM_ARRAY_TASK_MIN when Slurm provides it.
    """
    if cli_value:
        return parse_shard(cli_value)
    env = os.environ if environ is None else environ
    task = env.get("SLURM_ARRAY_TASK_ID")
    count = env.get("SLURM_ARRAY_TASK_COUNT")
    if task is None or count is None:
        return Shard(0, 1)
    first = _slurm_int(env, "SLURM_ARRAY_TASK_MIN", "0")
    return Shard(_slurm_int(env, "SLURM_ARRAY_TASK_ID") - first, _slurm_int(env, "SLURM_ARRAY_TASK_COUNT"))


def _slurm_int(env, name: str, default: str | None = None) -> int:
    value = env.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected an integer (Slurm sets it for an array task; "
                          f"unset it, or give --shard I/N)") from None
