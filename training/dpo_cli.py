"""``mathsynth dpo``: preference training on (prompt, chosen, rejected) pairs through TRL's DPOTrainer.

    python -m training.dpo_cli --config FILE.yaml [--set key=value ...]
    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml -m training.dpo_cli --config FILE.yaml
"""
from __future__ import annotations

import argparse
import sys

from runner.cli import load_run_config, main_for, report


def configure(parser: argparse.ArgumentParser) -> None:
    # One job (its processes come from accelerate launch): no --shard.
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set beta=0.2 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from training.dpo import DpoConfig, run_dpo

    stage, manifest = run_dpo(load_run_config(DpoConfig, args))
    if manifest:  # process 0 of a launch; the others own no output
        report(stage, manifest)
    return 0


if __name__ == "__main__":  # python -m training.dpo_cli --config FILE
    sys.exit(main_for("dpo", sys.modules[__name__]))
