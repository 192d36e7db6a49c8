"""The sandbox as its users see it: a warm pool of isolated workers, ``run`` / ``run_many``.

The parent never trusts or waits unboundedly for a worker: every read and write has a deadline
(the snippet's timeout plus a grace period) and a size cap, and a worker that misses it or dies
is killed with its whole namespace and replaced. At start it works out what can be had here
(launcher, seccomp filter, memory cgroups, and what each zygote's probe found), logs once what
is not in force, and every result says what was.

Limits known and accepted:
* Without root and without user namespaces (``none``), the snippet runs as your own uid with
  only rlimits and the seccomp filter: it can signal your other processes and read your files.
* ``unshare`` and ``none`` show the host filesystem (to the dropped uid, only what file
  permissions allow). As root the uid drop is mandatory: where the dropped uid cannot read the
  interpreter (a pyenv under /root), the sandbox refuses to start rather than run snippets as
  root; bwrap has no such problem (it makes the interpreter's parent directories traversable).
* Executions on one worker share the zygote's memory image, so a snippet could in principle
  find fragments of earlier snippets' code in freed memory; nothing else crosses executions.
* ``sandbox_uid`` .. ``sandbox_uid + workers - 1`` must belong to nobody else on the machine.
* ``preload`` must not start threads (a fork keeps only the forking thread).
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sandbox import confine, protocol, zygote
from sandbox.cgroups import MemoryCgroup, make_worker_cgroups, remove_cgroups
from sandbox.config import PACKAGES, PROTECTIONS, SandboxConfig, Status
from sandbox.launcher import LaunchPlan, interpreter_dirs, plan_launch
from sandbox.results import ExecutionResult, SandboxError
from sandbox.seccomp import compile_filter

log = logging.getLogger(__name__)

GRACE_S = 5.0  # beyond a snippet's timeout: the zygote's kill, cleanup and reply
PER_EXECUTION = ("pid", "proc", "tmp", "ipc", "seccomp", "memcg")
_WORKER_MODULES = [("protocol", protocol), ("confine", confine), ("zygote", zygote)]  # in import order
_reported: set[str] = set()  # what was logged as not in force, once per process


class _Worker:
    """One zygote and the pipes to it; used by one thread at a time (the pool's queue sees to it)."""

    def __init__(self, index: int, plan: LaunchPlan, command: list[str], code: bytes, env: dict[str, str],
                 require_uid: bool, cgroup: MemoryCgroup | None, cgroup_fd: int | None):
        self.index = index
        self.plan = plan
        self.command = command
        self.code = code
        self.env = env
        self.log_fd = _unnamed_log()  # the zygote's stderr, across restarts
        self.require_uid = require_uid
        self.cgroup = cgroup
        self.cgroup_fd = cgroup_fd
        self.process: subprocess.Popen | None = None
        self.protections: tuple[str, ...] = ()  # in force: the launcher's and what the zygote's probe found
        self.isolation = plan.kind  # the launcher and the protections, e.g. "bwrap(net,fs-ro,uid,...)"
        self.refused: dict[str, str] = {}
        self.missing_packages: tuple[str, ...] = ()  # of sandbox.config.PACKAGES, as the zygote found
        self.oom_kills = 0

    def spawn(self) -> None:
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log_fd, env=self.env, start_new_session=True, close_fds=True,
                                        pass_fds=() if self.cgroup_fd is None else (self.cgroup_fd,))
        os.set_blocking(self.process.stdin.fileno(), False)
        os.set_blocking(self.process.stdout.fileno(), False)

    def await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if not protocol.write_all(self.process.stdin.fileno(), self.code, deadline):
            self.kill()
            raise SandboxError(f"sandbox worker {self.index} did not start: {self.log_tail()}")
        message = protocol.read_message(self.process.stdout.fileno(), deadline, 1 << 16)
        if not message or not message.get("ready"):
            self.kill()
            raise SandboxError(f"sandbox worker {self.index} did not start: {self.log_tail()}")
        present = set(self.plan.protections) | {str(name) for name in message.get("protections", [])}
        self.protections = tuple(name for name in PROTECTIONS if name in present)
        self.isolation = f"{self.plan.kind}({','.join(self.protections)})" if self.protections else self.plan.kind
        self.refused = {str(k): str(v) for k, v in dict(message.get("refused", {})).items()}
        self.missing_packages = tuple(str(name) for name in message.get("missing_packages", []))
        if self.require_uid and "uid" not in self.protections:  # root must never run a snippet as root
            self.kill()
            raise SandboxError(f"sandbox worker {self.index} would run snippets without dropping root")
        if self.cgroup is not None:
            self.oom_kills = self.cgroup.oom_kills()

    def log_tail(self) -> str:
        try:
            size = os.fstat(self.log_fd).st_size
            tail = os.pread(self.log_fd, 2000, max(size - 2000, 0)).decode("utf-8", errors="replace").strip()
        except OSError:
            tail = ""
        return tail or "(no output)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def execute(self, request: dict, deadline: float, reply_limit: int) -> dict | None:
        """The zygote's reply, or None when it failed (then it has been killed)."""
        if not protocol.write_all(self.process.stdin.fileno(), protocol.frame(request), deadline):
            self.kill()
            return None
        reply = protocol.read_message(self.process.stdout.fileno(), deadline, reply_limit)
        if reply is None:
            self.kill()
        return reply

    def ran_out_of_memory(self) -> bool:
        """Whether the memory cgroup killed something since the last call."""
        if self.cgroup is None or "memcg" not in self.protections:
            return False
        before, self.oom_kills = self.oom_kills, self.cgroup.oom_kills()
        return self.oom_kills > before

    def kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:  # (once reaped, its pid and group may belong to someone else)
            # The outer bwrap/unshare dies and takes its namespace along (--die-with-parent, --kill-child).
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.process.kill()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        if self.process is None:
            return
        try:
            self.process.stdin.close()  # the zygote exits on end of input
            self.process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


