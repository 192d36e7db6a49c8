"""``mathsynth explore``, server side: every query (browse, filters, lineage, comparison, error
patterns, export) on the folders the real stages wrote for the demo recipe (tiny model), each
answer checked against the records read straight from the files; and bad input (a folder that is
not a stage output, a half-written folder, corrupt lines) gets a clear message, never a crash."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from pipeline.explorer.index import CACHE_NAME
from pipeline.explorer.queries import QueryError
from pipeline.explorer.server import start_server
from pipeline.explorer.session import Explorer

pytestmark = pytest.mark.slow


def lines_of(folder: Path, pattern: str = "part-*.jsonl") -> list[dict]:
    rows = []
    for path in sorted(folder.glob(pattern)):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    """Every file under ``folder`` but the explorer's own cache: size and mtime."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(CACHE_NAME)}


@pytest.fixture(scope="module")
def run(explored_run, tmp_path_factory) -> Path:
    os.environ["MATHSYNTH_EXPLORER_CACHE"] = str(tmp_path_factory.mktemp("explorer-cache"))
    return explored_run


@pytest.fixture(scope="module")
def explorer(run):
    before = snapshot(run)
    explorer = Explorer([run])
    yield explorer
    explorer.close()
    assert snapshot(run) == before  # read-only: only its cache files were written


def browse(explorer: Explorer, dataset: str, **params) -> dict:
    params = {k: json.dumps(v) if k == "filters" else str(v) for k, v in params.items()}
    return explorer.records({"dataset": dataset, **params})


def all_rows(explorer: Explorer, dataset: str, **params) -> list[dict]:
    rows, offset = [], 0
    while True:
        page = browse(explorer, dataset, offset=offset, limit=7, **params)
        rows += page["rows"]
        offset += 7
        if offset >= page["total"]:
            return rows


def test_every_stage_folder_is_a_dataset_with_its_records(explorer, run):
    listed = {d["name"]: d for d in explorer.list_datasets()["datasets"]}
    kinds = {"influence/selection": "influence", "distill": "distill", "synthetic": "synth_generate",
             "synthetic-filtered": "synth_filter", "pretrain-tokens": "pretrain", "eval": "eval", "eval-b": "eval"}
    for name, kind in kinds.items():
        entry = listed[name]
        assert entry["kind"] == kind and entry["complete"] and entry["error"] is None, entry
        files = "*-of-*.jsonl"
        assert entry["records"] == len(lines_of(run / name, files)), name
        assert entry["bad_line_count"] == 0
    columns = {c["name"]: c for c in listed["eval"]["columns"]}
    verdicts = Counter(r["verdict"] for r in lines_of(run / "eval"))
    assert dict(columns["verdict"]["values"]) == dict(verdicts)
    assert dict(columns["setting"]["values"]) == {"nl": len(lines_of(run / "eval"))}  # from the run's manifest
    assert columns["correct"]["type"] == "bool" and columns["usage.completion_tokens"]["type"] == "number"


def test_filters_search_sort_and_pages_match_the_files(explorer, run):
    graded = lines_of(run / "eval")
    wrong = browse(explorer, "eval", filters=[{"col": "verdict", "op": "ne", "value": "match"}])
    assert wrong["total"] == sum(r["verdict"] != "match" for r in graded)
    math500 = browse(explorer, "eval", filters=[{"col": "benchmark", "op": "in", "value": ["math500"]},
                                                {"col": "extracted", "op": "is_null"}])
    assert math500["total"] == sum(r["benchmark"] == "math500" and r["extracted"] is None for r in graded)
    long = browse(explorer, "eval", filters=[{"col": "usage.completion_tokens", "op": "ge", "value": 40}])
    assert long["total"] == sum(r["usage"]["completion_tokens"] >= 40 for r in graded)

    word = graded[0]["prompt"].split()[3].lower()  # full text: the prompt is a long field, not a column
    found = browse(explorer, "eval", q=word)
    assert found["total"] == sum(word in json.dumps(r, ensure_ascii=False).lower() for r in graded)

    rows = all_rows(explorer, "synthetic", sort="usage.completion_tokens", desc=1)
    generated = lines_of(run / "synthetic")
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in generated)  # every record once
    tokens = [r["usage.completion_tokens"] for r in rows]
    assert tokens == sorted(tokens, reverse=True)


