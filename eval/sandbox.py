"""A sandbox for model-written Python: tool-integrated evaluation and the synth/distill checks of
tool-variant solutions run every snippet here.

Design (chosen by measurement on the 2-core CI machine, see bench/sandbox.py):

* A warm pool of ``workers`` long-lived *zygote* processes. Each zygote is a ``python -I`` that has
  already imported what snippets commonly use (math, fractions, sympy, numpy, ...; importing sympy
  costs 0.2 s, forking a process that has it costs ~2 ms). Every execution runs in a FRESH child
  forked from a zygote, so nothing a snippet does survives it, and a snippet never waits for an
  interpreter to start (~20 ms here) or for its imports.
* Namespaces are per worker, not per execution: a new network / pid / mount namespace per snippet
  would cost a process start each time, which is the very thing the zygote avoids. The zygote lives
  inside them, so every child it forks has no network and sees the sandbox's filesystem; what one
  execution could leave behind for the next is removed after each one (below).
  Isolation, chosen once at start (``isolation="auto"`` takes the first that works):
    - ``bwrap``: bubblewrap with new net/pid/ipc/uts namespaces, a minimal read-only filesystem
      (/usr, /etc, the interpreter's prefixes; not /home, /root or the repository), a private
      tmpfs /tmp and /dev/shm, ``--die-with-parent``.
    - ``unshare``: util-linux ``unshare`` with new net/pid namespaces (and, as root, a private
      tmpfs /tmp); the host filesystem is visible.
    - ``none``: rlimits and (as root) a dedicated uid only. No network isolation.
  Every result says which was in force, e.g. ``bwrap(net,pid,fs-ro,tmp,uid)``.
* Per execution, the forked child: starts its own session (so its process group can be killed),
  closes every inherited descriptor, drops to a dedicated unprivileged uid when we are root (one
  uid per worker: RLIMIT_NPROC counts processes per real uid and does not apply to root at all,
  so this is what actually stops a fork bomb; it also makes the zygote, the parent and other
  users' processes unsignallable), applies rlimits (address space, CPU, processes, file size,
  open files, no core files), creates a private 0700 working directory which is also HOME and
  TMPDIR, replaces the environment with a minimal one, reseeds ``random``/``numpy.random`` (a
  fork would otherwise hand every snippet the same random stream) and runs the code as __main__.
* The zygote enforces the wall-clock deadline and the output cap (each stream keeps
  ``max_output_bytes``; a snippet still writing after 16 MiB in all is killed). After the child
  exits or is killed, its process group is killed, then a cleanup pass running as the snippet's
  uid kills every process left with that uid (``kill(-1)``: with a uid of its own or inside the
  worker's pid namespace it cannot reach anything else; this is what catches daemonised
  leftovers) and deletes the working directory and whatever that uid left in the private /tmp
  and /dev/shm. As root that pass is forked by a small *cleaner* process that the zygote forks
  before its preloads (forking the zygote itself for it cost 2 ms of the ~5 ms per execution).
* The parent never trusts or waits unboundedly for a zygote: messages are length-prefixed JSON
  with a size cap, every read and write has a deadline (the snippet's timeout plus a grace
  period), and a zygote that misses it or dies is killed with its whole namespace and replaced.

Statuses: ``ok`` (exit 0), ``error`` (non-zero exit: exception, SyntaxError, sys.exit(n)),
``timeout`` (wall deadline or the CPU limit), ``memory`` (MemoryError: the address-space limit),
``killed`` (ended by a signal, output flood, or a zygote that failed).

Limits known and accepted:
* Without root there is no uid to drop to: the snippet runs as the caller's uid, RLIMIT_NPROC is
  then set to the caller's process count plus ``max_processes`` (it counts all of that user's
  processes), and only a pid namespace stops ``kill -9 -1`` from reaching the caller. With
  ``isolation="none"`` and no root, a snippet can signal the caller's other processes.
* ``none`` and ``unshare`` show the host filesystem (read-only for the dropped uid only by file
  permissions). As root the uid drop is mandatory: if the dropped uid cannot read the
  interpreter there (e.g. a pyenv under /root), the sandbox refuses to start rather than run
  snippets as root (a root ``kill -9 -1`` outside a pid namespace kills every process on the
  machine; a root fork bomb is not bounded by RLIMIT_NPROC). bwrap has no such problem: it
  makes the interpreter's parent directories traversable inside the sandbox.
* Executions on one worker share the zygote's memory image, so a snippet could in principle find
  fragments of earlier snippets' code in freed memory; nothing else crosses executions.
* ``sandbox_uid`` .. ``sandbox_uid + workers - 1`` must belong to nobody else on the machine:
  the cleanup kills every process of those uids (in ``none`` mode, machine-wide).
* ``preload`` must not start threads (a fork keeps only the forking thread).

Measured here (2 cores shared with other jobs, bwrap, sympy+numpy preloaded): ~5 ms per
execution on one worker (preloading sympy and numpy costs ~2.3 ms of it per fork and saves
~0.3 s for every snippet that imports them); 160-320 executions/s with 2 workers (depending
on the neighbours), against ~45/s for one ``subprocess.run([python, "-c", code])`` per snippet
in sequence and 43-89/s from 2 threads. The fork bomb test: with
RLIMIT_NPROC=16 on the worker's own uid, the bomb stalls at 16 processes until the deadline;
as root without the uid drop (RLIMIT_NPROC ignored), it reached a load average of 160 inside an
``unshare`` pid namespace within 3 s.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import inspect
import json
import linecache
import math
import os
import queue
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "error", "timeout", "memory", "killed"]
IsolationKind = Literal["auto", "bwrap", "unshare", "none"]

DEFAULT_PRELOAD = [
    "math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "statistics",
    "random", "re", "string", "json", "heapq", "bisect", "datetime", "sympy", "numpy", "numpy.random",
]


class SandboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wall_timeout_s: float = Field(10.0, gt=0, description="wall-clock limit per execution")
    cpu_seconds: int | None = Field(None, gt=0, description="RLIMIT_CPU; default ceil(wall timeout)+1")
    memory_mb: int = Field(1024, ge=64, description="address-space limit (RLIMIT_AS)")
    max_processes: int = Field(16, ge=1, description="processes+threads the snippet may have")
    max_file_mb: int = Field(64, ge=1, description="largest file the snippet may write (RLIMIT_FSIZE)")
    max_open_files: int = Field(256, ge=16)
    max_output_bytes: int = Field(65536, ge=256, description="kept per stream; the rest is dropped and marked")
    tmp_mb: int = Field(256, ge=16, description="size of the private /tmp and /dev/shm (bwrap)")
    workers: int = Field(2, ge=1, le=256)
    isolation: IsolationKind = "auto"
    preload: list[str] = Field(default_factory=lambda: list(DEFAULT_PRELOAD))
    sandbox_uid: int = Field(2_100_000_000, ge=1, description="as root, worker i runs snippets as uid+i")
    python: str | None = Field(None, description="interpreter for the workers; default sys.executable")
    start_timeout_s: float = Field(60.0, gt=0)


@dataclass
class ExecutionResult:
    stdout: str
    stderr: str
    status: Status
    exit_code: int | None  # negative: killed by that signal; None: no exit status (worker failed)
    wall_s: float
    truncated: bool
    isolation: str


class SandboxError(RuntimeError):
    """The sandbox itself could not start or was used after close()."""


# -------------------------------------------------------------------------------------------
# The zygote. Everything between here and the parent side runs inside the worker process: it is
# sent as source (see _zygote_source), may use only the standard library and the names below.
# -------------------------------------------------------------------------------------------

_EXIT_MEMORY = 120  # the child's exit code after an uncaught MemoryError
_EXIT_SETUP = 121  # the child failed before running the snippet
_OUTPUT_KILL_BYTES = 16 << 20  # a snippet that has written this much (beyond the caps) is killed
_TRUNCATION_MARK = "\n[... output truncated by the sandbox ...]"


def _zygote_main(settings: dict) -> None:
    # The control channel moves off fds 0/1 so that nothing a module prints can corrupt it.
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    libc = ctypes.CDLL(None, use_errno=True)
    if settings["mount_private_tmp"]:
        for path in ("/tmp", "/dev/shm"):
            if os.path.isdir(path):
                opts = f"mode=1777,size={settings['tmp_bytes']}".encode()
                if libc.mount(b"tmpfs", path.encode(), b"tmpfs", 2 | 4, opts) != 0:  # nosuid|nodev
                    raise OSError(ctypes.get_errno(), f"mounting a private tmpfs on {path}")
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: a same-uid snippet cannot ptrace the zygote
    # PR_SET_CHILD_SUBREAPER: the snippets' orphans come to us to be reaped. Left to an init that
    # does not reap (some container inits don't), their zombies would count against RLIMIT_NPROC.
    libc.prctl(36, 1, 0, 0, 0)
    uid = settings["uid"]
    if uid is not None and not _uid_can_run_python(uid):
        # Never fall back to running snippets as root: `kill -9 -1` or a fork bomb from root
        # reaches every process on the machine.
        raise SystemExit(f"sandbox: uid {uid} cannot read the interpreter {sys.executable} or its standard "
                         "library (a parent directory is not world-readable?); use bwrap isolation, which "
                         "makes the parents traversable, or an interpreter outside such a directory")
    cleaner: dict = {}
    if uid is not None:
        _start_cleaner(settings, cleaner)  # before the preloads, while the process is small
    for name in settings["preload"]:
        try:
            __import__(name)
        except Exception:  # an optional module missing here is not an error
            pass
    _send(ctl_out, {"ready": True, "uid": uid is not None, "pid": os.getpid()})
    counter = 0
    while True:
        request = _receive(ctl_in)
        if request is None:  # the parent closed the pool (or died)
            os._exit(0)  # (tearing down an interpreter with sympy loaded takes 0.2 s)
        counter += 1
        _send(ctl_out, _execute(request, settings, libc, counter, cleaner))


def _receive(fd: int) -> dict | None:
    header = _read_exactly(fd, 4)
    if header is None:
        return None
    body = _read_exactly(fd, struct.unpack(">I", header)[0])
    return None if body is None else json.loads(body)


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _send(fd: int, message: dict) -> None:
    body = json.dumps(message).encode()
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


def _drop_privileges(uid: int, libc: Any) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (changing uid cleared it)


def _uid_can_run_python(uid: int) -> bool:
    """Whether the dropped uid can still read the interpreter and its standard library (lazy
    imports and subprocesses need them)."""
    def readable() -> bool:
        return os.access(sys.executable, os.X_OK) and os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK)

    return os.waitpid(_fork_as_uid(uid, readable), 0)[1] == 0


def _fork_as_uid(uid: int, work) -> int:
    """Fork a child that drops to ``uid`` and runs ``work``; it exits 0 when ``work`` returns a
    true value or None, 1 otherwise or on any exception. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            result = work()
            os._exit(0 if result is None or result else 1)
        finally:
            os._exit(1)
    return pid


