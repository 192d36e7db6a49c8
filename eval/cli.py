"""``mathsynth eval``: benchmarks: run a model, score predictions, grade answers."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from runner.cli import add_run_args, report, shard_of


def configure(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="evaluate a model on benchmarks (sharded, resumable)")
    add_run_args(run, config_required=False)
    run.add_argument("--model", help="checkpoint folder or hub name (engine.model)")
    run.add_argument("--engine", choices=["vllm", "hf", "openai"], help="engine.kind")
    run.add_argument("--benchmarks", help="comma-separated names, e.g. gsm8k,math500")
    run.add_argument("--setting", choices=["nl", "tool", "pot"])
    run.add_argument("--prompt", choices=["auto", "zero_shot", "few_shot", "chat"])
    run.add_argument("--n", type=int, help="samples per problem")
    run.add_argument("--limit", type=int, help="first N problems of each benchmark")
    run.add_argument("--output", help="output folder (default runs/eval/<model>-<setting>)")

    score = verbs.add_parser("score", help="grade completions produced elsewhere; last line is the accuracy")
    score.add_argument("--benchmark", required=True,
                       help="a shipped name (gsm8k) or a custom benchmark YAML (configs/benchmarks/example_custom.yaml)")
    score.add_argument("--predictions", required=True, help="JSONL, one row per problem")
    score.add_argument("--field", required=True, help="the field holding the completion or answer")
    score.add_argument("--id-field", help="match rows to problems by this field (default: by order)")
    score.add_argument("--out", help="write the graded rows here (JSONL)")

    grade = verbs.add_parser("grade", help="one JSON verdict per {gold, pred} row")
    grade.add_argument("--pairs", required=True)
    grade.add_argument("--answer-type", default="expression", choices=["number", "expression", "choice", "text"])

    rewrite = verbs.add_parser("report", help="(re)write report.json / report.md of a finished eval run")
    rewrite.add_argument("--output", required=True)


def eval_run_config(args: argparse.Namespace):
    """Flags are shorthands for config keys: a config file, then flags, then --set."""
    from eval.run import EvalConfig
    from runner.config import apply_override, load_raw, validate

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


def run(args: argparse.Namespace) -> int:
    if args.verb == "run":
        from eval.run import EvalStage
        from runner.run import run_stage

        stage = EvalStage(eval_run_config(args))
        manifest = run_stage(stage, shard_of(args))
        if manifest["complete"]:
            print((Path(stage.config.output) / "report.md").read_text(), end="")
        report(stage, manifest)
        return 0
    if args.verb == "score":
        from data.errors import ConfigError
        from eval.score import score

        if args.out and Path(args.out).is_dir():  # refused before the grading, not after
            raise ConfigError(f"--out {args.out}: is a folder; give a file path")
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