def test_a_bad_filter_is_a_one_line_error(explorer):
    with pytest.raises(QueryError, match="has no column 'nope'"):
        browse(explorer, "eval", filters=[{"col": "nope", "op": "eq", "value": 1}])
    with pytest.raises(QueryError, match="is not a number"):
        browse(explorer, "eval", filters=[{"col": "usage.completion_tokens", "op": "gt", "value": "many"}])
    with pytest.raises(QueryError, match="unknown op"):
        browse(explorer, "eval", filters=[{"col": "verdict", "op": "DROP TABLE", "value": 1}])
    with pytest.raises(QueryError, match="has no column"):
        browse(explorer, "eval", sort='verdict"; DROP TABLE records; --')


def test_a_record_is_read_back_whole_from_its_file_and_line(explorer, run):
    page = browse(explorer, "synthetic-filtered", filters=[{"col": "outcome", "op": "eq", "value": "rejected"}])
    assert page["total"] == len(lines_of(run / "synthetic-filtered", "rejects-*.jsonl"))
    opened = explorer.record({"dataset": "synthetic-filtered", "row": str(page["rows"][0]["_row"])})
    line = Path(opened["file"]).read_text(encoding="utf-8").splitlines()[opened["line"] - 1]
    assert opened["record"] == json.loads(line) and opened["record"]["reject_reason"]


def lineage_of(explorer: Explorer, dataset: str, record_id: str) -> dict:
    row = browse(explorer, dataset, filters=[{"col": "id", "op": "eq", "value": record_id}])["rows"][0]["_row"]
    return explorer.lineage({"dataset": dataset, "row": str(row)})


def test_lineage_follows_a_sample_back_to_its_text_and_forward_to_its_filter_decision(explorer, run):
    decisions = {r["id"]: r for r in lines_of(run / "synthetic-filtered", "*-of-*.jsonl")}
    selected = {r["id"] for r in lines_of(run / "influence" / "selection")}
    for sample in lines_of(run / "synthetic")[:12]:
        found = lineage_of(explorer, "synthetic", sample["id"])
        sources = [i for i in found["back"] if i["relation"].startswith("source text")]
        assert [i["id"] for i in sources if i["dataset"] == "influence/selection"] == \
            ([sample["source_id"]] if sample["source_id"] in selected else [])
        # the corpus file synth generate read (named in its manifest's inputs) is a dataset too
        assert [i["id"] for i in sources if i["dataset"] == "stackexchange_math"] == [sample["source_id"]]
        decision = decisions[sample["id"]]
        expected = f"rejected by the filter: {decision['reject_reason']}" if decision.get("reject_reason") \
            else "kept by the filter"
        assert [i["relation"] for i in found["forward"] if i["dataset"] == "synthetic-filtered"] == [expected]


def test_lineage_of_a_teacher_answer_reaches_its_prompt_text_and_pretraining(explorer, run):
    distilled = lines_of(run / "distill")
    for record in distilled[:5]:
        found = lineage_of(explorer, "distill", record["id"])
        back = {i["relation"].split(" (")[0]: i for i in found["back"]}
        assert back["source text"]["id"] == record["source_id"]
        assert back["stage prompt"]["summary"] == record["prompt"]  # rendered again, word for word
        used = [i for i in found["forward"] if i["relation"] == "used in pretrain"]
        assert len(used) == 1 and "distill-sft" in used[0]["summary"]  # every answer is an SFT document
        samples = {r["item_key"]: r for r in lines_of(run / "synthetic")}
        if record["item_key"] in samples:  # the synthesizer wrote for the same prompted text
            assert any(i["relation"].startswith("synthesizer sample") for i in found["forward"])
    # and from the text: its teacher answer (the stand-in answers every text once)
    text = lines_of(run / "influence" / "selection")[0]
    found = lineage_of(explorer, "influence/selection", text["id"])
    answers = [i["id"] for i in found["forward"] if i["relation"] == "teacher answer"]
    assert answers == [r["id"] for r in distilled if r["source_id"] == text["id"]]


def by_problem(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["sample_index"]):
        out.setdefault((r["benchmark"], r["problem_id"]), []).append(r)
    return out