def _execute(request: dict, settings: dict, libc: Any, counter: int, cleaner: dict) -> dict:
    _reap_orphans()  # the last execution's leftovers, killed at its end, are zombies by now
    # (zygotes in separate pid namespaces share one pid, so the name carries a random part)
    exec_dir = os.path.join(settings["tmp_root"], f"exec-{counter}-{os.urandom(6).hex()}")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(request, settings, libc, exec_dir, out_w, err_w)  # never returns
        except BaseException as error:  # the snippet never ran: say why
            with contextlib.suppress(OSError):
                os.write(2, f"[sandbox: setting up the execution failed: {error!r}]\n".encode())
        finally:
            os._exit(_EXIT_SETUP)
    os.close(out_w)
    os.close(err_w)
    cap = settings["max_output"]
    captured = {out_r: bytearray(), err_r: bytearray()}
    total, truncated, reason, exited = 0, False, None, False
    deadline = start + request["timeout"]
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None  # old kernel: poll for the exit instead
    watched = [out_r, err_r] + ([pidfd] if pidfd is not None else [])
    open_pipes = {out_r, err_r}
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = "timeout"
            break
        ready, _, _ = select.select(watched, [], [], remaining if pidfd is not None else min(remaining, 0.01))
        for fd in ready:
            if fd == pidfd:
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                watched.remove(fd)
                open_pipes.discard(fd)
                continue
            total += len(data)
            room = cap - len(captured[fd])
            if len(data) > room:
                truncated = True
            captured[fd] += data[:max(room, 0)]
        if total > max(2 * cap, _OUTPUT_KILL_BYTES):
            reason = "output"
            break
        if pidfd in ready or pidfd is None or not open_pipes:
            # WNOWAIT: the exited child stays a zombie, so its pid and process group cannot be
            # reused before the group is killed below.
            exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    wall = time.monotonic() - start
    _kill_group(pid)  # on a timeout, the snippet; in any case what it left in its process group
    status = os.waitpid(pid, 0)[1]
    _cleanup_after(settings, exec_dir, cleaner)
    # Every writer is dead now: what is still in the pipes arrives at once.
    drain_deadline = time.monotonic() + 0.5
    for fd in open_pipes:
        os.set_blocking(fd, False)
        while time.monotonic() < drain_deadline:
            if not select.select([fd], [], [], max(drain_deadline - time.monotonic(), 0))[0]:
                break
            data = os.read(fd, 1 << 16)
            if not data:
                break
            room = cap - len(captured[fd])
            truncated = truncated or len(data) > room
            captured[fd] += data[:max(room, 0)]
    for fd in (out_r, err_r) + ((pidfd,) if pidfd is not None else ()):
        os.close(fd)
    _reap_orphans()
    if os.WIFEXITED(status):
        exit_code = os.WEXITSTATUS(status)
    else:
        exit_code = -os.WTERMSIG(status)
    if reason == "timeout" or exit_code == -signal.SIGXCPU:
        verdict = "timeout"
    elif reason == "output" or exit_code < 0:
        verdict = "killed"
    elif exit_code == _EXIT_MEMORY:
        verdict = "memory"
    elif exit_code == 0:
        verdict = "ok"
    else:
        verdict = "error"
    texts = []
    for fd in (out_r, err_r):
        text = captured[fd].decode("utf-8", errors="replace")
        if truncated and len(captured[fd]) >= cap:
            text += _TRUNCATION_MARK
        texts.append(text)
    if reason == "timeout":
        texts[1] += f"\n[sandbox: wall-clock limit of {request['timeout']:g} s exceeded]"
    return {"stdout": texts[0], "stderr": texts[1], "status": verdict, "exit_code": exit_code,
            "wall_s": wall, "truncated": truncated}


