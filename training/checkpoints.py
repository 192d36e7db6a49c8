"""Resumable training state: ``<output>/checkpoints/step-XXXXXXXX`` folders, whole or absent.

Each holds model, optimizer, scheduler and every process's RNG (``accelerator.save_state``),
written into a temporary folder that is renamed once its state file is in; the last ``keep``
are kept. The data position needs only the step: the order of rows is a pure function of the
config.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from data.errors import OutputError
from data.storage import atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


def saved_checkpoints(output: Path) -> list[Path]:
    folder = output / CHECKPOINTS
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator, output: Path, step: int, keep: int) -> None:
    final = output / CHECKPOINTS / f"step-{step:08d}"
    tmp = output / CHECKPOINTS / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, {"step": step, "processes": accelerator.num_processes})
        os.replace(tmp, final)  # whole or absent: the state file is in before the rename
        for old in saved_checkpoints(output)[: -max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def resume_step(accelerator, output: Path, total_steps: int) -> int:
    """Load the last checkpoint into the prepared objects; the step to continue from (0: none)."""
    saved = saved_checkpoints(output)
    if accelerator.is_main_process:
        for torn in (output / CHECKPOINTS).glob(".tmp-step-*"):  # a kill while saving leaves these
            shutil.rmtree(torn, ignore_errors=True)
    if not saved:
        return 0
    state = json.loads((saved[-1] / STATE_FILE).read_text())
    world = accelerator.num_processes
    if state.get("processes", world) != world:  # the data position is a step of global batches
        raise OutputError(f"output: {saved[-1]} was saved by {state['processes']} processes; resume with the "
                          f"same number (this run has {world})")
    accelerator.load_state(str(saved[-1]))
    log.info("resuming from %s (step %d of %d)", saved[-1], state["step"], total_steps)
    return state["step"]


def drop_checkpoints(output: Path) -> None:
    shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