def test_two_eval_runs_compare_per_problem_and_per_benchmark(explorer, run):
    a, b = by_problem(lines_of(run / "eval")), by_problem(lines_of(run / "eval-b"))
    result = explorer.compare({"datasets": "eval,eval-b", "limit": "500"})
    assert result["total"] == len(a) == len(b)
    for problem in result["problems"]:
        key = (problem["benchmark"], problem["problem_id"])
        for cell, samples in zip(problem["runs"], (a[key], b[key])):
            assert cell["samples"] == len(samples)
            assert cell["correct"] == sum(s["correct"] for s in samples)
            assert cell["no_answer"] == sum(s["extracted"] is None for s in samples)
            assert cell["pass"] == any(s["correct"] for s in samples)
    counts = {show: explorer.compare({"datasets": "eval,eval-b", "show": show})["total"]
              for show in ("right_a_wrong_b", "wrong_a_right_b", "all_wrong", "all_right")}
    assert sum(counts.values()) == len(a)
    assert counts["wrong_a_right_b"] > 0  # the scripted student gets some right, the tiny model none
    shown = explorer.compare({"datasets": "eval,eval-b", "show": "wrong_a_right_b", "limit": "500"})["problems"]
    assert all(not p["runs"][0]["majority_correct"] and p["runs"][1]["majority_correct"] for p in shown)
    report = json.loads((run / "eval" / "report.json").read_text())
    for row in result["summary"]:
        if row["subject"] is None and row["level"] is None:
            first = [r for k, rs in a.items() if k[0] == row["benchmark"] for r in rs]
            assert row["accuracy"][0] == pytest.approx(100 * sum(r["correct"] for r in first) / len(first))
    assert report  # the eval stage wrote its own report beside the records
    with pytest.raises(QueryError, match="at least two"):
        explorer.compare({"datasets": "eval"})
    with pytest.raises(QueryError, match="not an eval run"):
        explorer.compare({"datasets": "eval,synthetic"})


def test_error_patterns_group_wrong_answers_and_reject_reasons(explorer, run):
    graded = lines_of(run / "eval-b")
    report = explorer.error_patterns({"dataset": "eval-b"})
    assert sum(g["count"] for g in report["groups"]) == sum(not r["correct"] for r in graded)
    kinds = {g["name"] for g in report["groups"]}
    assert kinds <= {"no answer", "truncated", "several boxed answers", "wrong number", "wrong form", "wrong value",
                     "code error", "timeout"}
    truncated = sum(not r["correct"] and r["finish_reason"] == "length" for r in graded)
    assert dict((g["name"], g["count"]) for g in report["groups"]).get("truncated", 0) == truncated
    assert {"wrong number", "several boxed answers", "no answer"} <= kinds  # the scripted student's mistakes
    several = sum(not r["correct"] and r["completion"].count("\\boxed{") == 2 for r in graded)
    assert dict((g["name"], g["count"]) for g in report["groups"])["several boxed answers"] == several
    texts = {r["id"]: r["completion"] for r in graded}
    biggest = report["clusters"][0]  # the one repeated mistake is one group
    assert biggest["size"] == sum(t.startswith("Adding everything up") for t in texts.values())
    for cluster in report["clusters"]:
        assert cluster["size"] >= 2 and cluster["examples"]
    rejects = Counter(r["reject_reason"] for r in lines_of(run / "synthetic-filtered", "rejects-*.jsonl"))
    filtered = explorer.error_patterns({"dataset": "synthetic-filtered"})
    assert filtered["kind"] == "filter" and {g["name"]: g["count"] for g in filtered["groups"]} == dict(rejects)


def test_export_writes_the_filtered_records_whole(explorer, run):
    name, lines = explorer.export({"dataset": "eval", "filters": json.dumps([{"col": "correct", "op": "eq",
                                                                            "value": False}])})
    exported = [json.loads(line) for line in lines]
    assert name == "eval-export.jsonl"
    assert exported == [r for r in lines_of(run / "eval") if not r["correct"]]


