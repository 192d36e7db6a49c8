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
DEMO_EVAL_CONFIG = REPO_ROOT / "configs" / "demo-eval.yaml"

# Stages that later work adds; until then the command says so instead of half-working.
NOT_BUILT = {
    "pretrain": "continued pre-training",
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

    _add_eval_parser(commands)

    distill = commands.add_parser("distill", help="education-stage teacher prompting -> the distillation set")
    _add_run_args(distill)
    distill.add_argument("--dry-run", action="store_true", help="print calls, estimated tokens and cost; call nothing")

    _add_influence_parser(commands)

    synth = commands.add_parser("synth", help="train the small synthesizer; mass-produce problems with it")
    synth_verbs = synth.add_subparsers(dest="verb", required=True)
    train = synth_verbs.add_parser("train", help="SFT on the distill export (packing, LoRA or full; accelerate launch)")
    _add_run_args(train)
    synth_generate = synth_verbs.add_parser("generate", help="the trained synthesizer writes problems from corpus "
                                                             "texts (stage prompts; sharded, resumable)")
    _add_run_args(synth_generate)
    synth_filter = synth_verbs.add_parser("filter", help="format, length, decontamination, sandbox and consistency "
                                                         "filters, then dedup across shards: the pre-training set")
    _add_run_args(synth_filter)

    for stage in NOT_BUILT:
        commands.add_parser(stage, help=f"{NOT_BUILT[stage]} (not built yet)")
    return parser


def _add_influence_parser(commands) -> None:
    influence = commands.add_parser("influence", help="gradient-influence selection of corpus texts worth distilling")
    verbs = influence.add_subparsers(dest="verb", required=True)
    warmup = verbs.add_parser("warmup", help="LoRA warm-up on a random share of the pool; per-epoch checkpoints")
    _add_run_args(warmup)
    featurize = verbs.add_parser("featurize", help="target and candidate gradient features (sharded, resumable)")
    _add_run_args(featurize)
    featurize.add_argument("--side", choices=("both", "targets", "candidates"), default="both",
                           help="targets are computed once, by whichever shard gets there first")
    select = verbs.add_parser("select", help="score, merge the shards, dedup, select; --shard only scores")
    _add_run_args(select)


def _add_eval_parser(commands) -> None:
    evaluation = commands.add_parser("eval", help="benchmarks: run a model, score predictions, grade answers")
    verbs = evaluation.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="evaluate a model on benchmarks (sharded, resumable)")
    _add_run_args(run, config_required=False)
    run.add_argument("--model", help="checkpoint folder or hub name (engine.model)")
    run.add_argument("--engine", choices=["vllm", "hf", "openai"], help="engine.kind")
    run.add_argument("--benchmarks", help="comma-separated names, e.g. gsm8k,math500")
    run.add_argument("--setting", choices=["nl", "tool", "pot"])
    run.add_argument("--prompt", choices=["auto", "zero_shot", "few_shot", "chat"])
    run.add_argument("--n", type=int, help="samples per problem")
    run.add_argument("--limit", type=int, help="first N problems of each benchmark")
    run.add_argument("--output", help="output folder (default runs/eval/<model>-<setting>)")

    score = verbs.add_parser("score", help="grade completions produced elsewhere; last line is the accuracy")
    score.add_argument("--benchmark", required=True)
    score.add_argument("--predictions", required=True, help="JSONL, one row per problem")
    score.add_argument("--field", required=True, help="the field holding the completion or answer")
    score.add_argument("--id-field", help="match rows to problems by this field (default: by order)")
    score.add_argument("--out", help="write the graded rows here (JSONL)")

    grade = verbs.add_parser("grade", help="one JSON verdict per {gold, pred} row")
    grade.add_argument("--pairs", required=True)
    grade.add_argument("--answer-type", default="expression", choices=["number", "expression", "choice", "text"])

    report = verbs.add_parser("report", help="(re)write report.json / report.md of a finished eval run")
    report.add_argument("--output", required=True)


def eval_run_config(args: argparse.Namespace):
    """Flags are shorthands for config keys: a config file, then flags, then --set."""
    from eval.run import EvalConfig
    from pipeline.config import apply_override, load_raw, validate

    raw = load_raw(args.config)
    flags = {
        "engine.model": args.model, "engine.kind": args.engine, "benchmarks": args.benchmarks,
        "setting": args.setting, "prompt": args.prompt, "n": args.n, "limit": args.limit, "output": args.output,
    }
    for key, value in flags.items():
        if value is not None:
            node, *path = key.split(".")
            target = raw.setdefault(node, {}) if path else raw
            target[path[0] if path else node] = value
    if "output" not in raw and isinstance(raw.get("engine"), dict) and raw["engine"].get("model"):
        raw["output"] = f"runs/eval/{Path(str(raw['engine']['model'])).name}-{raw.get('setting', 'nl')}"
    for assignment in args.overrides:
        apply_override(raw, assignment)
    return validate(EvalConfig, raw, source=args.config or "eval run")


def cmd_eval(args: argparse.Namespace) -> int:
    if args.verb == "run":
        from data.shards import resolve_shard
        from eval.run import run_eval

        config = eval_run_config(args)
        manifest = run_eval(config, resolve_shard(args.shard))
        if manifest["complete"]:
            print((Path(config.output) / "report.md").read_text(), end="")
        _report(config.output, manifest)
        return 0
    if args.verb == "score":
        import json

        from eval.score import score

        rows, line = score(args.benchmark, Path(args.predictions), args.field, id_field=args.id_field)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(line)
        return 0
    if args.verb == "grade":
        from eval.grade_cli import grade_pairs

        grade_pairs(args.pairs, answer_type=args.answer_type)
        return 0
    from eval.report import markdown, write_report

    print(markdown(write_report(Path(args.output))), end="")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    import json

    from data.shards import resolve_shard
    from distill.run import DistillConfig, dry_run, run_distill
    from pipeline.config import load_config

    config = load_config(DistillConfig, args.config, args.overrides)
    shard = resolve_shard(args.shard)
    if args.dry_run:
        print(json.dumps(dry_run(config, shard), indent=2))
        return 0
    manifest = run_distill(config, shard)
    counts = manifest.get("counts", {})
    print(f"{config.output}: {counts.get('records', 0)} accepted, {counts.get('rejected', 0)} rejected "
          f"{counts.get('rejected_by_reason', {})} from {counts.get('texts', 0)} texts")
    _report(config.output, manifest)
    return 0


