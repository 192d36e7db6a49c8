"""The ``mathsynth`` command: one subcommand per stage, plus ``generate``, ``tiny-model`` and ``demo``.

Every failure the user can fix (config, input data, output folder, engine) ends the run with
one line on stderr and a non-zero exit, before anything is half-written.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"

# Stages that later work adds; until then the command says so instead of half-working.
NOT_BUILT = {
    "distill": "teacher prompting and the distillation set",
    "influence": "gradient-influence selection",
    "synth": "synthesizer training and mass generation",
    "pretrain": "continued pre-training",
    "eval": "benchmark evaluation",
}
EXIT_USER_ERROR = 2


def not_built(stage: str) -> int:
    print(f"mathsynth {stage}: not built yet ({NOT_BUILT[stage]} is a later milestone)", file=sys.stderr)
    return EXIT_USER_ERROR


def _add_run_args(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument("--config", required=config_required, help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set sampling.temperature=0.6 (repeatable)",
    )
    parser.add_argument("--shard", help="I/N: run shard I of N (default: the Slurm array task, else 0/1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mathsynth", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("MATHSYNTH_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="template -> engine -> outputs over a corpus (sharded, resumable)")
    _add_run_args(generate)

    tiny = commands.add_parser("tiny-model", help="build the tiny local model used by tests and the demo")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--seed", type=int, default=0)

    demo = commands.add_parser("demo", help="the embedded default run: tiny model, sample corpus, CPU")
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    for stage in NOT_BUILT:
        commands.add_parser(stage, help=f"{NOT_BUILT[stage]} (not built yet)")
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    from data.shards import resolve_shard
    from pipeline.config import load_config
    from pipeline.generate import GenerateConfig, run_generate

    config = load_config(GenerateConfig, args.config, args.overrides)
    shard = resolve_shard(args.shard)
    manifest = run_generate(config, shard, config_dir=Path(args.config).parent)
    _report(config.output, manifest)
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from llm.tiny import build_tiny_model

    print(build_tiny_model(args.out, seed=args.seed))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the tiny model once, then run the demo config on the shipped sample corpus."""
    from data.samples import SAMPLE_CORPUS
    from data.shards import Shard
    from llm.tiny import build_tiny_model
    from pipeline.config import load_config
    from pipeline.generate import GenerateConfig, run_generate

    # vLLM on CPU reserves this many GiB for its KV cache; the tiny model needs little.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    workdir = Path(args.workdir)
    model_dir = workdir / "tiny-model"
    if not (model_dir / "config.json").exists():
        logging.info("building the tiny model in %s", model_dir)
        build_tiny_model(model_dir)
    overrides = [
        f"engine.model={model_dir}",
        f"output={workdir / 'generate'}",
        f"input.paths=[{SAMPLE_CORPUS}]",  # the installed copy, wherever we run from
        *args.overrides,
    ]
    config = load_config(GenerateConfig, DEMO_CONFIG, overrides)
    manifest = run_generate(config, Shard(0, 1), config_dir=DEMO_CONFIG.parent)
    _report(config.output, manifest)
    return 0


def _report(output: str, manifest: dict) -> None:
    counts = manifest.get("counts", {})
    state = "complete" if manifest.get("complete") else f"{len(manifest.get('shards_done', []))}/{manifest.get('num_shards')} shards done"
    print(f"{output}: {counts.get('records', 0)} records from {counts.get('documents', 0)} documents ({state})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command in NOT_BUILT:
        return not_built(args.command)  # whatever arguments it was given
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(chatty).setLevel(logging.WARNING)  # one line per HTTP call buries the run's own log
    handlers = {"generate": cmd_generate, "tiny-model": cmd_tiny_model, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"mathsynth {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


def _is_user_error(err: Exception) -> bool:
    """Errors whose message already tells the user what to fix: no traceback for those."""
    from data.corpus import CorpusError
    from data.shards import ShardSpecError
    from data.storage import StorageError
    from llm.engine import EngineError
    from pipeline.config import ConfigError

    return isinstance(err, (ConfigError, CorpusError, ShardSpecError, StorageError, EngineError))


if __name__ == "__main__":
    sys.exit(main())
