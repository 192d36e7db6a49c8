"""``mathsynth demo``: the whole recipe on the embedded default, ``configs/recipes/demo.yaml``.

It is ``mathsynth run --recipe configs/recipes/demo.yaml`` plus the two things the recipe needs
and cannot name in advance: the tiny base model (built once into ``<workdir>/tiny-model``
unless ``--set shared.base=FOLDER`` names a real one) and the teacher endpoint (a local
STAND-IN teacher started for the run, on a free port, unless ``--set shared.teacher_url=URL``
names a real one). The shipped sample corpus is found wherever the package is installed. Every
stage runs as its own child process with its log (vLLM's included) in ``<workdir>/recipe/logs``;
the terminal gets one line per step and a summary table at the end. A second run finds every
stage complete and only prints the summary.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from data.storage import read_json
from pipeline.recipe import Recipe, load_recipe, stage_state
from pipeline.recipe_run import TIMINGS, run_recipe, shared_overrides

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO_ROOT / "configs" / "recipes" / "demo.yaml"
STANDIN_BANNER = ("distill's teacher is a STAND-IN, not a model: a local OpenAI-compatible server answering "
                  "each prompt with a human-written GSM8K/MATH training problem close to the source text "
                  "(pass --set shared.teacher_url=URL for a real teacher)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="every folder of the demo goes under it")
    parser.add_argument("--set", dest="shared", action="append", default=[], metavar="shared.NAME=VALUE",
                        help="a shared value of the demo recipe, e.g. --set shared.base=runs/smollm2 (repeatable)")


def run(args: argparse.Namespace) -> int:
    # vLLM on CPU reserves this many GiB for its KV cache; the tiny model needs little.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    workdir = Path(args.workdir)
    user = shared_overrides(args.shared)
    shared = {"root": str(workdir), "base": str(workdir / "tiny-model"), "corpus": str(_sample_corpus()), **user}
    if "base" not in user:
        _ensure_tiny_model(Path(shared["base"]))
    recipe = load_recipe(DEMO_RECIPE, shared)
    distill_done = stage_state(recipe.stage("distill").final_output) == "complete"
    with _teacher("teacher_url" in user or distill_done) as url:
        if url is not None:  # the endpoint is only known now; it is operational (not in the config hash)
            recipe = load_recipe(DEMO_RECIPE, {**shared, "teacher_url": url})
        run_recipe(recipe, recipe.stages)
    print()
    print("\n".join(summary_lines(recipe)))
    eval_report = Path(recipe.stage("eval").final_output) / "report.md"
    if eval_report.is_file():
        print()
        print(eval_report.read_text(encoding="utf-8"), end="")
    print(f"\nlook at every record, its lineage and the errors: mathsynth explore {workdir}")
    return 0


@contextlib.contextmanager
def _teacher(not_needed: bool):
    """The stand-in teacher's URL for the run, or None when no teacher is needed or it is given."""
    if not_needed:
        yield None
        return
    from pipeline.standin_teacher import StandinTeacher

    print(STANDIN_BANNER, flush=True)
    with StandinTeacher() as teacher:
        yield teacher.url


def _sample_corpus() -> Path:
    from data.samples import SAMPLE_CORPUS

    return Path(SAMPLE_CORPUS)


def _ensure_tiny_model(folder: Path) -> None:
    if (folder / "config.json").is_file():
        return
    from transformers.utils import logging as hf_logging

    from llm.tiny import build_tiny_model

    print(f"building the tiny model in {folder}", flush=True)
    hf_logging.disable_progress_bar()  # the terminal shows stage progress only
    build_tiny_model(folder)


def summary_lines(recipe: Recipe) -> list[str]:
    """One row per stage: state, records, rejects by reason, wall time of the run that did it,
    and its folder."""
    timings_path = recipe.workdir / TIMINGS
    timings = read_json(timings_path) if timings_path.is_file() else {}
    rows = [("stage", "state", "records", "rejected (by reason)", "time", "folder")]
    for stage in recipe.stages:
        folder = stage.final_output
        state = stage_state(folder)
        manifest = read_json(Path(folder) / "manifest.json") if state != "not started" else {}
        counts = manifest.get("counts", {})
        seconds = timings.get(stage.name)
        rows.append((stage.name, state, _records(stage.name, counts), _rejects(counts),
                     "-" if seconds is None else f"{seconds:.0f} s", folder))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def _records(stage: str, counts: dict) -> str:
    """What the stage made, in its own unit (a training stage makes a model, not records)."""
    if stage in ("synth_train", "pretrain"):
        steps, loss = counts.get("steps"), counts.get("final_loss")
        return f"model: {steps} steps, loss {loss:.2f}" if steps is not None and loss is not None else "model"
    if stage == "eval" and "problems" in counts:
        return f"{counts['problems']} graded"
    return str(counts.get("records", counts.get("kept", "-")))


def _rejects(counts: dict) -> str:
    reasons: dict[str, int] = {}
    for key, value in counts.items():
        if isinstance(value, dict) and ("reject" in key or key == "parse_errors"):
            for reason, n in value.items():
                reasons[reason] = max(reasons.get(reason, 0), n)
    if not reasons:
        return "0"
    ordered = sorted(reasons.items(), key=lambda kv: -kv[1])
    return f"{sum(reasons.values())}: " + ", ".join(f"{reason} {n}" for reason, n in ordered)
