"""``mathsynth demo``: the demo recipe end to end on real vLLM (CPU) with the stand-in teacher,
killed with SIGKILL in the middle of synth train and rerun: every stage folder complete, nothing
lost or duplicated; a third run redoes nothing. Runs from a folder outside the repository, as a
user would after ``pip install``."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from demo_run import demo, finish

pytestmark = pytest.mark.slow


def records(folder: Path) -> list[dict]:
    rows = []
    for part in sorted(folder.glob("part-*.jsonl")):
        rows += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
    return rows


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_the_demo_runs_every_stage_survives_a_kill_and_a_rerun_redoes_nothing(demo_run):
    workdir, tmp_path = demo_run.workdir, demo_run.cwd
    assert "STAND-IN" in demo_run.killed_output  # the output says the teacher is a stand-in
    out = demo_run.output
    assert "influence: complete (" in out and "synth_train: complete in" in out  # done before the kill; resumed
    for folder in ("influence/selection", "distill", "synthesizer", "synthetic", "synthetic-filtered",
                   "pretrain-tokens", "model", "eval"):
        assert manifest(workdir / folder)["complete"], folder
    assert "vLLM" not in out and "INFO" not in out  # engine and stage logs went to files
    assert list((workdir / "recipe" / "logs").glob("synth_generate-*.log"))

    selection = manifest(workdir / "influence" / "selection")["counts"]["records"]
    distilled = records(workdir / "distill")
    assert len(distilled) == len({r["id"] for r in distilled}) == manifest(workdir / "distill")["counts"]["records"]
    assert len(distilled) == selection  # every selected text distilled once (no rejects from the stand-in)

    train = manifest(workdir / "synthesizer")
    assert train["stats"]["resumed_from_step"] is not None  # the rerun went on from the checkpoint
    steps = [json.loads(line)["step"] for line in (workdir / "synthesizer" / "batches.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == list(range(1, train["counts"]["steps"] + 1))

    generated = records(workdir / "synthetic")
    assert len(generated) == len({r["id"] for r in generated}) == 96
    assert sum(r["parse_error"] is None for r in generated) > 0  # the trained synthesizer writes parseable problems
    kept = records(workdir / "synthetic-filtered")  # a tiny model's problems: often none survive
    assert len(kept) == manifest(workdir / "synthetic-filtered")["counts"]["records"]
    sources = {s["name"]: s for s in manifest(workdir / "model")["stats"]["sources"]}
    assert sources["synthetic"]["documents"] == len(kept) and sources["distill-sft"]["documents"] == len(distilled)
    graded = records(workdir / "eval")
    assert len(graded) == len({(r["benchmark"], r["problem_id"]) for r in graded}) == 16

    table = out[out.index("stage "):]
    for stage in ("influence", "distill", "synth_train", "synth_generate", "synth_filter", "pretrain", "eval"):
        assert any(line.startswith(stage + " ") and "complete" in line for line in table.splitlines()), table
    assert "no_solution" in table or "empty" in table  # rejects by reason

    started = time.monotonic()
    again = finish(demo(workdir, tmp_path), timeout=120)
    assert time.monotonic() - started < 60
    assert again.count("; skipped") == 7 and "STAND-IN" not in again  # nothing redone, no teacher started
    assert records(workdir / "synthetic") == generated
