"""Progress for long work: a bar on a terminal, periodic log lines otherwise (Slurm logs)."""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

log = logging.getLogger("mathsynth.progress")
LOG_EVERY_S = 30.0


@contextmanager
def progress_bar(description: str, *, total: int | None = None, unit: str = "item") -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``. On a TTY a tqdm bar; in a batch job, a log line every 30 s with
    the rate, so a Slurm log shows that work moves and how fast."""
    started = time.monotonic()
    done = 0
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True)
        try:
            yield bar.update
        finally:
            bar.close()
        return
    last = started

    def advance(count: int = 1) -> None:
        nonlocal done, last
        done += count
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            last = now
            log.info("%s: %d %ss, %.1f/s", description, done, unit, done / (now - started))

    yield advance
    elapsed = time.monotonic() - started
    log.info("%s: %d %ss in %.1fs (%.1f/s)", description, done, unit, elapsed, done / max(elapsed, 1e-9))
