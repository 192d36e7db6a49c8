"""``mathsynth judge``: an LLM judge scores the records of any stage folder (eval.judge)."""
from __future__ import annotations

import argparse
import sys

from runner.cli import add_run_args, load_run_config, main_for, report, shard_of


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_args(parser)


def run(args: argparse.Namespace) -> int:
    from eval.judge import JudgeConfig, JudgeStage
    from runner.run import run_stage

    stage = JudgeStage(load_run_config(JudgeConfig, args))
    report(stage, run_stage(stage, shard_of(args)))
    return 0


if __name__ == "__main__":  # python -m eval.judge_cli --config FILE
    sys.exit(main_for("judge", sys.modules[__name__]))