def _kill_group(pid: int) -> None:
    for target in (-pid, pid):  # the group exists once the child has called setsid()
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _cleanup_after(settings: dict, exec_dir: str, cleaner: dict) -> None:
    """Kill whatever the snippet left running and delete what it wrote, acting as the snippet's
    uid: through the cleaner when the snippet had a uid of its own, in the zygote otherwise."""
    if settings["uid"] is None:
        _remove_leftovers(settings, exec_dir)
        return
    if not cleaner:
        _start_cleaner(settings, cleaner)
    try:
        os.write(cleaner["requests"], exec_dir.encode() + b"\n")
        if select.select([cleaner["replies"]], [], [], 3.0)[0] and os.read(cleaner["replies"], 1) == b"1":
            return
    except OSError:
        pass
    _stop_cleaner(cleaner)  # it died or hangs: the next execution gets a new one
    _reap_as_uid(settings, exec_dir)


def _start_cleaner(settings: dict, cleaner: dict) -> None:
    """Fork the cleaner: a small root process (forked before the preloads, so that forking it in
    turn is cheap) that serves "clean this directory" requests by forking a reaper with the
    snippet's uid. Forking that reaper from the zygote, with sympy and numpy loaded, took 2 ms."""
    request_r, request_w = os.pipe()  # zygote -> cleaner: a directory per line
    reply_r, reply_w = os.pipe()  # cleaner -> zygote: one byte per directory done
    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            keep = sorted((request_r, reply_w))
            os.closerange(3, keep[0])  # above all the control channel: the parent must see EOF when the zygote dies
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, 1 << 20)
            ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the zygote
            if os.getppid() != zygote:
                os._exit(0)
            pending = b""
            while True:
                while b"\n" not in pending:
                    chunk = os.read(request_r, 1 << 12)
                    if not chunk:
                        os._exit(0)
                    pending += chunk
                line, pending = pending.split(b"\n", 1)
                _reap_as_uid(settings, line.decode())
                os.write(reply_w, b"1")
        finally:
            os._exit(0)
    os.close(request_r)
    os.close(reply_w)
    cleaner.update(pid=pid, requests=request_w, replies=reply_r)


