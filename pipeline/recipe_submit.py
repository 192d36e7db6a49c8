"""``mathsynth submit --recipe FILE --cluster CLUSTER.yaml``: the recipe as a chain of Slurm jobs.

Every step of every selected stage becomes ``<workdir>/slurm/<stage>-<step words>.sbatch``: the
cluster file's settings for its kind (pipeline/cluster.py), the setup lines, then the same
command ``mathsynth run`` would start, on the resolved config ``<workdir>/configs/<stage>.yaml``.
A sharded step is an array whose task ``i`` runs ``--shard i/N``, said explicitly, so a
resubmission of some indices (``--array=1,5``) runs exactly those shards. Each job waits
(``afterok``, ``--kill-on-invalid-dep=yes``) on the jobs of the steps before it, so one failure
cancels what depends on it instead of leaving it pending forever.

Submitting again is how a chain is repaired: a step whose folder is complete is skipped, a
partial sharded one gets only its missing indices, and a step still queued from an earlier
submit (squeue) is not submitted twice; what comes after it waits on it. Every submission is
recorded in ``<workdir>/submitted.json``, which ``mathsynth status --recipe`` reads.
"""
from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.cluster import Cluster, TrainSettings, load_cluster
from pipeline.recipe import Recipe, ResolvedStage, Step, load_recipe
from pipeline.recipe_run import add_recipe_args, selected_stages, shared_overrides
from pipeline.slurm_jobs import (
    SubmissionRecord,
    SubmitError,
    TaskStates,
    format_indices,
    job_states,
    queued,
    require_sbatch,
    sbatch,
    scancel,
    summary,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "slurm" / "train.sbatch"  # srun + accelerate launch, one launcher per node
ACCELERATED = {("synth", "train"), ("pretrain", "train")}  # the training runs train.sbatch starts


def configure(parser: argparse.ArgumentParser) -> None:
    add_recipe_args(parser, dry_run_help="print each job script and the chain; submit nothing")
    parser.add_argument("--cluster", required=True, help="cluster YAML: Slurm settings per kind of step "
                                                          "(configs/clusters/example.yaml)")


@dataclass
class StepJob:
    """One step of a stage, as this submission sees it."""

    stage: ResolvedStage
    step: Step
    folder: str
    shards: int  # N of its array (1: a plain job)
    todo: list[int]  # the indices to submit (shards neither sealed nor queued)
    waiting_on: list[str]  # earlier submissions still queued (job ids, job_task for an array task)
    script: Path
    replaced: list[str] = field(default_factory=list)  # pending jobs of an earlier submit to cancel first
    job_id: str | None = None
    after: list[str] = field(default_factory=list)  # what it was submitted after

    @property
    def words(self) -> str:
        return " ".join(self.step.command)

    @property
    def name(self) -> str:
        return f"{self.stage.name}-{'-'.join(self.step.command)}"

    @property
    def complete(self) -> bool:
        return not self.todo and not self.waiting_on

    def ids(self) -> list[str]:
        """What a later step waits on: this job and the earlier ones still queued."""
        return ([self.job_id] if self.job_id else []) + self.waiting_on


def submit(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, shared_overrides(args.shared))
    stages = selected_stages(recipe, args.first, args.last)
    cluster = load_cluster(args.cluster)
    submit_dir = Path.cwd()
    if args.dry_run:
        jobs = plan(recipe, stages, queued() or {})
        for job in jobs:
            if job.todo:
                print(f"--- {job.script}\n{job_script(recipe, job, cluster, submit_dir)}")
        print("\n".join(chain_lines(jobs, dry_run=True)))
        return 0
    require_sbatch()
    record = SubmissionRecord(recipe.workdir)
    with record.lock():
        jobs = plan(recipe, stages, _queue_or_fail())
        for job in jobs:
            if job.todo:
                _write(recipe.workdir / "configs" / f"{job.stage.name}.yaml", yaml.safe_dump(job.stage.raw, sort_keys=False))
                _write(job.script, job_script(recipe, job, cluster, submit_dir))
        (recipe.workdir / "logs").mkdir(parents=True, exist_ok=True)
        submit_chain(jobs, record)
    print("\n".join(chain_lines(jobs, dry_run=False)))
    return 0


def plan(recipe: Recipe, stages: list[ResolvedStage], queue: TaskStates) -> list[StepJob]:
    """Each step of ``stages`` with the shard indices to submit and the earlier jobs still queued.

    A job of an earlier submit still pending after a step that has shards to submit again was
    chained behind the hole (a failed or cancelled task): Slurm cancels it once that array ends,
    or, where the task was cancelled while pending (it leaves the array), starts it on an
    incomplete input. So it is cancelled now and submitted again behind the new jobs."""
    submitted = SubmissionRecord(recipe.workdir).read()
    jobs, hole = [], False
    for stage in stages:
        for step, key in zip(stage.kind.steps, stage.kind.outputs):
            shards = stage.shards if step.sharded else 1
            sealed = sealed_shards(stage.state_folder(key), shards)
            waiting_on, replaced, busy = [], [], set()
            for entry in submitted:
                if (entry["stage"], entry["step"]) != (stage.name, " ".join(step.command)):
                    continue
                for index, state in queue.get(entry["job_id"], {}).items():
                    if index in entry["indices"] and index not in sealed:
                        task = f"{entry['job_id']}_{index}" if entry["array"] else entry["job_id"]
                        if hole and state == "PENDING":
                            replaced.append(task)
                        else:
                            busy.add(index)
                            waiting_on.append(task)
            todo = [index for index in range(shards) if index not in sealed and index not in busy]
            hole = hole or bool(todo)
            script = recipe.workdir / "slurm" / f"{stage.name}-{'-'.join(step.command)}.sbatch"
            jobs.append(StepJob(stage, step, stage.outputs[key], shards, todo, waiting_on, script, replaced))
    return jobs


def sealed_shards(folder: str, shards: int) -> set[int]:
    """The shard indices of ``folder`` that are done (all of them once it is complete)."""
    from data.storage import MANIFEST, read_json

    path = Path(folder) / MANIFEST
    if not path.is_file():
        return set()
    manifest = read_json(path)
    if manifest.get("complete"):
        return set(range(shards))
    if manifest.get("num_shards") != shards:
        return set()  # another split: every task runs, and the stage says what is wrong
    return set(manifest.get("shards_done", []))


def submit_chain(jobs: list[StepJob], record: SubmissionRecord) -> None:
    """sbatch each step with work after the jobs (new or still queued) of the nearest step before
    it that has any: those waited on theirs in turn, so a failure anywhere cancels the rest.
    Each submission is recorded as soon as sbatch answers."""
    before: list[str] = []
    for job in jobs:
        if job.replaced:
            scancel(job.replaced)
        if job.todo:
            job.after = before
            options = [f"--array={format_indices(job.todo)}"] if job.step.sharded else []
            if job.after:
                options += [f"--dependency=afterok:{':'.join(job.after)}", "--kill-on-invalid-dep=yes"]
            job.job_id = sbatch(job.script, options)
            record.add({"stage": job.stage.name, "step": job.words, "job_id": job.job_id,
                        "array": job.step.sharded, "indices": job.todo, "script": str(job.script),
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        before = job.ids() or before


def chain_lines(jobs: list[StepJob], dry_run: bool) -> list[str]:
    """One line per step: skipped as complete, or what was (would be) submitted after what."""
    lines = []
    previous = ""  # the nearest step before with jobs
    for job in jobs:
        head = f"{job.stage.name}: {job.words}:"
        if job.complete:
            lines.append(f"{head} complete ({job.folder}); skipped")
            continue
        parts = []
        if job.todo:
            what = f"array {format_indices(job.todo)} of {job.shards} shards" if job.step.sharded else "one job"
            if dry_run:
                parts.append(f"would submit {what}" + (f" after {previous}" if previous else ""))
            else:
                parts.append(f"job {job.job_id}, {what}" + (f" after {', '.join(job.after)}" if job.after else ""))
        if job.waiting_on:
            parts.append(f"still queued: {', '.join(job.waiting_on)}")
        if job.replaced:
            parts.append(f"{'would cancel' if dry_run else 'cancelled'} {', '.join(job.replaced)} "
                         f"(pending after a step submitted again)")
        lines.append(f"{head} {'; '.join(parts)}")
        previous = job.words
    return lines


def job_script(recipe: Recipe, job: StepJob, cluster: Cluster, submit_dir: Path) -> str:
    settings = cluster.for_step(job.step.command)
    config = recipe.workdir / "configs" / f"{job.stage.name}.yaml"
    accelerate = settings.accelerate_config if job.step.command in ACCELERATED else None
    logs = submit_dir / recipe.workdir / "logs"
    lines = ["#!/bin/bash",
             f"# {job.stage.name}: mathsynth {job.words} of recipe {recipe.path}, written by mathsynth submit "
             f"(cluster {cluster.path}).",
             f"#SBATCH --job-name=mathsynth-{job.name}",
             f"#SBATCH --output={logs}/{job.name}-" + ("%A_%a.log" if job.step.sharded else "%j.log"),
             "#SBATCH --open-mode=append",  # a requeued task keeps its first attempt's log
             "#SBATCH --requeue",  # a preempted task goes back in the queue and resumes
             *_sbatch_lines(settings, nodes=settings.nodes if accelerate else 1),
             "set -euo pipefail",
             f"cd {shlex.quote(str(submit_dir))}",  # relative paths in the config mean what they meant there
             *settings.setup,
             'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"']
    command = " ".join(map(shlex.quote, ["mathsynth", *job.step.command, "--config", str(config)]))
    if job.step.sharded:
        # The shard is said explicitly: --array=1,5 of N runs shards 1 and 5 of N.
        command += f" --shard ${{SLURM_ARRAY_TASK_ID}}/{job.shards}"
        lines += ['if [[ -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then',
                  f'    echo "{job.script.name}: an array job: sbatch --array=0-{job.shards - 1} {job.script}" >&2',
                  "    exit 2", "fi"]
    tool = "accelerate" if accelerate else "mathsynth"
    lines += [f"if ! command -v {tool} >/dev/null; then",
              f"    echo \"{job.script.name}: '{tool}' not on PATH; add a setup line to {cluster.path}\" >&2",
              "    exit 2", "fi"]
    if accelerate:
        command = " ".join(map(shlex.quote, ["bash", str(TRAIN_SCRIPT), job.step.command[0], str(config),
                                             str(Path(accelerate).resolve())]))
    lines += ['echo "$(date -Is) $(hostname) job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}} task '
              '${SLURM_ARRAY_TASK_ID:-none} (restart ${SLURM_RESTART_COUNT:-0})"',
              "set -x  # the command, as run, in the log",
              f"exec {command}"]
    return "\n".join(lines) + "\n"


def _sbatch_lines(settings: TrainSettings, nodes: int) -> list[str]:
    lines = [f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1"]
    for key in ("partition", "account", "gres", "time", "cpus_per_task", "mem"):
        value = getattr(settings, key)
        if value is not None:
            lines.append(f"#SBATCH --{key.replace('_', '-')}={value}")
    return lines + [f"#SBATCH {option}" for option in settings.options]


def job_status_lines(recipe: Recipe) -> dict[str, list[str]]:
    """Stage name -> one line per step it submitted: the job ids and, where Slurm answers, their states."""
    submitted = SubmissionRecord(recipe.workdir).read()
    if not submitted:
        return {}
    states = job_states(sorted({entry["job_id"] for entry in submitted}))
    source, found = states if states else (None, {})
    lines: dict[str, list[str]] = {}
    by_step: dict[tuple[str, str], list[dict]] = {}
    for entry in submitted:
        by_step.setdefault((entry["stage"], entry["step"]), []).append(entry)
    for (stage, step), entries in by_step.items():
        jobs = "; ".join(summary(e["job_id"], e["indices"], e["array"], found.get(e["job_id"]), source) for e in entries)
        lines.setdefault(stage, []).append(f"   slurm {step}: {jobs}")
    return lines


def _queue_or_fail() -> TaskStates:
    found = queued()
    if found is None:
        raise SubmitError("squeue did not answer: cannot tell which steps are already queued "
                          "(is this a Slurm login node?)")
    return found


def _write(path: Path, text: str) -> None:
    """Replace ``path`` whole (a job already running may be reading it), and only if it changed."""
    from data.storage import atomic_write_text

    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
