"""``mathsynth pretrain``: continued pre-training on the synthetic data (not built yet)."""
from __future__ import annotations

import argparse
import sys

from runner.cli import EXIT_USER_ERROR, add_run_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_args(parser, config_required=False)


def run(args: argparse.Namespace) -> int:
    print("mathsynth pretrain: not built yet (continued pre-training is a later milestone)", file=sys.stderr)
    return EXIT_USER_ERROR