def _stop_cleaner(cleaner: dict) -> None:
    if not cleaner:
        return
    _kill_group(cleaner["pid"])
    for fd in (cleaner["requests"], cleaner["replies"]):
        os.close(fd)
    try:
        os.waitpid(cleaner["pid"], 0)
    except ChildProcessError:  # (already reaped as an orphan)
        pass
    cleaner.clear()


def _reap_as_uid(settings: dict, exec_dir: str) -> None:
    pid = _fork_as_uid(settings["uid"], lambda: _remove_leftovers(settings, exec_dir))
    deadline = time.monotonic() + 2.0
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:  # a snippet stopped or starved it: no more waiting
            _kill_group(pid)
            os.waitpid(pid, 0)
            break
        time.sleep(0.0002)


def _remove_leftovers(settings: dict, exec_dir: str) -> None:
    if settings["uid"] is not None or settings["pid_namespace"]:
        # Everything this uid may signal: the snippet's processes, however they daemonised.
        # Safe only because the uid is the snippet's own or we are inside a private pid
        # namespace; kill(-1) never signals the caller or the namespace's init.
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(exec_dir, ignore_errors=True)
    if settings["private_tmp"]:
        me = os.geteuid()
        for scratch in ("/tmp", "/dev/shm"):
            try:
                entries = list(os.scandir(scratch))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_uid != me:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
                except OSError:
                    pass


