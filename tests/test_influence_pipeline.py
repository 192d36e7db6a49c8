"""warmup -> featurize -> select on the tiny model: planted relevance, resume after kill -9,
shards, feature-space hashes, and the selection as distill's corpus."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, sample_texts, write_jsonl
from influence_helpers import assert_same_selection, make_config, read_selection

from data.corpus import CorpusInput, read_corpus
from data.errors import OutputError
from data.shards import Shard
from influence.config import InfluenceConfig
from influence.featurize import FeaturizeStage, run_featurize
from influence.select import SelectStage, run_select, score_shard
from influence.store import CandidateChunks
from influence.warmup import WarmupStage, run_warmup
from pipeline.cli import main

NAMES = ["Tom", "Ana", "Liu", "Sara", "Omar", "Mia", "Ben", "Zoe"]
ITEMS = ["apples", "pencils", "marbles", "books", "cookies", "stickers", "coins", "cards"]


def word_problem(rng: random.Random) -> tuple[str, str]:
    a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    question = f"{name} has {a} {item}. {name} buys {b} more {item} and then gives away {c}. How many {item} does {name} have now?"
    solution = (f"{name} starts with {a} {item}. After buying {b}, {name} has {a} + {b} = {a + b}. After giving "
                f"away {c}, {name} has {a + b} - {c} = {a + b - c}. The answer is \\boxed{{{a + b - c}}}.")
    return question, solution


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """A pool of 200 texts, half arithmetic word problems and half Stack Exchange threads, and a
    target set of 40 other word problems."""
    folder = tmp_path_factory.mktemp("planted")
    rng = random.Random(0)
    threads = sample_texts(400)
    rows = []
    for i in range(200):
        if i % 2 == 0:
            question, solution = word_problem(rng)
            rows.append({"id": f"wp{i}", "text": f"{question}\n{solution}", "source": "word_problems"})
        else:
            rows.append({"id": f"se{i}", "text": threads[i], "source": "stackexchange"})
    write_jsonl(folder / "pool.jsonl", rows)
    targets = [dict(zip(("question", "solution"), word_problem(rng))) for _ in range(40)]
    write_jsonl(folder / "targets.jsonl", targets)
    return folder


@pytest.fixture(scope="module")
def warmed(tiny_model, planted) -> Path:
    """The warm-up is shared: every test below scores at the same two checkpoints."""
    run_warmup(InfluenceConfig.model_validate(make_config(tiny_model, planted, planted / "unused")))
    return planted


def test_planted_relevance_top_tenth_is_mostly_the_target_kind(tiny_model, warmed, tmp_path):
    config = InfluenceConfig.model_validate(make_config(tiny_model, warmed, tmp_path))
    run_featurize(config, Shard(0, 1))
    manifest = run_select(config)
    assert manifest["complete"]
    chosen = read_selection(tmp_path / "selection")
    assert len(chosen) == 20  # 10% of 200
    share = sum(row["source"] == "word_problems" for row in chosen) / len(chosen)
    assert share >= 0.8, share
    assert [row["influence"]["rank"] for row in chosen] == list(range(1, 21))
    scores = [row["influence"]["score"] for row in chosen]
    assert scores == sorted(scores, reverse=True)
    report = json.loads((tmp_path / "selection" / "report.json").read_text())
    assert {s["source"] for s in report["sources"]} == {"word_problems", "stackexchange"}
    assert report["length"]["spearman_score_vs_length"] is not None

    # The selection is a corpus distill reads as it is.
    docs = list(read_corpus(CorpusInput(paths=[str(tmp_path / "selection")]), Shard(0, 1)))
    assert [d.id for d in docs] == [row["id"] for row in chosen]
    assert docs[0].text == chosen[0]["text"]


def test_near_duplicate_texts_are_removed_inside_the_selection(tiny_model, warmed, tmp_path):
    rows = [json.loads(line) for line in (warmed / "pool.jsonl").read_text().splitlines()]
    copies = [{**row, "id": row["id"] + "-copy"} for row in rows if row["source"] == "word_problems"][:10]
    write_jsonl(tmp_path / "pool.jsonl", rows + copies)
    config = make_config(tiny_model, warmed, tmp_path, select__dedup={"threshold": 0.999}, select__top_k=40,
                         select__top_fraction=None)
    config["candidates"]["paths"] = [str(tmp_path / "pool.jsonl")]
    config = InfluenceConfig.model_validate(config)
    run_featurize(config, Shard(0, 1))
    run_select(config)
    chosen = {row["id"] for row in read_selection(tmp_path / "selection")}
    assert len(chosen) == 40
    for copy in copies:  # never a text and its copy together
        assert not ({copy["id"], copy["id"][: -len("-copy")]} <= chosen)
    report = json.loads((tmp_path / "selection" / "report.json").read_text())
    assert report["dropped_near_duplicates"] >= sum(c["id"][: -len("-copy")] in chosen or c["id"] in chosen
                                                    for c in copies)


def test_two_shards_give_the_same_selection_as_one(tiny_model, warmed, tmp_path):
    one = InfluenceConfig.model_validate(make_config(tiny_model, warmed, tmp_path / "one"))
    run_featurize(one, Shard(0, 1))
    run_select(one)
    two = InfluenceConfig.model_validate(make_config(tiny_model, warmed, tmp_path / "two"))
    for index in range(2):
        run_featurize(two, Shard(index, 2))
        score_shard(two, Shard(index, 2))
    run_select(two)
    assert_same_selection(tmp_path / "one" / "selection", tmp_path / "two" / "selection")


def test_select_waits_for_every_featurize_shard(tiny_model, warmed, tmp_path, capsys):
    config = make_config(tiny_model, warmed, tmp_path)
    run_featurize(InfluenceConfig.model_validate(config), Shard(1, 3))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["influence", "select", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chunks [0, 2, 3, 5, 6" in err[0] and "not featurized" in err[0]


def test_kill_during_featurize_then_rerun_gives_the_same_scores(tiny_model, warmed, tmp_path):
    reference = InfluenceConfig.model_validate(make_config(tiny_model, warmed, tmp_path / "reference"))
    run_featurize(reference, Shard(0, 1))
    run_select(reference)

    config = make_config(tiny_model, warmed, tmp_path / "killed", featurize__batch_size=2)
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(config))
    chunks = tmp_path / "killed" / "features" / "candidates"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "influence", "featurize", "--config", str(path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(chunks.glob("chunk-*"))) < 3:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(list(chunks.glob("chunk-*")))
    assert 3 <= written < 13, written  # killed mid-run: 13 chunks of 16 make up the 200 rows

    rerun = subprocess.run([sys.executable, "-m", "influence", "featurize", "--config", str(path)], env=env,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["candidates"]["chunks_already_done"] == written
    assert summary["candidates"]["chunks_written"] == 13 - written
    run_select(InfluenceConfig.model_validate(config))
    assert_same_selection(tmp_path / "reference" / "selection", tmp_path / "killed" / "selection")


def part_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_every_folder_is_a_stage_output_whose_manifest_says_pending_partial_or_complete(tiny_model, warmed, tmp_path):
    config = InfluenceConfig.model_validate(make_config(tiny_model, warmed, tmp_path))
    warmup = json.loads((warmed / "warmup" / "manifest.json").read_text())
    assert warmup["stage"] == "influence-warmup" and warmup["complete"]
    assert (warmup["num_shards"], warmup["shards_done"]) == (1, [0])
    assert part_ids(warmed / "warmup" / "part-00000-of-00001.jsonl") == ["epoch-1", "epoch-2"]
    assert (warmed / "warmup" / "part-00000-of-00001.done").exists()
    assert WarmupStage(config).summary(warmup).startswith("2 of 2 epochs")

    # Featurize: chunk j belongs to shard j mod 2; after shard 1 alone the folder is partial.
    candidates = tmp_path / "features" / "candidates"
    run_featurize(config, Shard(1, 2))
    partial = json.loads((candidates / "manifest.json").read_text())
    assert partial["stage"] == "influence-featurize" and not partial["complete"]
    assert (partial["num_shards"], partial["shards_done"]) == (2, [1])
    assert part_ids(candidates / "part-00001-of-00002.jsonl") == [f"chunk-{j:06d}" for j in range(1, 13, 2)]
    assert not (candidates / "part-00000-of-00002.jsonl").exists()
    manifest = run_featurize(config, Shard(0, 2))
    assert manifest["complete"] and manifest["shards_done"] == [0, 1]
    assert manifest["counts"]["records"] == 13 and manifest["counts"]["examples"] == 200
    assert FeaturizeStage(config).summary(manifest) == "13 chunks, 200 candidates featurized (2 of 2 shards done)"

    selection = run_select(config)
    assert selection["stage"] == "influence-select" and selection["complete"] and selection["shards_done"] == [0]
    assert (tmp_path / "selection" / "part-00000-of-00001.done").exists()
    assert SelectStage(config).summary(selection).startswith("20 of 200 candidates selected")


def start_script(script: str, *args: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def wait_for(marker: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``process`` writes ``marker``; fails with its error if it ends first."""
    deadline = time.monotonic() + seconds
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), process.stderr.read().decode()[-2000:] if process.poll() is not None else "timed out"


