"""What a sandbox is asked for: the typed settings a stage's ``sandbox:`` section holds, checked
at start, and the names of the protections every result reports (one vocabulary for the
config, the results, the log and the README)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from data.config_base import StrictConfig, operational

IsolationKind = Literal["auto", "bwrap", "unshare", "none"]
Status = Literal["ok", "error", "timeout", "memory", "killed"]

# What each protection in a result's ``protections`` means. The first three come from how the
# worker is launched (once per worker); the others are renewed for every execution.
PROTECTIONS = {
    "net": "no network: the worker has a network namespace of its own with nothing in it",
    "fs-ro": "the filesystem is a minimal read-only view (system dirs and the interpreter only)",
    "uid": "as root: the snippet runs as a dedicated unprivileged uid (one per worker)",
    "pid": "a fresh pid namespace per execution, killed whole when the execution ends",
    "proc": "/proc shows only the execution's own processes",
    "tmp": "a fresh size-capped tmpfs on /tmp and /dev/shm per execution",
    "ipc": "a fresh IPC namespace per execution (SysV objects die with it)",
    "seccomp": "syscall filter: sockets other than AF_UNIX, namespaces, mounts, ptrace, keyrings, "
               "bpf, perf, io_uring, userfaultfd, memfd and SysV shared memory are refused",
    "memcg": "the execution's whole memory (files in its /tmp included) is capped by a cgroup",
}
# The per-execution ones can be left off (benchmarks; a kernel that refuses one).
OptionalProtection = Literal["pid", "proc", "tmp", "ipc", "seccomp", "memcg"]

# What a program may import beyond the standard library (math, fractions, itertools, ...): the
# packages tool solutions use (JiuZhang3.0's tool data imports numpy, sympy and scipy; mpmath
# comes with sympy). They are the sandbox interpreter's own (the project's environment, where
# pyproject.toml installs them); each worker checks them at start and the pool warns about any
# missing. A program importing anything else fails; program checks call it code_missing_module.
PACKAGES = ("numpy", "sympy", "scipy", "mpmath")

DEFAULT_PRELOAD = [
    "math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "statistics",
    "random", "re", "string", "json", "heapq", "bisect", "datetime", "sympy", "numpy", "numpy.random",
]


class SandboxConfig(StrictConfig):
    wall_timeout_s: float = Field(10.0, gt=0, description="wall-clock limit per execution")
    cpu_seconds: int | None = Field(None, gt=0, description="RLIMIT_CPU; default ceil(wall timeout)+1")
    memory_mb: int = Field(1024, ge=64, description="address-space limit (RLIMIT_AS) and, with memcg, the "
                                                    "execution's whole memory")
    max_processes: int = Field(16, ge=1, description="processes+threads the snippet may have")
    max_file_mb: int = Field(64, ge=1, description="largest file the snippet may write (RLIMIT_FSIZE)")
    max_open_files: int = Field(256, ge=16)
    max_output_bytes: int = Field(65536, ge=256, description="kept per stream; the rest is dropped and marked")
    tmp_mb: int = Field(256, ge=16, description="size of the private /tmp and of /dev/shm")
    workers: int = operational(2, ge=1, le=256)
    isolation: IsolationKind = Field("auto", description="how workers are launched; auto takes the first that "
                                                         "works of bwrap, unshare, none")
    without: list[OptionalProtection] = Field(default_factory=list,
                                              description="per-execution protections to leave off")
    preload: list[str] = Field(default_factory=lambda: list(DEFAULT_PRELOAD))
    sandbox_uid: int = Field(2_100_000_000, ge=1, description="as root, worker i runs snippets as uid+i")
    python: str | None = Field(None, description="interpreter for the workers; default sys.executable")
    start_timeout_s: float = operational(60.0, gt=0)
    echo_last_expression: bool = Field(True, description="program checks (sandbox.program_answers): a code "
                                                         "block ending in a bare expression shows its value, "
                                                         "as a notebook cell does")
