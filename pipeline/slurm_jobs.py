"""Slurm's command-line clients from Python, and the record of what a recipe submitted.

``sbatch`` submits; ``squeue`` says which jobs are still queued (pending or running), per
array task; ``sacct`` (where the cluster keeps accounting) also says how ended jobs ended.
``<workdir>/submitted.json`` lists every submission (stage, step, job id, array indices,
time); it is rewritten whole (temp file + rename) under a file lock that ``mathsynth submit``
holds from its look at the queue to its last ``sbatch``, so two submits cannot both submit a step.
"""
from __future__ import annotations

import getpass
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from filelock import FileLock

from data.errors import UserError

RECORD = "submitted.json"
# States a job or task leaves; anything else squeue lists is still going to run.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "REVOKED"}

TaskStates = dict[str, dict[int, str]]  # job id -> array index (0 for a plain job) -> state


class SubmitError(UserError):
    """sbatch is missing or refused a job."""


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch not found on PATH: submit from a machine with the Slurm clients "
                          "(or run the recipe here with mathsynth run)")


def sbatch(script: Path, options: list[str]) -> str:
    """Submit ``script``; its job id (sbatch --parsable, the cluster name cut off)."""
    require_sbatch()
    command = ["sbatch", "--parsable", *options, str(script)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
        raise SubmitError(f"{' '.join(command)}: {reason}")
    return done.stdout.strip().split(";")[0]


def scancel(jobs: list[str]) -> None:
    """Cancel jobs or array tasks (``123``, ``123_4``)."""
    done = subprocess.run(["scancel", *jobs], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SubmitError(f"scancel {' '.join(jobs)}: {(done.stderr.strip() or 'failed').splitlines()[-1]}")


def queued() -> TaskStates | None:
    """Every job of ours still in the queue, per array task; None when squeue cannot say."""
    if shutil.which("squeue") is None:
        return None
    done = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return None
    return {job: tasks for job, tasks in _parse(done.stdout).items()
            if tasks and any(state not in ENDED for state in tasks.values())}


def job_states(job_ids: list[str]) -> tuple[str, TaskStates] | None:
    """Where the jobs stand: ("sacct", every job's tasks), else ("squeue", only those still
    queued; the cluster keeps no accounting), else None (no Slurm clients here)."""
    if job_ids and shutil.which("sacct"):
        done = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and done.stdout.strip():
            return "sacct", _parse(done.stdout)
    found = queued()
    return None if found is None else ("squeue", found)


def _parse(text: str) -> TaskStates:
    """``123_4|RUNNING``, ``123_[5-7%2]|PENDING``, ``124|CANCELLED by 0`` lines -> states."""
    states: TaskStates = {}
    for line in text.splitlines():
        task, _, state = line.strip().partition("|")
        if not state or "." in task:  # a job step (123.batch), not a job
            continue
        job, _, indices = task.partition("_")
        for index in parse_indices(indices.strip("[]").split("%")[0]) if indices else [0]:
            states.setdefault(job, {})[index] = state.split()[0]
    return states


def parse_indices(text: str) -> list[int]:
    """``0-2,5`` -> [0, 1, 2, 5]."""
    found = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        found += range(int(first), int(last or first) + 1)
    return found


def format_indices(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> ``0-2,5`` (an sbatch --array value)."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


class SubmissionRecord:
    """``<workdir>/submitted.json``: {"submissions": [{stage, step, job_id, array, indices, time, script}]}."""

    def __init__(self, workdir: Path) -> None:
        self.path = Path(workdir) / RECORD

    def lock(self, timeout_s: float = 600) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(f"{self.path}.lock", timeout=timeout_s)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return json.loads(self.path.read_text(encoding="utf-8"))["submissions"]

    def add(self, entry: dict[str, Any]) -> None:
        """Append one submission; the file is replaced whole, never half-written."""
        from data.storage import atomic_write_json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"submissions": [*self.read(), entry]})


def summary(job_id: str, indices: list[int], array: bool, tasks: dict[int, str] | None, source: str | None) -> str:
    """``job 123 [0-1] COMPLETED``, ``job 123 [0-1] 0 COMPLETED, 1 CANCELLED``, ``job 124 not queued``."""
    name = f"job {job_id}" + (f" [{format_indices(indices)}]" if array else "")
    if source is None:
        return name
    tasks = {index: state for index, state in (tasks or {}).items() if index in indices}
    if not tasks:
        return f"{name} " + ("not queued" if source == "squeue" else "unknown to sacct")
    if len(set(tasks.values())) == 1 and len(tasks) == len(indices):
        return f"{name} {next(iter(tasks.values()))}"
    return f"{name} " + ", ".join(f"{index} {tasks.get(index, 'not queued')}" for index in indices)