def test_bad_folders_and_lines_are_reported_and_a_growing_folder_is_read_on(run, tmp_path):
    half = tmp_path / "half-eval"
    shutil.copytree(run / "eval", half, ignore=shutil.ignore_patterns(".*"))
    manifest = json.loads((half / "manifest.json").read_text())
    (half / "manifest.json").write_text(json.dumps({**manifest, "complete": False, "shards_done": []}))
    part = next(half.glob("part-*.jsonl"))
    rows = part.read_text(encoding="utf-8").splitlines(keepends=True)
    part.write_text("".join(rows[:5]) + '{"id": "broken", "verdict": \n' + "".join(rows[5:10]) + rows[10][:30],
                    encoding="utf-8")  # a corrupt line, and a torn tail being written
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a run")
    broken = tmp_path / "broken-manifest"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")

    explorer = Explorer([half, tmp_path / "notes", broken, tmp_path / "missing"])
    try:
        listed = {d["name"]: d for d in explorer.list_datasets()["datasets"]}
        assert listed["notes"]["error"] == f"{tmp_path / 'notes'}: not a stage output (no manifest.json in it or " \
                                           f"in the folders below it)"
        assert "manifest.json: unreadable" in listed["broken-manifest"]["error"]
        assert "no such file or folder" in listed["missing"]["error"]
        entry = listed["half-eval"]
        assert not entry["complete"] and entry["progress"] == "0 of 1 shards sealed"
        assert entry["records"] == 10 and entry["bad_line_count"] == 1
        assert entry["bad_lines"][0]["file"] == str(part) and entry["bad_lines"][0]["line"] == 6
        with pytest.raises(QueryError, match="not a stage output"):
            explorer.records({"dataset": "notes"})

        with open(part, "a", encoding="utf-8") as handle:  # the stage goes on: the torn line completes
            handle.write(rows[10][30:] + "".join(rows[11:]))
        explorer.refresh(force=True)
        assert explorer.indexes["half-eval"].count() == len(rows)
        ids = [r["id"] for r in all_rows(explorer, "half-eval")]
        assert sorted(ids) == sorted(json.loads(r)["id"] for r in rows)  # nothing twice, nothing lost
    finally:
        explorer.close()


def get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read().decode()
            return response.status, json.loads(body) if "json" in response.headers["Content-Type"] else body
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_http_api_answers_errors_as_json_and_serves_only_its_own_files(run):
    server, url = start_server([str(run / "eval"), str(run / "synthetic")])
    try:
        assert get(url + "api/records?dataset=eval&limit=2")[1]["total"] > 0
        status, body = get(url + "api/records?dataset=eval&filters=%5Bnot-json")
        assert status == 400 and body["error"].startswith("bad query parameter")
        assert get(url + "api/record?dataset=eval&row=999999")[0] == 404
        assert get(url + "api/records?dataset=nope")[1] == {"error": "no dataset 'nope'"}
        assert get(url + "static/../../session.py")[0] == 404
        status, page = get(url)
        assert status == 200 and "<html" in page.lower()
        exported = urllib.request.urlopen(url + "api/export?dataset=eval").read().decode().splitlines()
        assert len(exported) == len(lines_of(run / "eval"))
    finally:
        server.shutdown()


def test_the_page_and_its_assets_need_no_network():
    static = REPO_ROOT / "pipeline" / "explorer" / "static"
    for path in static.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text(encoding="utf-8", errors="replace")
            for marker in ('src="http', "src='http", 'href="http', "url(http", "@import url(\"http"):
                assert marker not in text, f"{path} loads {marker}..."


def test_the_explore_command_serves_on_localhost_and_says_where(run):
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "explore", str(run / "eval"), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        for line in process.stdout:
            if line.startswith("explorer: "):
                url = line.split()[1]
                break
        assert url.startswith("http://127.0.0.1:")
        assert get(url + "api/datasets")[1]["datasets"][0]["name"] == "eval"
    finally:
        process.kill()
        process.wait()
    bad = subprocess.run([sys.executable, "-m", "pipeline", "explore", str(run / "eval"), "--port", "70000"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert bad.returncode == 2 and "--port: 70000 is not a port" in bad.stderr


def test_a_second_explorer_on_the_same_folder_builds_its_own_index(run, tmp_path):
    folder = tmp_path / "eval"  # a folder no explorer of this process has opened
    shutil.copytree(run / "eval", folder, ignore=shutil.ignore_patterns(".*"))
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "explore", str(folder), "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        next(line for line in first.stdout if line.startswith("explorer: "))  # holds the folder's cache
        second = Explorer([folder])
        try:
            assert second.indexes["eval"].path.parent != folder
            assert second.list_datasets()["datasets"][0]["records"] == len(lines_of(run / "eval"))
        finally:
            second.close()
    finally:
        first.kill()
        first.wait()
