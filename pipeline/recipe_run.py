"""``mathsynth run --recipe FILE``: the recipe's stages in order on this machine.

Each stage runs through its own commands (``mathsynth synth train --config ...``), as a user or
a Slurm job would run them: the resolved config is written to ``<workdir>/configs/<stage>.yaml``
and every step is a child process, the sharded ones as ``shards`` processes at once
(``--shard i/N``). Child logs go to ``<workdir>/logs/``; the terminal gets one line per step.
A stage whose last folder is complete is skipped; a partial one is resumed by its own commands
(the stage contract), so a killed ``mathsynth run`` rerun goes on where it stopped.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from data.errors import ConfigError, UserError
from pipeline.recipe import (
    ORDER,
    Recipe,
    ResolvedStage,
    Step,
    load_recipe,
    plan_lines,
    stage_state,
)


class StepFailed(UserError):
    """A stage command exited non-zero; its log says why."""


def configure(parser: argparse.ArgumentParser) -> None:
    add_recipe_args(parser, dry_run_help="print the plan with each stage's state; run nothing")


def add_recipe_args(parser: argparse.ArgumentParser, dry_run_help: str) -> None:
    """The arguments of every command that takes a recipe (run, submit)."""
    parser.add_argument("--recipe", required=True, help="recipe YAML (configs/recipes/)")
    parser.add_argument("--from", dest="first", choices=ORDER, help="start at this stage")
    parser.add_argument("--to", dest="last", choices=ORDER, help="stop after this stage")
    parser.add_argument("--dry-run", action="store_true", help=dry_run_help)
    add_shared_overrides(parser)


def add_shared_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="shared", action="append", default=[], metavar="shared.NAME=VALUE",
                        help="a shared value of the recipe, e.g. --set shared.corpus=/data/corpus (repeatable)")


def shared_overrides(assignments: list[str]) -> dict:
    """``shared.NAME=VALUE`` (the value read as YAML) -> {NAME: VALUE}."""
    found = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.startswith("shared.") or len(key) == len("shared."):
            raise ConfigError(f"--set {assignment!r}: expected shared.NAME=VALUE")
        found[key[len("shared."):]] = yaml.safe_load(raw) if raw.strip() else ""
    return found


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, shared_overrides(args.shared))
    stages = selected_stages(recipe, args.first, args.last)
    if args.dry_run:
        print("\n".join(plan_lines(recipe, stages)))
        return 0
    run_recipe(recipe, stages)
    return 0


def selected_stages(recipe: Recipe, first: str | None, last: str | None) -> list[ResolvedStage]:
    names = [stage.name for stage in recipe.stages]
    for flag, name in (("--from", first), ("--to", last)):
        if name is not None and name not in names:
            raise ConfigError(f"{flag} {name}: not a stage of {recipe.path} (it has {', '.join(names)})")
    start = names.index(first) if first else 0
    stop = names.index(last) + 1 if last else len(names)
    if start >= stop:
        raise ConfigError(f"--from {first} comes after --to {last}")
    return recipe.stages[start:stop]


def run_recipe(recipe: Recipe, stages: list[ResolvedStage]) -> dict[str, float | None]:
    """Run ``stages``; returns each stage's wall seconds (None: already complete, skipped). The
    seconds of every run are also kept in ``<workdir>/timings.json`` (the demo's summary reads them)."""
    configs, logs = recipe.workdir / "configs", recipe.workdir / "logs"
    configs.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float | None] = {}
    for stage in stages:
        if stage_state(stage.final_output) == "complete":
            print(f"{stage.name}: complete ({stage.final_output}); skipped", flush=True)
            seconds[stage.name] = None
            continue
        config_file = configs / f"{stage.name}.yaml"
        config_file.write_text(yaml.safe_dump(stage.raw, sort_keys=False))
        started = time.monotonic()
        for step in stage.kind.steps:
            run_step(stage, step, config_file, logs)
        seconds[stage.name] = time.monotonic() - started
        record_seconds(recipe, stage.name, seconds[stage.name])
        print(f"{stage.name}: {stage_state(stage.final_output)} in {seconds[stage.name]:.0f} s "
              f"({stage.final_output})", flush=True)
    return seconds


