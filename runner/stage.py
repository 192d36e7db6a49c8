"""What a stage declares; :func:`runner.run.run_stage` does everything else.

A stage is a small object around its typed config. It says where its output goes, which inputs
it reads (recorded in the manifest; the output may not be inside one), how shards own work
(``ownership``), how a shard's results become records (``run_shard``, writing through
:class:`ShardWork`), whether shards seal themselves, what runs once every shard is sealed
(``finish``), and how to say what a finished output holds in one line (``summary``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from data.config_base import operational_paths
from data.corpus import CorpusInput, CorpusStats, resolve_sources
from data.progress import progress_bar
from data.shards import Shard
from data.storage import ShardWriter, StageOutput, part_stem
from runner.ownership import ByCorpusRecord, Ownership

log = logging.getLogger(__name__)


class Stage:
    #: recorded in manifests; ``mathsynth status`` shows it
    name: ClassVar[str]
    ownership: ClassVar[Ownership]
    #: False when a shard's part is written by the finish step (synth filter dedups across all
    #: shards first): the shard's own run only prepares its work.
    seals_own_shard: ClassVar[bool] = True
    #: True when ``finish`` has work to do once every shard is sealed
    has_finish_step: ClassVar[bool] = False

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    # -- what the runner asks -------------------------------------------------------------
    @property
    def output(self) -> Path:
        return Path(self.config.output)

    def inputs(self) -> list[str]:
        """Files and folders read, recorded in the manifest by identity (size, config hash)."""
        return []

    def check(self) -> None:
        """Everything that can be checked before a file is written: input paths exist, input
        folders are of the right stage and complete. Raise a UserError."""

    def engine_config(self) -> BaseModel | None:
        """The engine a shard needs (built by the runner after the shard is locked), or None."""
        return None

    def manifest_config(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def operational_keys(self) -> list[str]:
        return operational_paths(self.config)

    def run_shard(self, work: "ShardWork") -> dict[str, Any]:
        """Produce what is missing of this shard; return its stats for the manifest."""
        raise NotImplementedError

    def ready_to_finish(self, output: StageOutput) -> bool:
        return output.all_shards_sealed()

    def finish(self, output: StageOutput) -> dict[str, Any]:
        """Once every shard is sealed, in one process: facts for the manifest."""
        return {}

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        return f"{counts.get('records', 0)} records"


class CorpusStage(Stage):
    """A stage over a corpus (``config.input``), documents owned by record, with one engine
    (``config.<engine_key>``): generate, distill, synth generate."""

    ownership = ByCorpusRecord()
    engine_key: ClassVar[str] = "engine"

    def inputs(self) -> list[str]:
        return list(self.config.input.paths)

    def check(self) -> None:
        resolve_sources(self.config.input.paths)  # a missing path fails before the folder exists

    def engine_config(self) -> BaseModel:
        return getattr(self.config, self.engine_key)


class ShardWork:
    """One shard's open files and engine, for ``Stage.run_shard``; the runner closes them."""

    def __init__(self, stage: Stage, output: StageOutput, shard: Shard, engine=None) -> None:
        self.stage, self.output, self.shard = stage, output, shard
        self._engine, self._owns_engine = engine, engine is None
        self._writer: ShardWriter | None = None
        self._sides: dict[str, ShardWriter] = {}
        self.corpus_stats: CorpusStats | None = None

    @property
    def writer(self) -> ShardWriter:
        """The shard's part file, opened on first use (resumes: the ids it holds are skipped)."""
        if self._writer is None:
            self._writer = self.output.open_shard(self.shard)
        return self._writer

    def side(self, kind: str) -> ShardWriter:
        """An append-only file beside the part (``rejects-00000-of-00004.jsonl``), resumable like it."""
        if kind not in self._sides:
            suffix = part_stem(self.shard)[len("part-"):]
            self._sides[kind] = ShardWriter(self.output.folder / f"{kind}-{suffix}.jsonl")
        return self._sides[kind]

    @property
    def engine(self):
        if self._engine is None:
            from llm.factory import make_engine

            self._engine = make_engine(self.stage.engine_config())
        return self._engine

    def documents(self, corpus: CorpusInput) -> Any:
        """This shard's documents of a corpus, counted so an empty input is reported."""
        ownership = self.stage.ownership
        assert isinstance(ownership, ByCorpusRecord), f"{self.stage.name} does not own work by record"
        self.corpus_stats = CorpusStats()
        return ownership.documents(corpus, self.shard, self.corpus_stats)

    def progress(self, unit: str, total: int | None = None):
        return progress_bar(f"{self.stage.name} {self.shard}", total=total, unit=unit)

    def engine_usage(self) -> dict[str, Any]:
        return self._engine.run_usage() if self._engine is not None else {}

    def corpus_facts(self) -> dict[str, Any]:
        """What the corpus reader skipped, and a warning when this shard got no document."""
        stats = self.corpus_stats
        if stats is None:
            return {}
        facts: dict[str, Any] = {"corpus_skipped": dict(stats.skipped)}
        if stats.skipped:
            log.warning("shard %s: %s", self.shard, stats.summary())
        if stats.yielded == 0:
            warning = (f"shard {self.shard}: the input gave no document ({stats.files} files, {stats.read} rows read, "
                       f"{stats.skipped_total} skipped); this shard is sealed empty")
            log.warning("%s: %s", self.output.folder, warning)
            facts["warnings"] = [warning]
        return facts

    def close(self, *, sync: bool) -> None:
        for writer in self._sides.values():
            writer.close(sync=sync)
        if self._writer is not None and not sync:
            self._writer.close()  # a sealed part is synced by StageOutput.finish_shard
        if self._owns_engine and self._engine is not None:
            self._engine.close()
            self._engine = None
