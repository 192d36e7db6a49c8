"""The worker process: a warm *zygote* that runs each snippet in a fresh child. Runs inside the
worker (standard library only: it arrives as source, see sandbox.protocol).

Why a zygote: starting an interpreter costs ~20 ms and importing sympy 0.2 s, forking a process
that has both costs a few ms. At start the zygote probes which per-execution protections this
machine allows (sandbox.confine), imports the preloads and says it is ready. Then, per request:
a fresh pid namespace, a forked child that shuts itself in and runs the code as ``__main__``,
the output read under a wall-clock deadline and a size cap, and at the end the namespace is
killed whole, so nothing of the execution is left for the next one.

Statuses: ``ok`` (exit 0), ``error`` (non-zero exit: exception, SyntaxError, sys.exit(n), or the
setup failed), ``timeout`` (wall deadline or the CPU limit), ``memory`` (MemoryError: the
address-space limit), ``killed`` (ended by a signal or an output flood).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib.util
import json
import linecache
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types

from sandbox import confine, protocol

EXIT_MEMORY = 120  # the child's exit code after an uncaught MemoryError
EXIT_SETUP = 121  # the child failed before running the snippet
OUTPUT_KILL_BYTES = 16 << 20  # a snippet that has written this much (beyond the caps) is killed
TRUNCATION_MARK = "\n[... output truncated by the sandbox ...]"
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25

_libc = ctypes.CDLL(None, use_errno=True)


def main(settings: dict) -> None:
    # The control channel moves off fds 0/1 so that nothing a module prints can corrupt it.
    ctl_in, ctl_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # a snippet with our uid (user namespaces) cannot ptrace us
    # Without a pid namespace per execution, orphans come to us to be reaped; left to an init
    # that does not reap (some container inits don't), their zombies would count against RLIMIT_NPROC.
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    namespaces = confine.PidNamespaces() if "pid" in settings["wanted"] else None
    protections, refused = _probe(settings, namespaces)  # before the preloads: forking is cheap now
    if settings["uid"] is not None and "uid" not in protections:
        # Never run snippets as root: `kill -9 -1` or a fork bomb from root reaches every process.
        raise SystemExit(f"sandbox: cannot run snippets as uid {settings['uid']}: {refused.get('uid') or refused.get('setup')}; use bwrap "
                         "isolation, which makes the interpreter's parent directories traversable, or an "
                         "interpreter outside such a directory")
    for name in settings["preload"]:
        try:
            __import__(name)
        except Exception:  # an optional module missing here is not an error
            pass
    # The packages programs may import (sandbox.config.PACKAGES): found or not, without importing them.
    missing = [name for name in settings["packages"] if importlib.util.find_spec(name) is None]
    gc.freeze()  # a snippet's collections skip the preloads' objects instead of touching (copying) their pages
    _use_huge_pages()
    protocol.send(ctl_out, {"ready": True, "protections": protections, "refused": refused, "pid": os.getpid(),
                            "missing_packages": missing})
    counter = 0
    while True:
        request = protocol.receive(ctl_in)
        if request is None:  # the parent closed the pool (or died)
            os._exit(0)  # (tearing down an interpreter with sympy loaded takes 0.2 s)
        counter += 1
        protocol.send(ctl_out, _execute(request, settings, protections, namespaces, counter))


def _probe(settings: dict, namespaces: confine.PidNamespaces | None) -> tuple[list[str], dict[str, str]]:
    """The wanted protections this machine allows, tried once in a throwaway child exactly as an
    execution applies them; and why each refused one was refused."""
    refused: dict[str, str] = {}
    init = None
    if namespaces is not None:
        try:
            init = namespaces.start()
        except OSError as error:
            refused["pid"] = str(error)
    in_child = set(settings["wanted"]) - {"pid"} - (set() if init is not None else {"proc"})
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        report: dict = {"applied": [], "refused": {"setup": "the probe failed"}}
        try:
            applied, failed = confine.confine(settings, in_child, 1, probing=True)
            if "uid" in applied and not _can_run_python():
                applied.remove("uid")
                failed["uid"] = f"it cannot read the interpreter {sys.executable} or its standard library"
            report = {"applied": applied, "refused": failed}
        except BaseException as error:
            report["refused"] = {"setup": repr(error)}
        finally:
            os.write(report_w, json.dumps(report).encode())
            os._exit(0)
    if init is not None:
        namespaces.leave()
    os.close(report_w)
    data = b""
    while chunk := os.read(report_r, 1 << 16):
        data += chunk
    os.close(report_r)
    os.waitpid(pid, 0)
    if init is not None:
        os.kill(init, signal.SIGKILL)
        os.waitpid(init, 0)
    report = json.loads(data)
    return (["pid"] if init is not None else []) + report["applied"], {**refused, **report["refused"]}


def _use_huge_pages() -> None:
    """Back the zygote's heap with 2 MiB pages where the kernel can (MADV_COLLAPSE, Linux 6.1+):
    a fork copies, and an exit tears down, one entry per 2 MiB instead of 512 (with sympy and
    numpy loaded, 20-30% of a fork and an exit). Best effort: an older kernel just says no."""
    madvise = _libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    huge = 2 << 20
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for fields in regions:
        if not fields[1].startswith("rw") or (len(fields) > 5 and fields[5] != "[heap]"):
            continue  # only anonymous writable memory: the heap and the allocator's arenas
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        start = (start + huge - 1) & ~(huge - 1)
        end &= ~(huge - 1)
        if end > start:
            madvise(start, end - start, MADV_HUGEPAGE)
            madvise(start, end - start, MADV_COLLAPSE)


def _can_run_python() -> bool:
    """Whether the dropped uid can still read the interpreter and its standard library (lazy
    imports and subprocesses need them)."""
    return os.access(sys.executable, os.X_OK) and os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK)


def _execute(request: dict, settings: dict, protections: list[str], namespaces: confine.PidNamespaces | None,
             counter: int) -> dict:
    _reap_orphans()
    init = namespaces.start() if "pid" in protections else None
    if "tmp" in protections:
        exec_dir = "/tmp/snippet"  # (a fresh tmpfs)
    else:  # (zygotes in separate pid namespaces share one pid, so the name carries a random part)
        exec_dir = os.path.join(settings["tmp_root"], f"exec-{counter}-{os.urandom(6).hex()}")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(request, settings, protections, exec_dir, out_w, err_w)  # never returns
        except BaseException as error:  # the snippet never ran: say why
            with contextlib.suppress(OSError):
                os.write(2, f"[sandbox: setting up the execution failed: {error!r}]\n".encode())
        finally:
            os._exit(EXIT_SETUP)
    if init is not None:
        namespaces.leave()
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
        if total > max(2 * cap, OUTPUT_KILL_BYTES):
            reason = "output"
            break
        if pidfd in ready or pidfd is None or not open_pipes:
            # WNOWAIT: the exited child stays a zombie, so its pid and process group cannot be
            # reused before they are killed below.
            exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    wall = time.monotonic() - start
    _end_execution(pid, init, settings)
    status = os.waitpid(pid, 0)[1]
    if init is not None:
        os.waitpid(init, 0)  # returns once every process of the execution is gone (kernel/pid_namespace.c)
    if "tmp" not in protections:
        shutil.rmtree(exec_dir, ignore_errors=True)
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
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    texts = []
    for fd in (out_r, err_r):
        text = captured[fd].decode("utf-8", errors="replace")
        if truncated and len(captured[fd]) >= cap:
            text += TRUNCATION_MARK
        texts.append(text)
    if reason == "timeout":
        texts[1] += f"\n[sandbox: wall-clock limit of {request['timeout']:g} s exceeded]"
    return {"stdout": texts[0], "stderr": texts[1], "status": _verdict(reason, exit_code), "exit_code": exit_code,
            "wall_s": wall, "truncated": truncated}


def _verdict(reason: str | None, exit_code: int) -> str:
    if reason == "timeout" or exit_code == -signal.SIGXCPU:
        return "timeout"
    if reason == "output" or exit_code < 0:
        return "killed"
    if exit_code == EXIT_MEMORY:
        return "memory"
    return "ok" if exit_code == 0 else "error"


def _end_execution(pid: int, init: int | None, settings: dict) -> None:
    """Kill whatever of the execution is still running."""
    if init is not None:
        os.kill(init, signal.SIGKILL)  # the kernel kills the rest of its namespace
        return
    for target in (-pid, pid):  # the snippet's process group (it exists once the child called setsid())
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)
    if settings["worker_pid_namespace"]:
        # Everything else we may signal in the worker's namespace: only the snippet's leftovers
        # (kill(-1) spares us and the namespace's init).
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)


def _reap_orphans() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _child(request: dict, settings: dict, protections: list[str], exec_dir: str, out_w: int, err_w: int) -> None:
    os.setsid()
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    stdin_fd = os.open(os.devnull, os.O_RDONLY)
    if request.get("stdin"):
        stdin_fd = os.memfd_create("stdin")  # (before the seccomp filter, which refuses memfd_create)
        os.write(stdin_fd, request["stdin"].encode())
        os.lseek(stdin_fd, 0, os.SEEK_SET)
    os.dup2(stdin_fd, 0)
    confine.confine(settings, set(protections) - {"pid"}, request["cpu_seconds"])
    os.closerange(3, 1 << 20)  # the control channel, the cgroup and every other inherited descriptor
    _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # the snippet may inspect its own /proc entries
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
    if "random" in sys.modules:  # a fork would otherwise hand every snippet the same random stream
        sys.modules["random"].seed()
    if "numpy.random" in sys.modules:  # (numpy imports it lazily: touching it unloaded costs 17 ms)
        sys.modules["numpy.random"].seed()
    code = request["code"]
    linecache.cache["<snippet>"] = (len(code), None, code.splitlines(True), "<snippet>")
    main_module = types.ModuleType("__main__")
    sys.modules["__main__"] = main_module
    rc = 0
    try:
        exec(compile(code, "<snippet>", "exec"), main_module.__dict__)
    except SystemExit as stop:
        if stop.code is None:
            rc = 0
        elif isinstance(stop.code, int):
            rc = stop.code & 0xFF
        else:
            print(stop.code, file=sys.stderr)
            rc = 1
    except MemoryError as error:
        rc = EXIT_MEMORY
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