# Run in a subprocess: featurizes one chunk of shard 0/1, then stalls holding the shard, before
# the chunk is listed in the part file.
STALLING_FEATURIZE = """
import sys, time
from pathlib import Path
import yaml
from data.shards import Shard
from influence.config import InfluenceConfig
from influence.featurize import run_featurize
from influence.store import CandidateChunks
config = InfluenceConfig.model_validate(yaml.safe_load(Path(sys.argv[1]).read_text()))
marker, real_write = Path(sys.argv[2]), CandidateChunks.write
def write_then_stall(self, *args):
    real_write(self, *args)
    marker.write_text("stalled")
    time.sleep(300)
CandidateChunks.write = write_then_stall
run_featurize(config, Shard(0, 1), side="candidates")
"""


def test_a_second_process_on_the_same_featurize_shard_is_refused(tiny_model, warmed, tmp_path):
    config = make_config(tiny_model, warmed, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    marker = tmp_path / "stalled"
    first = start_script(STALLING_FEATURIZE, path, marker)
    try:
        wait_for(marker, first)
        with pytest.raises(OutputError, match="shard 0/1 is being run by another process"):
            run_featurize(InfluenceConfig.model_validate(config), Shard(0, 1), side="candidates")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The chunk the first process wrote whole but did not list is listed, not computed again.
    candidates = run_featurize(InfluenceConfig.model_validate(config), Shard(0, 1), side="candidates")["candidates"]
    assert candidates["chunks_already_done"] == 1 and candidates["chunks_written"] == 12, candidates


# Run in a subprocess: writes chunk 0, and waits in the middle of it for ``go``.
SLOW_CHUNK_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from influence.store import CandidateChunks
folder, writing, go = (Path(arg) for arg in sys.argv[1:4])
real_save = np.save
def waiting_save(handle, array):
    writing.write_text("")
    while not go.exists():
        time.sleep(0.01)
    real_save(handle, array)
np.save = waiting_save
CandidateChunks(folder).write(0, [{"id": "slow"}], {1: np.ones((1, 4), dtype=np.float32)})
"""


def test_two_processes_writing_the_same_chunk_do_not_touch_each_others_temporary_files(tmp_path):
    import numpy as np

    folder, writing, go = tmp_path / "candidates", tmp_path / "writing", tmp_path / "go"
    folder.mkdir()
    slow = start_script(SLOW_CHUNK_WRITER, folder, writing, go)
    try:
        wait_for(writing, slow)
        chunks = CandidateChunks(folder)
        chunks.write(0, [{"id": "fast"}], {1: np.zeros((1, 4), dtype=np.float32)})  # while the other is mid-write
    finally:
        go.write_text("")
    _, stderr = slow.communicate(timeout=60)
    assert slow.returncode == 0, stderr.decode()[-2000:]
    assert [row["id"] for row in chunks.rows(0)] == ["fast"] and not chunks.features(0, 1).any()
    assert not list(folder.glob(".chunk-*"))  # the second writer dropped its copy


def test_features_of_another_space_are_refused(tiny_model, warmed, tmp_path, capsys):
    config = make_config(tiny_model, warmed, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["influence", "featurize", "--config", str(path)]) == 0
    capsys.readouterr()

    # The same folder, another projection seed: refused before anything is written.
    assert main(["influence", "featurize", "--config", str(path), "--set", "featurize.projection.seed=7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another feature space" in err[0] and "projection differ" in err[0], err

    # Another corpus (here: a copy with one row less) would mix rows of two corpora in one grid.
    rows = (warmed / "pool.jsonl").read_text().splitlines()
    write_jsonl(tmp_path / "smaller.jsonl", rows[:-1])
    assert main(["influence", "featurize", "--config", str(path), "--side", "candidates",
                 "--set", f"candidates.paths=[{tmp_path / 'smaller.jsonl'}]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another candidate corpus" in err[0], err

    # Targets featurized elsewhere with another seed cannot be scored against these candidates.
    other = make_config(tiny_model, warmed, tmp_path / "other")
    other["featurize"]["projection"]["seed"] = 7
    run_featurize(InfluenceConfig.model_validate(other), Shard(0, 1), side="targets")
    assert main(["influence", "select", "--config", str(path),
                 "--set", f"select.target_features={tmp_path / 'other' / 'features'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different feature spaces" in err[0] and "projection" in err[0], err


def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "candidates": {"paths": ["x.jsonl"]}, "warmup": {"output": "w"},
                                    "featurize": {"output": "f", "projection": {"kind": "dense"}},
                                    "select": {"output": "s", "top_k": 5}}))
    assert main(["influence", "featurize", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "featurize.projection.kind" in err[0], err
    assert not (tmp_path / "f").exists()


def test_the_shipped_example_config_is_valid():
    from runner.config import load_config

    config = load_config(InfluenceConfig, REPO_ROOT / "configs" / "influence-example.yaml")
    assert config.featurize.projection.dim == 8192 and config.lora.r == 128
    assert [t.name for t in config.targets] == ["gsm8k", "math"]


def test_target_sets_come_from_shipped_train_splits_or_a_jsonl_file(tmp_path):
    from data.errors import UserError
    from influence.config import TargetSet
    from influence.featurize import target_rows

    rows = target_rows(TargetSet(name="gsm8k", benchmark="gsm8k_train", limit=3))
    assert len(rows) == 3 and all(solution and question for _, solution, question in rows)
    assert rows[0][2].startswith("Natalia sold clips")
    write_jsonl(tmp_path / "t.jsonl", [{"question": "1+1?", "solution": "\\boxed{2}"}, {"question": "2+2?"}])
    with pytest.raises(UserError) as failure:
        target_rows(TargetSet(name="mine", path=str(tmp_path / "t.jsonl")))
    assert str(failure.value) == f"{tmp_path / 't.jsonl'}:2: target field 'solution' missing or empty"
    with pytest.raises(UserError, match="unknown 'gsm9k'"):
        target_rows(TargetSet(name="x", benchmark="gsm9k"))


def test_a_changed_target_set_is_refused_until_featurized_again(tiny_model, warmed, tmp_path, capsys):
    config = make_config(tiny_model, warmed, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["influence", "featurize", "--config", str(path)]) == 0
    changed = ["--set", "targets=[{name: word_problems, path: " + str(warmed / "targets.jsonl") + ", limit: 5}]"]
    capsys.readouterr()
    assert main(["influence", "select", "--config", str(path), *changed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "targets.word_problems: changed since its features were computed" in err[0], err
    assert main(["influence", "featurize", "--config", str(path), "--side", "targets", *changed]) == 0
    assert main(["influence", "select", "--config", str(path), *changed, "--set",
                 f"select.output={tmp_path / 'selection-5'}"]) == 0
    ids = json.loads((tmp_path / "features" / "targets" / "word_problems" / "ids.json").read_text())
    assert len(ids) == 5


def test_cluster_quotas_follow_each_clusters_share_of_the_pool(tiny_model, warmed, tmp_path):
    config = InfluenceConfig.model_validate(make_config(
        tiny_model, warmed, tmp_path, select__diversity={"clusters": 2, "seed": 0}, select__pool_factor=10.0))
    run_featurize(config, Shard(0, 1))
    run_select(config)
    chosen = read_selection(tmp_path / "selection")
    assert len(chosen) == 20 and len({row["id"] for row in chosen}) == 20
    # Quotas follow the clusters' shares of the pool (all 200 texts here): largest remainder.
    report = json.loads((tmp_path / "selection" / "report.json").read_text())
    diversity = report["diversity"]
    assert diversity["clusters"] == 2 and diversity["pool"] == 200 and sum(diversity["pool_sizes"]) == 200
    assert sum(diversity["selected_sizes"]) == 20
    for pool_size, taken in zip(diversity["pool_sizes"], diversity["selected_sizes"]):
        assert abs(taken - 20 * pool_size / 200) < 1, diversity
    assert [row["influence"]["rank"] for row in chosen] == list(range(1, 21))