def _reap_orphans() -> None:
    # A subreaper (and pid 1 of its namespace under unshare), the zygote inherits the snippets' orphans.
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _child(request: dict, settings: dict, libc: Any, exec_dir: str, out_w: int, err_w: int) -> None:
    os.setsid()
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    stdin_fd = os.open(os.devnull, os.O_RDONLY)
    if request.get("stdin"):
        stdin_fd = os.memfd_create("stdin")
        os.write(stdin_fd, request["stdin"].encode())
        os.lseek(stdin_fd, 0, os.SEEK_SET)
    os.dup2(stdin_fd, 0)
    os.closerange(3, 1 << 20)  # the control channel and every other inherited descriptor
    if settings["uid"] is not None:
        _drop_privileges(settings["uid"], libc)
    libc.prctl(4, 1, 0, 0, 0)  # dumpable again: the snippet may inspect its own /proc entries
    limits = {
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_AS: settings["memory_bytes"],
        resource.RLIMIT_NPROC: settings["nproc"],
        resource.RLIMIT_FSIZE: settings["file_bytes"],
        resource.RLIMIT_NOFILE: settings["nofile"],
    }
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))
    cpu = request["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    os.umask(0o077)
    os.mkdir(exec_dir, 0o700)
    os.chdir(exec_dir)
    os.environ.clear()
    os.environ.update(settings["env"], HOME=exec_dir, TMPDIR=exec_dir)
    tempfile.tempdir = None
    sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    sys.argv = ["<snippet>"]
    if "random" in sys.modules:
        sys.modules["random"].seed()
    if "numpy.random" in sys.modules:  # (numpy imports it lazily: touching it unloaded costs 17 ms)
        sys.modules["numpy.random"].seed()
    code = request["code"]
    linecache.cache["<snippet>"] = (len(code), None, code.splitlines(True), "<snippet>")
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    rc = 0
    try:
        exec(compile(code, "<snippet>", "exec"), main.__dict__)
    except SystemExit as stop:
        if stop.code is None:
            rc = 0
        elif isinstance(stop.code, int):
            rc = stop.code & 0xFF
        else:
            print(stop.code, file=sys.stderr)
            rc = 1
    except MemoryError as error:
        rc = _EXIT_MEMORY
        _print_exception(error)
    except BaseException as error:
        rc = 1
        _print_exception(error)
    with contextlib.suppress(BaseException):  # what a normal interpreter exit would do
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()  # join the snippet's non-daemon threads
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(rc)


def _print_exception(error: BaseException) -> None:
    try:
        tb = error.__traceback__
        if tb is not None and tb.tb_frame.f_code.co_filename != "<snippet>":
            tb = tb.tb_next  # hide the sandbox's own frame, like `python -c` shows only the user's
        traceback.print_exception(type(error), error, tb)
    except BaseException:
        with contextlib.suppress(OSError):
            os.write(2, f"{type(error).__name__}\n".encode())


_ZYGOTE_FUNCTIONS = (
    _zygote_main, _receive, _read_exactly, _send, _drop_privileges, _uid_can_run_python, _fork_as_uid, _execute,
    _kill_group, _cleanup_after, _start_cleaner, _stop_cleaner, _reap_as_uid, _remove_leftovers, _reap_orphans,
    _child, _print_exception,
)


# What the worker's command line runs: read the zygote's source (with its settings) from stdin.
# Nothing else is sent before the zygote says it is ready, so reading ahead cannot swallow a request.
_BOOTSTRAP = (
    "import os\n"
    "d = b''\n"
    "while len(d) < 10 or len(d) < 10 + int(d[:10]):\n"
    "    c = os.read(0, 1 << 16)\n"
    "    if not c:\n"
    "        raise SystemExit('sandbox zygote: no source on stdin')\n"
    "    d += c\n"
    "exec(compile(d[10:], '<sandbox-zygote>', 'exec'))\n"
)


def _zygote_source(settings: dict) -> bytes:
    header = (
        "from __future__ import annotations\n"
        "import atexit, contextlib, ctypes, json, linecache, os, resource, select, shutil, signal, struct, sys, "
        "tempfile, time, traceback, types\n"
        "from typing import Any\n"
        f"_EXIT_MEMORY = {_EXIT_MEMORY}\n_EXIT_SETUP = {_EXIT_SETUP}\n"
        f"_OUTPUT_KILL_BYTES = {_OUTPUT_KILL_BYTES}\n_TRUNCATION_MARK = {_TRUNCATION_MARK!r}\n"
        f"_SETTINGS = {json.dumps(settings)!r}\n"
    )
    body = "\n\n".join(inspect.getsource(fn) for fn in _ZYGOTE_FUNCTIONS)
    source = (header + "\n" + body + "\n_zygote_main(json.loads(_SETTINGS))\n").encode()
    return b"%010d" % len(source) + source


# -------------------------------------------------------------------------------------------
# The parent side: choosing the isolation, starting and talking to workers.
# -------------------------------------------------------------------------------------------

_GRACE_S = 5.0  # beyond a snippet's timeout: the zygote's kill, cleanup and reply


@dataclass
class _Plan:
    kind: str  # bwrap | unshare | none
    prefix: list[str]  # the command that wraps `python -I -c ...`
    features: list[str]  # what is in force besides the uid drop
    pid_namespace: bool = False
    private_tmp: bool = False  # /tmp and /dev/shm belong to this worker alone
    mount_private_tmp: bool = False  # ... once the zygote has mounted them (unshare as root)
    tmp_root: str = ""  # where executions get their directories; "" = a new host directory


_PROBE_CACHE: dict[tuple, bool] = {}


def _probe(command: list[str]) -> bool:
    key = tuple(command)
    if key not in _PROBE_CACHE:
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                                  env={"PATH": os.defpath}, check=False)
            _PROBE_CACHE[key] = done.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _PROBE_CACHE[key] = False
    return _PROBE_CACHE[key]


