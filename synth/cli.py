"""``mathsynth synth``: train the small synthesizer; mass-produce problems with it; filter them."""
from __future__ import annotations

import argparse
import logging

from runner.cli import add_run_args, load_run_config, report, shard_of


def configure(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True)
    add_run_args(verbs.add_parser("train", help="SFT on the distill export (packing, LoRA or full; accelerate launch)"))
    add_run_args(verbs.add_parser("generate", help="the trained synthesizer writes problems from corpus texts "
                                                   "(stage prompts; sharded, resumable)"))
    add_run_args(verbs.add_parser("filter", help="format, length, decontamination, sandbox and consistency filters, "
                                                 "then dedup across shards: the pre-training set"))


def run(args: argparse.Namespace) -> int:
    from runner.run import run_stage

    if args.verb == "generate":
        from synth.generate import SynthGenerateConfig, SynthGenerateStage

        stage = SynthGenerateStage(load_run_config(SynthGenerateConfig, args))
        report(stage, run_stage(stage, shard_of(args)))
        return 0
    if args.verb == "filter":
        from synth.filter_run import SynthFilterConfig, SynthFilterStage

        stage = SynthFilterStage(load_run_config(SynthFilterConfig, args))
        report(stage, run_stage(stage, shard_of(args)))
        return 0
    from synth.config import SynthTrainConfig
    from synth.train import SynthTrainStage, run_train

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # a line per saved file otherwise
    stage = SynthTrainStage(load_run_config(SynthTrainConfig, args))
    manifest = run_train(stage.config)
    if manifest:  # empty on the processes other than 0: one summary line, not one per process
        report(stage, manifest)
    return 0
