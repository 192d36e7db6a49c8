import json

import pytest

from data.errors import ConfigError, InputError, OutputError
from data.shards import Shard, parse_shard, resolve_shard
from data.storage import (
    ShardWriter,
    StageOutput,
    iter_records,
    load_as_hf_dataset,
)

CONFIG = {"a": 1, "nested": {"b": "x"}}


def _fill(output: StageOutput, shard: Shard, ids) -> None:
    writer = output.open_shard(shard)
    for i in ids:
        writer.write({"id": f"r{i}", "value": i, "usage": {"completion_tokens": 2}})
    output.finish_shard(shard, writer, {"documents": len(ids), "seconds": 1.5})


def test_writer_skips_ids_it_holds_and_survives_reopen(tmp_path):
    path = tmp_path / "part.jsonl"
    writer = ShardWriter(path)
    assert writer.write({"id": "a"}) and writer.write({"id": "b"})
    assert not writer.write({"id": "a"})
    writer.close()
    again = ShardWriter(path)
    assert "a" in again and len(again) == 2
    assert not again.write({"id": "b"})
    again.close()
    assert [json.loads(l)["id"] for l in path.read_text().splitlines()] == ["a", "b"]


def test_torn_last_line_is_cut_off(tmp_path):
    path = tmp_path / "part.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "text": "half wr')
    writer = ShardWriter(path)
    assert writer.ids == {"a", "b"} and writer.recovered_torn_bytes > 0
    writer.write({"id": "c"})
    writer.close()
    assert [json.loads(l)["id"] for l in path.read_text().splitlines()] == ["a", "b", "c"]


def test_complete_but_unparsable_last_line_is_cut_off(tmp_path):
    path = tmp_path / "part.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n')
    assert ShardWriter(path).ids == {"a"}


def test_corrupt_line_in_the_middle_is_refused_with_file_and_line(tmp_path):
    path = tmp_path / "part.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(OutputError, match=r"part\.jsonl:2: corrupt record"):
        ShardWriter(path)


def test_manifest_folds_every_shard_and_marks_complete(tmp_path):
    folder = tmp_path / "out"
    for index in range(2):
        output = StageOutput(folder, stage="demo", config=CONFIG, inputs=[], num_shards=2)
        _fill(output, Shard(index, 2), range(index * 5, index * 5 + 5))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["shards_done"] == [0, 1]
    assert manifest["counts"] == {"documents": 10, "records": 10}
    assert manifest["usage"] == {"completion_tokens": 20}
    assert manifest["timings"]["total_shard_seconds"] == 3.0
    assert manifest["config_hash"] and manifest["versions"]["python"]
    for index in range(2):
        assert (folder / f"part-0000{index}-of-00002.done").exists()
    assert sorted(r["id"] for r in iter_records(folder)) == sorted(f"r{i}" for i in range(10))


def test_incomplete_output_is_refused_downstream(tmp_path):
    output = StageOutput(tmp_path / "out", stage="demo", config=CONFIG, num_shards=2)
    _fill(output, Shard(0, 2), range(3))
    with pytest.raises(InputError, match=r"incomplete: shards \[1\] of 2"):
        list(iter_records(tmp_path / "out"))
    assert len(list(iter_records(tmp_path / "out", require_complete=False))) == 3


def _holding_a_record(output: StageOutput) -> StageOutput:
    """A folder that holds no record yet takes any config; these tests are about one that does."""
    writer = output.open_shard(Shard(0, output.num_shards))
    writer.write({"id": "r0"})
    writer.close()
    return output


def test_a_different_config_is_refused_naming_what_changed(tmp_path):
    _holding_a_record(StageOutput(tmp_path / "out", stage="demo", config=CONFIG))
    with pytest.raises(OutputError, match=r"different config \(changed: nested\.b\)"):
        StageOutput(tmp_path / "out", stage="demo", config={"a": 1, "nested": {"b": "y"}})


def test_a_different_shard_count_is_refused(tmp_path):
    _holding_a_record(StageOutput(tmp_path / "out", stage="demo", config=CONFIG, num_shards=4))
    with pytest.raises(OutputError, match="split into 4 shards"):
        StageOutput(tmp_path / "out", stage="demo", config=CONFIG, num_shards=2)


def test_parts_load_with_hf_datasets(tmp_path):
    output = StageOutput(tmp_path / "out", stage="demo", config=CONFIG)
    _fill(output, Shard(0, 1), range(7))
    dataset = load_as_hf_dataset(tmp_path / "out")
    assert len(dataset) == 7 and set(dataset.column_names) >= {"id", "value"}


def test_shard_resolution_from_flag_and_slurm():
    assert resolve_shard("3/16") == Shard(3, 16)
    assert resolve_shard(None, {}) == Shard(0, 1)
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    assert resolve_shard(None, env) == Shard(4, 8)
    for bad in ("3", "a/b", "4/4", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_operational_keys_may_change_on_a_rerun(tmp_path):
    config = {"engine": {"model": "m", "budget": {"max_calls": 5}}, "x": 1}
    _holding_a_record(StageOutput(tmp_path / "out", stage="demo", config=config, operational=["engine.budget"]))
    raised = {"engine": {"model": "m", "budget": {"max_calls": 500}}, "x": 1}
    StageOutput(tmp_path / "out", stage="demo", config=raised, operational=["engine.budget"])
    with pytest.raises(OutputError, match=r"changed: engine\.model"):
        StageOutput(tmp_path / "out", stage="demo", config={**raised, "engine": {"model": "other"}}, operational=["engine.budget"])