TIMINGS = "timings.json"


def record_seconds(recipe: Recipe, stage: str, seconds: float) -> None:
    """The stage's wall time in this run (rounded), added to ``<workdir>/timings.json``."""
    from data.storage import atomic_write_json, read_json

    path = recipe.workdir / TIMINGS
    timings = read_json(path) if path.is_file() else {}
    timings[stage] = round(seconds, 1)
    atomic_write_json(path, timings)


def run_step(stage: ResolvedStage, step: Step, config_file: Path, logs: Path) -> None:
    shards = stage.shards if step.sharded else 1
    label = " ".join(step.command)
    print(f"{stage.name}: {label}" + (f" ({shards} shards)" if shards > 1 else "") + " ...", flush=True)
    processes = []
    for index in range(shards):
        command = [sys.executable, "-m", "pipeline", *step.command, "--config", str(config_file)]
        if step.sharded:
            command += ["--shard", f"{index}/{shards}"]
        log_path = logs / f"{stage.name}-{'-'.join(step.command)}-{index}.log"
        log = open(log_path, "a", encoding="utf-8")
        processes.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent),
                          log, log_path))
    failed = []
    for process, log, log_path in processes:
        code = process.wait()
        log.close()
        if code != 0:
            failed.append((code, log_path))
    if failed:
        code, log_path = failed[0]
        last = _last_line(log_path)
        raise StepFailed(f"stage {stage.name}: `mathsynth {label}` exited {code}: {last} (log: {log_path})")


def recipe_complete(recipe: Recipe) -> bool:
    return all(stage_state(stage.final_output) == "complete" for stage in recipe.stages)


def status_lines(recipe: Recipe) -> list[str]:
    """``mathsynth status --recipe``: per stage and folder, its state (shards sealed, running,
    missing), records, rejects by reason, and tokens and cost so far; and the Slurm jobs
    ``mathsynth submit`` submitted for it, with their states where Slurm says."""
    from pipeline.recipe_submit import job_status_lines
    from runner.status import read_state

    jobs = job_status_lines(recipe)
    lines = [f"recipe {recipe.path}"]
    for number, stage in enumerate(recipe.stages, start=1):
        lines.append(f"{number}. {stage.name}")
        for key, folder in stage.outputs.items():
            if stage_state(stage.state_folder(key)) == "not started":
                lines.append(f"   {key}: {folder}: not started")
                continue
            state = read_state(stage.state_folder(key))
            lines.append(f"   {key}: {state.line(_facts(state.manifest))}")
        lines += jobs.get(stage.name, [])
    return lines


def _facts(manifest: dict) -> str:
    """Records, rejects by reason, tokens and cost, from a manifest's counts and usage."""
    counts, usage = manifest.get("counts", {}), manifest.get("usage", {})
    parts = [f"{counts['records']} records"] if "records" in counts else []
    for key, value in counts.items():
        if isinstance(value, dict) and value and "reject" in key:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(value.items(), key=lambda kv: -kv[1]))
            parts.append(f"{key}: {reasons}")
    tokens = sum(v for k, v in usage.items() if k.endswith("tokens") and isinstance(v, (int, float)))
    if tokens:
        parts.append(f"{int(tokens)} tokens")
    cost = manifest.get("cost_usd") or usage.get("cost_usd")
    if cost:
        parts.append(f"${cost:.4f}")
    return "; ".join(parts)


def _die_with_parent() -> None:
    """A killed ``mathsynth run`` takes its stage processes with it (Linux): an orphan would go on
    holding its shard's lock, and the rerun would find the shard busy."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
