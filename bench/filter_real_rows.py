"""synth filter on someone else's synthetic data: kept and rejected by reason, per kind of row.

Reads a JSONL of rows with ``text`` in the JiuZhang3.0 layout (``## Question`` / ``## Solution``
or ``## Code Solution``) and a ``kind`` (for example JiuZhang3.0's released CoT-pretraining,
tool-pretraining and fine-tuning samples, which carry no licence: keep them out of the
repository), filters them with the default ``synth filter`` config (``--set`` overrides it),
and prints the kept/rejected counts per kind plus where the report and an audit sample are.

    python bench/filter_real_rows.py --rows ../shared/data/corpus/reference_only_unlicensed.jsonl \\
        --source-prefix JiuZhang --workdir /tmp/filter-real
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.shards import Shard  # noqa: E402
from synth.filter_report import write_audit  # noqa: E402
from synth.filter_run import SynthFilterConfig, run_synth_filter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", required=True, help="JSONL with text (JiuZhang3.0 layout) and kind")
    parser.add_argument("--source-prefix", default="", help="keep rows whose source starts with this")
    parser.add_argument("--workdir", required=True, help="scratch folder (emptied first)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a synth filter config override, e.g. format.answer=\"boxed\"")
    parser.add_argument("--audit", type=int, default=10, help="rejects per reason in the audit file")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    data = workdir / "rows"
    data.mkdir(parents=True)
    by_kind: dict[str, list[str]] = {}
    with open(args.rows, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if str(row.get("source", "")).startswith(args.source_prefix):
                by_kind.setdefault(row.get("kind") or "rows", []).append(
                    json.dumps({"id": row["id"], "text": row["text"], "kind": row.get("kind")}))
    for kind, lines in by_kind.items():
        (data / f"{kind}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    settings: dict = {"input": str(data), "output": str(workdir / "filtered"), "rows": {"stage_field": "kind"}}
    for item in args.set:
        key, _, value = item.partition("=")
        target = settings
        *parents, leaf = key.split(".")
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = json.loads(value)
    config = SynthFilterConfig.model_validate(settings)
    started = time.monotonic()
    run_synth_filter(config, Shard(0, 1))
    seconds = time.monotonic() - started
    report = json.loads((workdir / "filtered" / "report.json").read_text())
    print(f"{report['records']} rows, {report['kept']} kept, {seconds:.0f} s")
    for kind, counts in report["by_stage"].items():
        total = sum(counts.values())
        rejected = Counter({k: v for k, v in counts.items() if k != "kept"})
        print(f"{kind}: kept {counts.get('kept', 0)}/{total}; " + ", ".join(f"{k} {v}" for k, v in rejected.most_common()))
    audit = workdir / "audit.md"
    written = write_audit(workdir / "filtered", audit, args.audit, seed=0)
    print(f"report: {workdir / 'filtered' / 'report.md'}; audit sample ({sum(written.values())} rejects): {audit}")


if __name__ == "__main__":
    main()
