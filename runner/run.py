"""A shard's whole life, for every stage. Read this to know how any stage resumes.

1. The config is typed and validated before this is called; the stage checks its inputs
   (paths exist, upstream folders complete and of the right stage). Nothing is written yet, so
   a mistake is fixed by rerunning on the same folder.
2. The output folder is opened: created with its manifest, or reopened if it holds the same
   config (operational keys aside). A folder that holds records of another config is refused.
3. The shard is locked for its whole life: a second process on the same shard is refused.
4. A sealed shard is a no-op. Otherwise the stage produces what is missing: records already in
   the part (and side) files are skipped by id, a torn last line was cut off when they opened.
5. The shard is sealed: part synced, stats written, ``.done`` marker, manifest updated.
6. Once every shard is sealed, one process runs the stage's finish step (an export, a report,
   cross-shard dedup) under a lock; only then is the output ``complete``.

A kill -9 anywhere leaves a state that a rerun finishes: the lock dies with its holder, a shard
without its marker is resumed, a finish step not recorded in the manifest runs again.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from data.errors import OutputError
from data.shards import Shard
from data.storage import StageOutput
from runner.stage import ShardWork, Stage

log = logging.getLogger(__name__)


def run_stage(stage: Stage, shard: Shard, *, engine=None) -> dict[str, Any]:
    """Run (or resume, or skip) ``shard`` of ``stage``; returns the output's manifest.
    ``engine``: one already built from the stage's engine config, shared across runs (the demo);
    by default the runner builds one when the shard needs it and closes it after."""
    stage.ownership.check(shard, stage.name)
    stage.check()
    refuse_output_inside_inputs(stage)
    output = StageOutput(stage.output, stage=stage.name, config=stage.manifest_config(), inputs=stage.inputs(),
                         num_shards=shard.count, operational=stage.operational_keys(),
                         finish_step=stage.has_finish_step)
    with output.shard_lock(shard):
        if output.is_done(shard):
            log.info("%s: shard %s already complete; nothing to do", output.folder, shard)
        else:
            run_one_shard(stage, output, shard, engine)
    if stage.has_finish_step and stage.ready_to_finish(output):
        with output.finish_lock():
            if not output.is_finished():
                started = time.monotonic()
                facts = stage.finish(output)
                output.mark_finished({**facts, "finish_seconds": round(time.monotonic() - started, 3)})
    return output.refresh_manifest()


def run_one_shard(stage: Stage, output: StageOutput, shard: Shard, engine) -> None:
    work = ShardWork(stage, output, shard, engine)
    started = time.monotonic()
    sealed = False
    try:
        stats = stage.run_shard(work)
        stats = {**stats, **work.corpus_facts()}
        stats["usage"] = {**work.engine_usage(), **stats.get("usage", {})}
        stats.setdefault("seconds", time.monotonic() - started)
        work.close(sync=True)
        if stage.seals_own_shard:
            output.finish_shard(shard, work.writer, stats)
        else:
            output.record_shard_stats(shard, stats)
        sealed = True
    finally:
        if not sealed:
            work.close(sync=False)


def refuse_output_inside_inputs(stage: Stage) -> None:
    """Writing into an input folder would mix outputs into what is being read."""
    output = stage.output.resolve()
    for source in stage.inputs():
        path = Path(source)
        if any(ch in str(source) for ch in "*?[") or not path.exists():
            continue  # a glob, or a name (a benchmark): nothing on disk to write into
        path = path.resolve()
        if output == path or (path.is_dir() and path in output.parents):
            raise OutputError(f"output: {stage.output} is the input {source} or inside it; choose a folder outside it")
