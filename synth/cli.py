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
    audit = verbs.add_parser("audit", help="N random rejects per reason of a synth filter output, as one readable "
                                           "file to check by hand")
    audit.add_argument("--input", required=True, help="a finished synth filter output folder")
    audit.add_argument("--per-reason", type=int, default=10, help="records per reject reason (default 10)")
    audit.add_argument("--reasons", help="comma-separated reasons to sample (default: every reject reason; "
                                         "'kept' samples the dataset)")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--output", help="the Markdown file to write (default: <input>/audit.md)")


def audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from data.errors import InputError
    from data.storage import read_manifest
    from synth.filter_report import write_audit

    folder = Path(args.input)
    if args.per_reason < 1:
        raise InputError(f"--per-reason: {args.per_reason}: expected a positive number")
    manifest = read_manifest(folder)
    if manifest.get("stage") != "synth_filter" or not manifest.get("complete"):
        raise InputError(f"--input: {folder} is not a finished synth filter output")
    destination = Path(args.output) if args.output else folder / "audit.md"
    reasons = [r.strip() for r in args.reasons.split(",") if r.strip()] if args.reasons else None
    written = write_audit(folder, destination, args.per_reason, args.seed, reasons)
    print(f"{destination}: {sum(written.values())} records ({', '.join(f'{k} {v}' for k, v in written.items())})")
    return 0


def run(args: argparse.Namespace) -> int:
    from runner.run import run_stage

    if args.verb == "audit":
        return audit(args)

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
