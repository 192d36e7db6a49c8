"""``mathsynth pretrain``: continued pre-training + SFT of the final model on the synthetic data.

    mathsynth pretrain --config FILE            tokenize (if not done), then train
    mathsynth pretrain tokenize --config FILE   one shard of the tokenize pass (--shard I/N, Slurm array)
    mathsynth pretrain train --config FILE      train from the finished tokenize pass
    accelerate launch ... -m pretrain train --config FILE
"""
from __future__ import annotations

import argparse
import logging
import os

from data.errors import InputError
from runner.cli import add_run_args, load_run_config, report, shard_of

STEPS = ("all", "tokenize", "train")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("step", nargs="?", choices=STEPS, default="all",
                        help="tokenize: the sharded token pass; train: the training run; all (default): both, "
                             "tokenizing as one shard")
    add_run_args(parser)


def run(args: argparse.Namespace) -> int:
    from data.shards import Shard
    from pretrain.config import PretrainConfig
    from pretrain.tokenize import TokenizeStage
    from runner.run import run_stage

    config = load_run_config(PretrainConfig, args)
    if args.step in ("tokenize", "all"):
        shard = shard_of(args) if args.step == "tokenize" else Shard(0, 1)
        if args.step == "all" and args.shard:
            raise InputError("--shard: the tokenize step alone runs as shards (mathsynth pretrain tokenize --shard I/N)")
        stage = TokenizeStage(config)
        if args.step == "tokenize" or not _world_is_many():
            report(stage, run_stage(stage, shard))
        if args.step == "tokenize":
            return 0
    from pretrain.train import PretrainStage, run_pretrain

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # a line per saved file otherwise
    manifest = run_pretrain(config)
    if manifest:  # empty on the processes other than 0: one summary line, not one per process
        report(PretrainStage(config), manifest)
    return 0


def _world_is_many() -> bool:
    """Under ``accelerate launch`` the tokenize pass must be done first: N processes on one shard
    would be refused by its lock, and the trainers would wait on it."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
