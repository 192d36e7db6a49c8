"""``mathsynth rft``: rejection-sampling fine-tuning data and preference pairs (eval.rft)."""
from __future__ import annotations

import argparse
import sys

from runner.cli import add_run_args, load_run_config, main_for, report, shard_of


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_args(parser)


def run(args: argparse.Namespace) -> int:
    from eval.rft import RftConfig, RftStage
    from runner.run import run_stage

    stage = RftStage(load_run_config(RftConfig, args))
    report(stage, run_stage(stage, shard_of(args)))
    return 0


if __name__ == "__main__":  # python -m eval.rft_cli --config FILE
    sys.exit(main_for("rft", sys.modules[__name__]))
