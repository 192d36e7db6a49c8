"""The ``mathsynth`` command: every stage's own command as a subcommand, plus ``generate``,
``run`` (a whole recipe), ``submit`` (a recipe as Slurm jobs), ``status``, ``explore`` (a web page), ``tiny-model``, ``models`` and ``demo``.

Every failure the user can fix (config, input data, output folder, engine) ends the run with
one line on stderr and exit 2, before anything is half-written (see :mod:`runner.cli`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data.errors import ConfigError
from distill import cli as distill_cli
from eval import cli as eval_cli
from eval import judge_cli, rft_cli
from influence import cli as influence_cli
from pipeline import demo, models_cli, recipe_run, recipe_submit
from pipeline.explorer import cli as explore_cli
from pretrain import cli as pretrain_cli
from runner.cli import (
    add_run_args,
    configure_logging,
    load_run_config,
    report,
    run_reporting_user_errors,
    shard_of,
)
from synth import cli as synth_cli
from training import dpo_cli

STAGE_COMMANDS = {
    "eval": (eval_cli, "benchmarks: run a model, score predictions, grade answers"),
    "judge": (judge_cli, "an LLM judge scores the records of any stage folder (rubric as data, JSON verdicts)"),
    "rft": (rft_cli, "rejection-sampling data: k graded samples per problem -> correct, diverse SFT rows + pairs"),
    "dpo": (dpo_cli, "preference training on (prompt, chosen, rejected) pairs through TRL's DPOTrainer"),
    "distill": (distill_cli, "education-stage teacher prompting -> the distillation set"),
    "influence": (influence_cli, "gradient-influence selection of corpus texts worth distilling"),
    "synth": (synth_cli, "train the small synthesizer; mass-produce problems with it"),
    "pretrain": (pretrain_cli, "continued pre-training + SFT of the final model (tokenize, train)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mathsynth", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("MATHSYNTH_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="template -> engine -> outputs over a corpus (sharded, resumable)")
    add_run_args(generate)

    recipe_run.configure(commands.add_parser("run", help="a recipe's stages in order on this machine "
                                                         "(complete ones skipped, a partial one resumed)"))
    recipe_submit.configure(commands.add_parser("submit", help="a recipe as a chain of Slurm jobs (arrays + afterok; "
                                                               "complete steps skipped, missing shards resubmitted)"))

    status = commands.add_parser("status", help="where stage outputs stand: pending, partial i of N, complete")
    status.add_argument("folders", nargs="*", metavar="FOLDER")
    status.add_argument("--recipe", help="every stage folder of a recipe, with records, rejects, tokens and cost")
    recipe_run.add_shared_overrides(status)

    tiny = commands.add_parser("tiny-model", help="build the tiny local model used by tests and the demo")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--seed", type=int, default=0)

    models_cli.configure(commands.add_parser("models", help="import a model: import-gguf FILE --out DIR"))

    demo.configure(commands.add_parser("demo", help="the whole recipe on the embedded default (tiny model, sample "
                                                    "corpus, stand-in teacher, CPU): configs/recipes/demo.yaml"))

    explore_cli.configure(commands.add_parser("explore", help="a local web page over stage folders or a recipe: "
                                                              "browse, lineage, compare eval runs, error patterns"))

    for name, (module, help_text) in STAGE_COMMANDS.items():
        module.configure(commands.add_parser(name, help=help_text))
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generate import GenerateConfig, GenerateStage
    from runner.run import run_stage

    stage = GenerateStage(load_run_config(GenerateConfig, args), config_dir=Path(args.config).parent)
    report(stage, run_stage(stage, shard_of(args)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """One line per folder; exit 0 when every folder is complete, 1 otherwise (for scripts)."""
    from runner.status import read_state

    if args.recipe:
        from pipeline.recipe import load_recipe
        from pipeline.recipe_run import recipe_complete, shared_overrides, status_lines

        recipe = load_recipe(args.recipe, shared_overrides(args.shared))
        print("\n".join(status_lines(recipe)))
        return 0 if recipe_complete(recipe) else 1
    if not args.folders:
        raise ConfigError("status: give stage folders or --recipe FILE")
    states = [read_state(folder) for folder in args.folders]
    for state in states:
        print(state.line())
    return 0 if all(state.complete for state in states) else 1


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from llm.tiny import build_tiny_model

    print(build_tiny_model(args.out, seed=args.seed))
    return 0


HANDLERS = {"generate": cmd_generate, "status": cmd_status, "tiny-model": cmd_tiny_model, "demo": demo.run,
            "models": models_cli.run, "run": recipe_run.run, "submit": recipe_submit.submit,
            "explore": explore_cli.run,
            **{name: module.run for name, (module, _) in STAGE_COMMANDS.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return run_reporting_user_errors(args.command, HANDLERS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