def cmd_influence(args: argparse.Namespace) -> int:
    import json

    from data.shards import resolve_shard
    from influence.config import InfluenceConfig
    from pipeline.config import load_config

    config = load_config(InfluenceConfig, args.config, args.overrides)
    if args.verb == "warmup":
        from influence.warmup import run_warmup

        manifest = run_warmup(config)
        print(f"{config.warmup.output}: {json.dumps(manifest.get('warmup', {}))}")
        return 0
    shard = resolve_shard(args.shard)
    if args.verb == "featurize":
        from influence.featurize import run_featurize

        print(json.dumps(run_featurize(config, shard, args.side), indent=2))
        return 0
    from influence.select import run_select, score_shard

    if shard.count > 1:
        print(json.dumps(score_shard(config, shard), indent=2))
        return 0
    manifest = run_select(config)
    print(f"{config.select.output}: {json.dumps(manifest.get('selection', {}))} (report: "
          f"{config.select.output}/report.md)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import json

    from pipeline.config import load_config

    if args.verb == "generate":
        from data.shards import resolve_shard
        from synth.generate import SynthGenerateConfig, run_synth_generate

        config = load_config(SynthGenerateConfig, args.config, args.overrides)
        manifest = run_synth_generate(config, resolve_shard(args.shard))
        _report(config.output, manifest)
        counts = manifest.get("counts", {})
        print(f"{config.output}: {counts.get('windows', 0)} text windows, "
              f"{sum(counts.get('parse_errors', {}).values())} records that do not parse (kept, marked parse_error)")
        return 0
    if args.verb == "filter":
        from data.shards import resolve_shard
        from synth.filter_run import SynthFilterConfig, run_synth_filter

        config = load_config(SynthFilterConfig, args.config, args.overrides)
        manifest = run_synth_filter(config, resolve_shard(args.shard))
        _report(config.output, manifest)
        if manifest.get("complete"):
            counts = manifest.get("counts", {})
            reasons = counts.get("rejected_by_reason", {})
            print(f"{config.output}: kept {counts.get('kept', 0)} of {counts.get('input_records', 0)} records; "
                  f"rejected: {', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or 'none'}")
        return 0
    from synth.config import SynthTrainConfig
    from synth.train import run_train

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # a line per saved file otherwise
    manifest = run_train(load_config(SynthTrainConfig, args.config, args.overrides))
    if os.environ.get("RANK", "0") == "0":  # one summary line, not one per process
        print(json.dumps({"output": manifest["config"]["output"], **manifest["stats"]}))
    return 0


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
    """Build the tiny model once, then run every built stage on the embedded default: generate
    over the shipped sample corpus, then evaluate on a benchmark slice, on one vLLM engine."""
    from data.samples import SAMPLE_CORPUS
    from data.shards import Shard
    from eval.run import EvalConfig, run_eval
    from llm.factory import make_engine
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
    generate = load_config(GenerateConfig, DEMO_CONFIG, overrides)
    evaluate = load_config(EvalConfig, DEMO_EVAL_CONFIG, [f"engine.model={model_dir}", f"output={workdir / 'eval'}"])
    with make_engine(generate.engine) as engine:  # one engine start for both steps
        _report(generate.output, run_generate(generate, Shard(0, 1), config_dir=DEMO_CONFIG.parent, engine=engine))
        manifest = run_eval(evaluate, Shard(0, 1), engine=engine)
    print((Path(evaluate.output) / "report.md").read_text(), end="")
    _report(evaluate.output, manifest)
    return 0


def _report(output: str, manifest: dict) -> None:
    counts = manifest.get("counts", {})
    state = "complete" if manifest.get("complete") else f"{len(manifest.get('shards_done', []))}/{manifest.get('num_shards')} shards done"
    source = f" from {counts['documents']} documents" if "documents" in counts else ""
    print(f"{output}: {counts.get('records', 0)} records{source} ({state})")
    for warning in manifest.get("warnings", []):
        print(f"warning: {warning}")


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
    handlers = {"generate": cmd_generate, "tiny-model": cmd_tiny_model, "demo": cmd_demo, "eval": cmd_eval,
                "distill": cmd_distill, "influence": cmd_influence, "synth": cmd_synth}
    try:
        return handlers[args.command](args)
    except Exception as err:
        if not _is_user_error(err):
            raise
        message = str(err)
        if isinstance(err, OSError):
            import errno

            advice = "give a file path" if err.errno == errno.EISDIR else "free space and rerun: finished work is kept"
            message = f"{err.filename or 'an output file'}: {err.strerror.lower()}; {advice}"
        print(f"mathsynth {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def _is_user_error(err: Exception) -> bool:
    """Errors whose message already tells the user what to fix: no traceback for those. A full
    disk or quota, and a folder given where a file is written, are the machine's or the user's
    to fix, not a bug: every stage keeps what it finished, so a rerun goes on from there."""
    import errno

    from data.errors import UserError

    return isinstance(err, UserError) or (
        isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EISDIR))


if __name__ == "__main__":
    sys.exit(main())
