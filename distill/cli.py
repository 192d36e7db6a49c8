"""``mathsynth distill``: education-stage teacher prompting -> the distillation set."""
from __future__ import annotations

import argparse
import json

from runner.cli import add_run_args, load_run_config, report, shard_of


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_args(parser)
    parser.add_argument("--dry-run", action="store_true", help="print calls, estimated tokens and cost; call nothing")


def run(args: argparse.Namespace) -> int:
    from distill.run import DistillConfig, DistillStage, dry_run
    from runner.run import run_stage

    config = load_run_config(DistillConfig, args)
    shard = shard_of(args)
    if args.dry_run:
        print(json.dumps(dry_run(config, shard), indent=2))
        return 0
    stage = DistillStage(config)
    report(stage, run_stage(stage, shard))
    return 0
