"""``mathsynth influence``: gradient-influence selection of corpus texts worth distilling."""
from __future__ import annotations

import argparse
import json

from runner.cli import add_run_args, load_run_config, outcome_line, shard_of


def configure(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True)
    add_run_args(verbs.add_parser("warmup", help="LoRA warm-up on a random share of the pool; per-epoch checkpoints"))
    featurize = verbs.add_parser("featurize", help="target and candidate gradient features (sharded, resumable)")
    add_run_args(featurize)
    featurize.add_argument("--side", choices=("both", "targets", "candidates"), default="both",
                           help="targets are computed once, by whichever shard gets there first")
    add_run_args(verbs.add_parser("select", help="score, merge the shards, dedup, select; --shard only scores"))


def run(args: argparse.Namespace) -> int:
    from influence.config import InfluenceConfig

    config = load_run_config(InfluenceConfig, args)
    if args.verb == "warmup":
        from influence.warmup import WarmupStage, run_warmup

        stage = WarmupStage(config)
        print(outcome_line(stage.output, stage.summary(manifest := run_warmup(config)), manifest))
        return 0
    shard = shard_of(args)
    if args.verb == "featurize":
        from influence.featurize import run_featurize

        print(json.dumps(run_featurize(config, shard, args.side), indent=2))
        return 0
    from influence.select import SelectStage, run_select, score_shard

    if shard.count > 1:
        print(json.dumps(score_shard(config, shard), indent=2))
        return 0
    stage = SelectStage(config)
    print(outcome_line(stage.output, stage.summary(manifest := run_select(config)), manifest))
    return 0