def _interpreter_dirs(python: str) -> list[str]:
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        dirs = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    else:
        query = "import sys; print(sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)"
        out = subprocess.run([python, "-I", "-c", query], capture_output=True, text=True, timeout=30, check=True).stdout
        dirs = out.split()
    dirs += [os.path.dirname(os.path.abspath(python)), os.path.dirname(os.path.realpath(python))]
    dirs = sorted({os.path.realpath(d) for d in dirs} | {os.path.abspath(d) for d in dirs})
    kept: list[str] = []
    for d in dirs:  # sorted: a parent comes before its children
        if not any(d == k or d.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(d)
    return kept


def _bwrap_prefix(python: str, tmp_bytes: int, as_root: bool) -> list[str] | None:
    help_text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, check=False).stdout
    if "--perms" not in help_text:  # (bwrap < 0.5: no way to make /tmp writable for the snippet uid)
        return None
    cmd = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if as_root:  # keep just what the zygote needs to drop to the snippet uid and kill it
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                "--cap-add", "CAP_KILL"]
    system = ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    for path in system:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    # The private /tmp first: an interpreter bound below it (a checkout in /tmp) must be mounted
    # on top of the tmpfs, not hidden under it.
    size = ["--size", str(tmp_bytes)] if "--size" in help_text else []  # (bwrap >= 0.7)
    cmd += size + ["--perms", "1777", "--tmpfs", "/tmp", "--dev", "/dev"]
    cmd += size + ["--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc"]
    made: set[str] = {"/tmp", "/dev", "/proc"}
    for directory in _interpreter_dirs(python):
        if any(directory == s or directory.startswith(s + "/") for s in system):
            continue
        parts = directory.strip("/").split("/")
        for i in range(1, len(parts)):  # bwrap would create the parents 0700: unreadable by the uid
            parent = "/" + "/".join(parts[:i])
            if parent not in made:
                made.add(parent)
                cmd += ["--perms", "0755", "--dir", parent]
        cmd += ["--ro-bind", directory, directory]
    return cmd + ["--chdir", "/tmp", "--"]


def _unshare_prefix(as_root: bool) -> list[str]:
    cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts"]
    if not as_root:
        help_text = subprocess.run(["unshare", "--help"], capture_output=True, text=True, check=False).stdout
        cmd[1:1] = ["--user", "--map-current-user" if "--map-current-user" in help_text else "--map-root-user"]
    return cmd + ["--"]


