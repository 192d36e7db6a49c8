"""What every stage's command line shares: the run flags, loading the config, the one-line
outcome, and the one error path (a user-fixable problem is one line on stderr, exit 2).

Each stage has a small ``cli`` module (``configure(parser)`` and ``run(args)``); its
``__main__`` runs it alone through :func:`main_for` (``python -m distill ...``), and
``mathsynth`` mounts the same modules as subcommands. No stage imports ``pipeline``.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from types import ModuleType
from typing import Any, Callable

from data.errors import UserError

EXIT_USER_ERROR = 2
# A full disk or quota, and a folder given where a file is written, are the machine's or the
# user's to fix, not a bug: every stage keeps what it finished, so a rerun goes on from there.
USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EISDIR)


def add_run_args(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument("--config", required=config_required, help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set sampling.temperature=0.6 (repeatable)",
    )
    parser.add_argument("--shard", help="I/N: run shard I of N (default: the Slurm array task, else 0/1)")


def load_run_config(model, args: argparse.Namespace):
    from runner.config import load_config

    return load_config(model, args.config, args.overrides)


def shard_of(args: argparse.Namespace):
    from data.shards import resolve_shard

    return resolve_shard(getattr(args, "shard", None))


def outcome_line(output: Any, summary: str, manifest: dict[str, Any]) -> str:
    """``out/: 40 records from 20 documents (complete)``, then one ``warning:`` line each."""
    if manifest.get("complete"):
        state = "complete"
    else:
        state = f"{len(manifest.get('shards_done', []))}/{manifest.get('num_shards')} shards done"
    lines = [f"{output}: {summary} ({state})"]
    lines += [f"warning: {warning}" for warning in manifest.get("warnings", [])]
    return "\n".join(lines)


def report(stage, manifest: dict[str, Any]) -> None:
    print(outcome_line(stage.output, stage.summary(manifest), manifest))


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(chatty).setLevel(logging.WARNING)  # one line per HTTP call buries the run's own log


def run_reporting_user_errors(command: str, handler: Callable[[argparse.Namespace], int],
                              args: argparse.Namespace) -> int:
    """Run ``handler``; a problem the user can fix becomes one line and exit 2, a bug keeps its
    traceback."""
    try:
        return handler(args)
    except Exception as err:
        message = user_message(err)
        if message is None:
            raise
        print(f"mathsynth {command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def user_message(err: Exception) -> str | None:
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, OSError) and err.errno in USER_OS_ERRORS:
        advice = "give a file path" if err.errno == errno.EISDIR else "free space and rerun: finished work is kept"
        return f"{err.filename or 'an output file'}: {err.strerror.lower()}; {advice}"
    return None


def main_for(command: str, stage_cli: ModuleType, argv: list[str] | None = None) -> int:
    """``python -m <stage> ...``: the stage's own command, without the rest of ``mathsynth``."""
    parser = argparse.ArgumentParser(prog=f"mathsynth {command}", description=stage_cli.__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("MATHSYNTH_LOG_LEVEL", "INFO"))
    stage_cli.configure(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return run_reporting_user_errors(command, stage_cli.run, args)
