"""``mathsynth run --recipe`` against the same stage commands run by hand: orchestration overhead.

In one process, for ``--rounds`` rounds (which of the two goes first alternates), the demo
recipe (``configs/recipes/demo.yaml``, smaller by ``--set``-style shared values) runs into a
fresh folder twice:

* by hand: the resolved config of each stage written to a file, then each step's command
  (``python -m pipeline synth train --config FILE``) run in turn, as a user would type them;
* ours: ``python -m pipeline run --recipe configs/recipes/demo.yaml --set shared.root=...``
  (recipe validation, plan, child process per step, logs, timings).

Same tiny base model and one stand-in teacher for both (its answers to the distill prompts are
the same problems either way). The figure is wall seconds of the whole chain; overhead is
ours / by-hand - 1.

    python bench/recipe_overhead.py [--rounds 2] [--synth-epochs 4] [--texts 16] [--eval-limit 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from data.samples import SAMPLE_CORPUS  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.standin_teacher import StandinTeacher  # noqa: E402

DEMO = REPO_ROOT / "configs" / "recipes" / "demo.yaml"


def shared_values(root: Path, base: Path, url: str, args: argparse.Namespace) -> dict:
    return {"root": str(root), "base": str(base), "corpus": str(SAMPLE_CORPUS), "teacher_url": url,
            "synth_epochs": args.synth_epochs, "texts": args.texts, "eval_limit": args.eval_limit}


def by_hand(shared: dict, env: dict) -> float:
    recipe = load_recipe(DEMO, shared)  # only to write the same configs a user would have
    configs = Path(shared["root"]) / "hand-configs"
    configs.mkdir(parents=True)
    commands = []
    for stage in recipe.stages:
        config_file = configs / f"{stage.name}.yaml"
        config_file.write_text(yaml.safe_dump(stage.raw, sort_keys=False))
        for step in stage.kind.steps:
            commands.append([sys.executable, "-m", "pipeline", *step.command, "--config", str(config_file)])
    started = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def ours(shared: dict, env: dict) -> float:
    sets = [arg for name, value in shared.items() for arg in ("--set", f"shared.{name}={value}")]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "run", "--recipe", str(DEMO), *sets], check=True, env=env,
                   cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--synth-epochs", type=int, default=4)
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--eval-limit", type=int, default=4)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "VLLM_CPU_KVCACHE_SPACE": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO_ROOT)}
    from llm.tiny import build_tiny_model

    times: dict[str, list[float]] = {"by hand": [], "mathsynth run": []}
    with tempfile.TemporaryDirectory(prefix="recipe-overhead-") as tmp, StandinTeacher() as teacher:
        base = build_tiny_model(Path(tmp) / "tiny-model")
        for round_number in range(args.rounds):
            order = [("by hand", by_hand), ("mathsynth run", ours)]
            for label, run in order if round_number % 2 == 0 else order[::-1]:
                root = Path(tmp) / f"{label.replace(' ', '-')}-{round_number}"
                seconds = run(shared_values(root, base, teacher.url, args), env)
                times[label].append(seconds)
                print(f"round {round_number}: {label}: {seconds:.1f} s", flush=True)
    hand, run = statistics.median(times["by hand"]), statistics.median(times["mathsynth run"])
    print(f"median of {args.rounds}: by hand {hand:.1f} s, mathsynth run {run:.1f} s; "
          f"overhead {100 * (run / hand - 1):+.1f}% (ratio {run / hand:.3f})")


if __name__ == "__main__":
    main()
