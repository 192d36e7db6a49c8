"""A memory cgroup per worker, so that an execution's whole memory is capped: also what RLIMIT_AS
cannot see (files in its tmpfs, pipe and socket buffers, page tables, kernel memory).

Made by the parent below its own cgroup, where a memory controller can be written to: cgroup v2
with the controller enabled for this cgroup's children, or cgroup v1's memory hierarchy (as root
in most containers). The parent opens each cgroup's ``cgroup.procs`` and the worker inherits the
descriptor: an execution's child joins by writing "0" to it, so the worker needs no view of
/sys/fs/cgroup. Where none can be made, :func:`make_worker_cgroups` raises and ``memcg`` is
reported as not in force.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

GROUP_PREFIX = "mathsynth-sandbox-"


@dataclass
class MemoryCgroup:
    path: Path
    version: int  # 1 or 2

    def oom_kills(self) -> int:
        """How many processes the kernel has killed here for want of memory, so far."""
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (self.path / events).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def open_procs(self) -> int:
        return os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)


def make_worker_cgroups(count: int, memory_bytes: int) -> list[MemoryCgroup]:
    """One cgroup per worker, each capped at ``memory_bytes``; OSError says why not."""
    parent, version = _own_memory_cgroup()
    _remove_stale_groups(parent)
    group = parent / f"{GROUP_PREFIX}{os.getpid()}-{os.urandom(3).hex()}"
    group.mkdir()
    try:
        if version == 2:  # the workers' limits need the controller enabled in the group
            (group / "cgroup.subtree_control").write_text("+memory")
        cgroups = []
        for index in range(count):
            path = group / f"worker-{index}"
            path.mkdir()
            cgroups.append(MemoryCgroup(path, version))
            if version == 2:
                (path / "memory.max").write_text(str(memory_bytes))
                _write_if_present(path / "memory.swap.max", "0")
            else:
                (path / "memory.limit_in_bytes").write_text(str(memory_bytes))
                _write_if_present(path / "memory.memsw.limit_in_bytes", str(memory_bytes))  # (with swap accounting)
        return cgroups
    except OSError:
        remove_cgroups(group)
        raise


def remove_cgroups(group: Path, wait_s: float = 2.0) -> None:
    """Remove a group made by make_worker_cgroups, waiting up to ``wait_s`` for its last
    processes to be gone."""
    for path in [p for p in group.glob("worker-*") if p.is_dir()] + [group]:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # (EBUSY: a killed process is not quite gone yet)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)


def _own_memory_cgroup() -> tuple[Path, int]:
    """The directory of this process's cgroup in a hierarchy with the memory controller."""
    memberships = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        memberships["v2" if hierarchy == "0" else tuple(controllers.split(","))] = path
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        fstype, super_options = fields[separator + 1], fields[separator + 3].split(",")
        mounts.append((fields[3], fields[4], fstype, super_options))  # (root, mount point, type, options)
    reasons = []
    for root, point, fstype, options in mounts:
        if fstype == "cgroup2" and "v2" in memberships:
            directory = _below(point, root, memberships["v2"])
            if directory is None:
                continue
            enabled = (directory / "cgroup.subtree_control").read_text().split()
            if "memory" in enabled:
                return directory, 2
            reasons.append(f"cgroup v2: the memory controller is not enabled for the children of {directory}")
    for root, point, fstype, options in mounts:
        if fstype == "cgroup" and "memory" in options:
            path = next((p for c, p in memberships.items() if c != "v2" and "memory" in c), None)
            directory = _below(point, root, path) if path is not None else None
            if directory is not None:
                if os.access(directory, os.W_OK):
                    return directory, 1
                reasons.append(f"cgroup v1: {directory} is not writable")
    raise OSError("; ".join(reasons) or "no cgroup hierarchy with the memory controller is mounted")


def _below(mount_point: str, mount_root: str, path: str) -> Path | None:
    if not (path + "/").startswith(mount_root.rstrip("/") + "/"):
        return None  # (this process's cgroup is outside what that mount shows)
    directory = Path(mount_point) / path[len(mount_root.rstrip("/")):].lstrip("/")
    return directory if directory.is_dir() else None


def _remove_stale_groups(parent: Path) -> None:
    """Groups left by sandboxes whose process died without closing them."""
    for group in parent.glob(f"{GROUP_PREFIX}*"):
        owner = group.name[len(GROUP_PREFIX):].split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            remove_cgroups(group, wait_s=0)


def _write_if_present(path: Path, value: str) -> None:
    with contextlib.suppress(FileNotFoundError, PermissionError):
        path.write_text(value)