def _plan(config: SandboxConfig, python: str) -> _Plan:
    as_root = os.geteuid() == 0
    tmp_bytes = config.tmp_mb << 20
    wanted = ["bwrap", "unshare", "none"] if config.isolation == "auto" else [config.isolation]
    tried = []
    for kind in wanted:
        if kind == "bwrap" and shutil.which("bwrap"):
            prefix = _bwrap_prefix(python, tmp_bytes, as_root)
            if prefix and _probe(prefix + [python, "-I", "-c", "pass"]):
                return _Plan("bwrap", prefix, ["net", "pid", "fs-ro", "tmp"], pid_namespace=True, private_tmp=True,
                             tmp_root="/tmp")
        elif kind == "unshare" and shutil.which("unshare"):
            prefix = _unshare_prefix(as_root)
            if _probe(prefix + [python, "-I", "-c", "pass"]):
                if as_root:  # the zygote mounts a private /tmp in its mount namespace
                    return _Plan("unshare", prefix, ["net", "pid", "tmp"], pid_namespace=True, private_tmp=True,
                                 mount_private_tmp=True, tmp_root="/tmp")
                return _Plan("unshare", prefix, ["net", "pid"], pid_namespace=True)
        elif kind == "none":
            if not as_root:
                warnings.warn("sandbox isolation 'none' without root: snippets run as your own uid and can signal "
                              "your other processes (kill -9 -1); install bubblewrap", RuntimeWarning, stacklevel=3)
            return _Plan("none", [], [])
        tried.append(kind)
    raise SandboxError(f"sandbox isolation {config.isolation!r} is not available here (tried: {', '.join(tried)}); "
                       "install bubblewrap (apt-get install bubblewrap) or set isolation to 'none'")


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


def _write_all(fd: int, data: bytes, deadline: float) -> bool:
    while data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
            return False
        try:
            data = data[os.write(fd, data):]
        except (BrokenPipeError, BlockingIOError, OSError):
            return False
    return True


def _read_message(fd: int, deadline: float, limit: int) -> dict | None:
    buffer = bytearray()
    need = 4
    length = None
    while len(buffer) < need:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        try:
            chunk = os.read(fd, need - len(buffer))  # never past this message
        except BlockingIOError:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        buffer += chunk
        if length is None and len(buffer) >= 4:
            length = struct.unpack(">I", buffer[:4])[0]
            if length > limit:
                return None
            need = 4 + length
    try:
        message = json.loads(bytes(buffer[4:need]))
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


class _Worker:
    """One zygote and the pipes to it; used by one thread at a time (the pool's queue sees to it)."""

    def __init__(self, index: int, command: list[str], source: bytes, env: dict[str, str], log_path: str,
                 require_uid: bool):
        self.index = index
        self.require_uid = require_uid
        self.command = command
        self.source = source
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.has_uid = False

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            env=self.env, start_new_session=True, close_fds=True)
        os.set_blocking(self.process.stdin.fileno(), False)
        os.set_blocking(self.process.stdout.fileno(), False)

    def await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if not _write_all(self.process.stdin.fileno(), self.source, deadline):
            self.kill()
            raise SandboxError(f"sandbox worker {self.index} did not start: {self.log_tail()}")
        message = _read_message(self.process.stdout.fileno(), deadline, 1 << 16)
        if not message or not message.get("ready"):
            self.kill()
            raise SandboxError(f"sandbox worker {self.index} did not start: {self.log_tail()}")
        self.has_uid = message.get("uid") is True
        if self.require_uid and not self.has_uid:  # root must never run a snippet as root
            self.kill()
            raise SandboxError(f"sandbox worker {self.index} would run snippets without dropping root")

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(log.tell() - 2000, 0))
                tail = log.read().decode("utf-8", errors="replace").strip()
        except OSError:
            tail = ""
        return tail or "(no output)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def execute(self, request: dict, deadline: float, reply_limit: int) -> dict | None:
        """The zygote's reply, or None when it failed (then it has been killed)."""
        body = json.dumps(request).encode()
        if not _write_all(self.process.stdin.fileno(), struct.pack(">I", len(body)) + body, deadline):
            self.kill()
            return None
        reply = _read_message(self.process.stdout.fileno(), deadline, reply_limit)
        if reply is None:
            self.kill()
        return reply

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


def _shutdown(workers: list[_Worker], host_dirs: list[str]) -> None:
    for worker in workers:
        worker.close()
    for directory in host_dirs:
        shutil.rmtree(directory, ignore_errors=True)