def _shutdown(workers: list[_Worker], host_dirs: list[str], cgroup_group: list[Path]) -> None:
    for worker in workers:
        worker.close()
        os.close(worker.log_fd)
        if worker.cgroup_fd is not None:
            os.close(worker.cgroup_fd)
    for directory in host_dirs:
        shutil.rmtree(directory, ignore_errors=True)
    for group in cgroup_group:
        remove_cgroups(group)


class Sandbox:
    """A warm pool of isolated Python workers. ``run`` is thread-safe; see the package docstring."""

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any):
        if config is None:
            config = SandboxConfig(**overrides)
        elif overrides:
            config = config.model_copy(update=overrides)
        self.config = config
        python = config.python or sys.executable
        self._plan = plan = plan_launch(config, python)
        as_root = os.geteuid() == 0
        self._host_dirs: list[str] = []
        self._cgroup_group: list[Path] = []
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._host_dirs, self._cgroup_group)
        self._closed = False
        self._lifecycle = threading.Lock()  # no worker is (re)started once close() has begun
        not_in_force = {name: f"isolation {plan.kind}" for name in ("net", "fs-ro") if name not in plan.protections}
        wanted, seccomp_program, cgroups = self._prepare_protections(not_in_force)
        common = self._common_settings(python, wanted, seccomp_program)
        sources = [(name, Path(module.__file__).read_text()) for name, module in _WORKER_MODULES]
        command = plan.prefix + [python, "-I", "-c", protocol.BOOTSTRAP]
        for index, cgroup in enumerate(cgroups):
            cgroup_fd = cgroup.open_procs() if cgroup is not None else None
            settings = {**common, "uid": config.sandbox_uid + index if as_root else None, "cgroup_fd": cgroup_fd}
            self._workers.append(_Worker(index, plan, command, protocol.bundle(sources, settings), common["env"],
                                         require_uid=as_root, cgroup=cgroup, cgroup_fd=cgroup_fd))
        self._idle: queue.Queue[_Worker] = queue.Queue()
        try:
            for worker in self._workers:
                worker.spawn()
            for worker in self._workers:
                worker.await_ready(config.start_timeout_s)
        except BaseException:
            self.close()
            raise
        for worker in self._workers:
            self._idle.put(worker)
        first = self._workers[0]
        for name in wanted:
            if name not in first.protections:  # (only proc is skipped without a reason: it needs pid and tmp)
                not_in_force[name] = first.refused.get(name) or first.refused.get("setup") or "needs pid and tmp"
        _log_not_in_force(plan.kind, not_in_force)
        _log_missing_packages(python, first.missing_packages)

    def _prepare_protections(self, not_in_force: dict[str, str]) -> tuple[list[str], str, list]:
        """The per-execution protections to ask the workers for, the compiled seccomp filter (hex)
        and a memory cgroup per worker (None each without); what cannot be had goes to ``not_in_force``."""
        config = self.config
        wanted = [name for name in PER_EXECUTION if name not in config.without]
        seccomp_program = ""
        if "seccomp" in wanted:
            try:
                seccomp_program = compile_filter().hex()
            except OSError as error:
                not_in_force["seccomp"] = str(error)
                wanted.remove("seccomp")
        cgroups: list[MemoryCgroup | None] = [None] * config.workers
        if "memcg" in wanted:
            try:
                cgroups = list(make_worker_cgroups(config.workers, config.memory_mb << 20))
                self._cgroup_group.append(cgroups[0].path.parent)
            except OSError as error:
                not_in_force["memcg"] = str(error)
                wanted.remove("memcg")
        return wanted, seccomp_program, cgroups

    def _common_settings(self, python: str, wanted: list[str], seccomp_program: str) -> dict[str, Any]:
        """What every zygote is told (sandbox.zygote and sandbox.confine read it)."""
        config, as_root = self.config, os.geteuid() == 0
        tmp_root = "/tmp"
        if not self._plan.private_tmp:  # where executions without a fresh /tmp get their directories
            tmp_root = tempfile.mkdtemp(prefix="mathsynth-sandbox-exec-")
            os.chmod(tmp_root, 0o1733 if as_root else 0o700)
            self._host_dirs.append(tmp_root)
        if as_root:
            nproc = config.max_processes
        else:  # RLIMIT_NPROC counts every process of the caller's uid
            nproc = _count_processes_of(os.geteuid()) + 4 * config.workers + config.max_processes
        env = {
            "PATH": f"{os.path.dirname(os.path.abspath(python))}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2",  # threads would otherwise reserve 64 MiB of address space each
            "HOME": tmp_root,
        }
        return {
            "wanted": wanted,
            "seccomp": seccomp_program,
            "worker_pid_namespace": self._plan.worker_pid_namespace,
            "tmp_root": tmp_root,
            "tmp_bytes": config.tmp_mb << 20,
            "dirs_under_tmp": [d for d in interpreter_dirs(python) if d.startswith(("/tmp/", "/dev/shm/"))],
            "preload": config.preload,
            "packages": list(PACKAGES),
            "memory_bytes": config.memory_mb << 20,
            "nproc": nproc,
            "file_bytes": config.max_file_mb << 20,
            "nofile": config.max_open_files,
            "max_output": config.max_output_bytes,
            "env": env,
        }

    # -- what is in force ------------------------------------------------------------------
    @property
    def isolation(self) -> str:
        return self._workers[0].isolation

    @property
    def protections(self) -> tuple[str, ...]:
        return self._workers[0].protections

    @property
    def missing_packages(self) -> tuple[str, ...]:
        """Those of sandbox.config.PACKAGES the sandbox's interpreter cannot import."""
        return self._workers[0].missing_packages

    @property
    def network_isolated(self) -> bool:
        return "net" in self._plan.protections

    # -- running ---------------------------------------------------------------------------
    def run(self, code: str, *, stdin: str | None = None, timeout_s: float | None = None) -> ExecutionResult:
        timeout = float(timeout_s if timeout_s is not None else self.config.wall_timeout_s)
        if not timeout > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        worker = self._acquire()
        try:
            return self._run_on(worker, code, stdin, timeout)
        finally:
            self._idle.put(worker)

    def run_many(self, codes: list[str], *, timeout_s: float | None = None) -> list[ExecutionResult]:
        if not codes:
            return []
        with ThreadPoolExecutor(max_workers=min(len(codes), self.config.workers)) as pool:
            return list(pool.map(lambda code: self.run(code, timeout_s=timeout_s), codes))

    def _acquire(self) -> _Worker:
        while True:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            try:
                return self._idle.get(timeout=0.25)
            except queue.Empty:
                continue

    def _failed(self, worker: _Worker, message: str, status: Status, wall: float) -> ExecutionResult:
        return ExecutionResult("", message, status, None, wall, False, worker.isolation, worker.protections)

    def _run_on(self, worker: _Worker, code: str, stdin: str | None, timeout: float) -> ExecutionResult:
        started = time.monotonic()
        if not worker.alive():
            failure = self._restart(worker)
            if failure:
                return self._failed(worker, failure, "killed", 0.0)
        cpu = self.config.cpu_seconds or math.ceil(timeout) + 1
        request = {"code": code, "stdin": stdin, "timeout": timeout, "cpu_seconds": cpu}
        cap = self.config.max_output_bytes
        # Both streams, escaped by JSON at worst 6 bytes per byte (\\uXXXX), and the rest of the reply.
        reply = worker.execute(request, started + timeout + GRACE_S, 12 * cap + (1 << 16))
        if reply is None:
            wall = time.monotonic() - started
            failure = self._restart(worker)
            timed_out = wall >= timeout
            message = "[sandbox: the worker " + ("missed its deadline" if timed_out else "died") + " and was replaced]"
            return self._failed(worker, message + ("\n" + failure if failure else ""),
                                "timeout" if timed_out else "killed", wall)
        try:
            result = ExecutionResult(
                stdout=str(reply["stdout"]), stderr=str(reply["stderr"]), status=_valid_status(reply["status"]),
                exit_code=int(reply["exit_code"]), wall_s=float(reply["wall_s"]), truncated=bool(reply["truncated"]),
                isolation=worker.isolation, protections=worker.protections)
        except (KeyError, TypeError, ValueError):
            worker.kill()
            failure = self._restart(worker)
            message = "[sandbox: malformed reply from the worker]" + ("\n" + failure if failure else "")
            return self._failed(worker, message, "killed", time.monotonic() - started)
        if worker.ran_out_of_memory() and result.status == "killed":
            result.status = "memory"
            result.stderr += f"\n[sandbox: killed at the memory limit of {self.config.memory_mb} MiB]"
        return result

    def _restart(self, worker: _Worker) -> str:
        """Replace a dead or killed zygote; returns an error text, empty on success."""
        worker.kill()
        with self._lifecycle:
            if self._closed:  # (close() has shut the pool: spawn nothing it would not reap)
                return "[sandbox: closed]"
            try:
                worker.spawn()
                worker.await_ready(self.config.start_timeout_s)
            except (OSError, SandboxError) as error:
                return f"[sandbox: worker could not be restarted: {error}]"
        return ""

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        with self._lifecycle:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _log_not_in_force(kind: str, missing: dict[str, str]) -> None:
    """Once per process and situation: the protections this machine does not give, and why."""
    if not missing:
        return
    reasons = "; ".join(f"{name} ({why})" for name, why in missing.items())
    message = f"sandbox ({kind}): not in force here: {reasons}. See sandbox.config.PROTECTIONS."
    if message not in _reported:
        _reported.add(message)
        log.warning(message)


def _log_missing_packages(python: str, missing: tuple[str, ...]) -> None:
    """Once per process and interpreter: packages programs may use (sandbox.config.PACKAGES) that
    this interpreter lacks; programs importing them fail (code_missing_module in program checks)."""
    message = (f"sandbox: {python} cannot import {', '.join(missing)} (sandbox.config.PACKAGES): programs that "
               "import it fail; install the project's dependencies into that interpreter")
    if missing and message not in _reported:
        _reported.add(message)
        log.warning(message)


def _unnamed_log() -> int:
    """A file without a name (unlinked at once: nothing is left behind, even by a killed parent),
    opened O_APPEND so that reading it never moves where the worker writes."""
    fd, path = tempfile.mkstemp(prefix="mathsynth-sandbox-worker-", suffix=".log")
    os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd


def _count_processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _valid_status(value: object) -> Status:
    if value not in ("ok", "error", "timeout", "memory", "killed"):
        raise ValueError(f"unknown status {value!r}")
    return value  # type: ignore[return-value]