class Sandbox:
    """A warm pool of isolated Python workers. ``run`` is thread-safe; see the module docstring."""

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any):
        if config is None:
            config = SandboxConfig(**overrides)
        elif overrides:
            config = config.model_copy(update=overrides)
        self.config = config
        python = config.python or sys.executable
        plan = _plan(config, python)
        as_root = os.geteuid() == 0
        self._host_dirs: list[str] = [tempfile.mkdtemp(prefix="mathsynth-sandbox-")]  # worker logs
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._host_dirs)
        self._closed = False
        self._lifecycle = threading.Lock()  # no worker is (re)started once close() has begun
        tmp_root = plan.tmp_root
        if not tmp_root:  # no private /tmp: a host directory only the snippet uids may enter
            tmp_root = tempfile.mkdtemp(prefix="mathsynth-sandbox-exec-")
            os.chmod(tmp_root, 0o1733 if as_root else 0o700)
            self._host_dirs.append(tmp_root)
        self._plan = plan
        if as_root:
            nproc = config.max_processes
        else:  # RLIMIT_NPROC counts every process of the caller's uid
            nproc = _count_processes_of(os.geteuid()) + 4 * config.workers + config.max_processes
        env = {
            "PATH": f"{os.path.dirname(os.path.abspath(python))}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2",  # threads would otherwise reserve 64 MiB of address space each
        }
        for index in range(config.workers):
            settings = {
                "uid": config.sandbox_uid + index if as_root else None,
                "pid_namespace": plan.pid_namespace,
                "mount_private_tmp": plan.mount_private_tmp,
                "private_tmp": plan.private_tmp,
                "tmp_root": tmp_root,
                "tmp_bytes": config.tmp_mb << 20,
                "preload": config.preload,
                "memory_bytes": config.memory_mb << 20,
                "nproc": nproc,
                "file_bytes": config.max_file_mb << 20,
                "nofile": config.max_open_files,
                "max_output": config.max_output_bytes,
                "env": {**env, "HOME": tmp_root},
            }
            command = plan.prefix + [python, "-I", "-c", _BOOTSTRAP]
            log_path = os.path.join(self._host_dirs[0], f"worker-{index}.log")
            self._workers.append(_Worker(index, command, _zygote_source(settings), {**env, "HOME": tmp_root}, log_path,
                                         require_uid=as_root))
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

    # -- what is in force ------------------------------------------------------------------
    def _isolation_of(self, worker: _Worker) -> str:
        features = self._plan.features + (["uid"] if worker.has_uid else [])
        return f"{self._plan.kind}({','.join(features)})" if features else self._plan.kind

    @property
    def isolation(self) -> str:
        return self._isolation_of(self._workers[0])

    @property
    def network_isolated(self) -> bool:
        return "net" in self._plan.features

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

    def _run_on(self, worker: _Worker, code: str, stdin: str | None, timeout: float) -> ExecutionResult:
        started = time.monotonic()
        if not worker.alive():
            failure = self._restart(worker)
            if failure:
                return ExecutionResult("", failure, "killed", None, 0.0, False, self._isolation_of(worker))
        cpu = self.config.cpu_seconds or math.ceil(timeout) + 1
        request = {"code": code, "stdin": stdin, "timeout": timeout, "cpu_seconds": cpu}
        cap = self.config.max_output_bytes
        # Both streams, escaped by JSON at worst 6 bytes per byte (\\uXXXX), and the rest of the reply.
        reply = worker.execute(request, started + timeout + _GRACE_S, 12 * cap + (1 << 16))
        isolation = self._isolation_of(worker)
        if reply is None:
            wall = time.monotonic() - started
            failure = self._restart(worker)
            timed_out = wall >= timeout
            message = "[sandbox: the worker " + ("missed its deadline" if timed_out else "died") + " and was replaced]"
            if failure:
                message += "\n" + failure
            return ExecutionResult("", message, "timeout" if timed_out else "killed", None, wall, False, isolation)
        try:
            return ExecutionResult(
                stdout=str(reply["stdout"]), stderr=str(reply["stderr"]), status=_valid_status(reply["status"]),
                exit_code=int(reply["exit_code"]), wall_s=float(reply["wall_s"]), truncated=bool(reply["truncated"]),
                isolation=isolation)
        except (KeyError, TypeError, ValueError):
            worker.kill()
            failure = self._restart(worker)
            message = "[sandbox: malformed reply from the worker]" + ("\n" + failure if failure else "")
            return ExecutionResult("", message, "killed", None, time.monotonic() - started, False, isolation)

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


def _valid_status(value: object) -> Status:
    if value not in ("ok", "error", "timeout", "memory", "killed"):
        raise ValueError(f"unknown status {value!r}")
    return value  # type: ignore[return-value]
