"""How one execution is shut in. Runs inside the worker (standard library only: it arrives as
source, see sandbox.protocol).

The zygote gives each execution a pid namespace of its own (:class:`PidNamespaces`). The child
it forks, still privileged, then shuts itself in (:func:`confine`): it joins the memory cgroup,
takes fresh IPC and mount namespaces with its own /tmp, /dev/shm and /proc, drops to the
snippet's uid (or, with none to drop to, every capability), sets its rlimits and, last, loads the
seccomp filter, so that the filter refuses none of the steps before it. Everything an execution
creates lives in those namespaces and goes when its pid namespace is killed: the next execution
starts clean without anyone having to find and delete what the last one left.

The steps are named as in sandbox.config.PROTECTIONS. ``probing`` runs them once at the
zygote's start, skipping what this machine refuses, so that afterwards exactly the ones that work
are applied and reported (a step that fails later is an error, never silently skipped).
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal

CLONE_VM = 0x00000100
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 22, 38
SECCOMP_MODE_FILTER = 2
CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, options: str | None = None) -> None:
    def encode(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(_libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(options)),
           f"mount {target}")


class PidNamespaces:
    """A fresh pid namespace for each execution, made by the zygote just before it forks the
    snippet. Its pid 1 does nothing; the snippet is pid 2. Killing pid 1 makes the kernel kill
    everything else in the namespace, however it daemonised, and reaping pid 1 returns only once
    all of it is gone.

    pid 1 is cloned with CLONE_VM: no copy of the zygote's page tables (a fork of the zygote with
    sympy loaded costs milliseconds, this costs microseconds). It shares the zygote's memory, so
    it must never run Python: it waits in sigsuspend with every signal blocked until SIGKILL."""

    def __init__(self) -> None:
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY)
        self._stack = ctypes.create_string_buffer(1 << 16)
        self._every_signal = ctypes.create_string_buffer(b"\xff" * 128)  # a full sigset_t
        self._clone = _libc.clone
        self._clone.restype = ctypes.c_int
        self._clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self._sigsuspend = ctypes.cast(_libc.sigsuspend, ctypes.c_void_p)

    def start(self) -> int:
        """Point the zygote's next children at a new namespace; returns that namespace's pid 1."""
        self.leave()  # (a new namespace can only be made from the zygote's own)
        _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        stack_top = (ctypes.addressof(self._stack) + len(self._stack)) & ~15
        # Blocked here, blocked in the clone, which inherits the mask: no handler ever runs in it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            init = self._clone(self._sigsuspend, stack_top, CLONE_VM | signal.SIGCHLD,
                               ctypes.addressof(self._every_signal))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if init < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"clone: {os.strerror(errno)}")
        return init

    def leave(self) -> None:
        """The zygote's later children are born in its own namespace again."""
        _check(_libc.setns(self._own, CLONE_NEWPID), "setns to the zygote's pid namespace")


def confine(settings: dict, wanted: set[str], cpu_seconds: int, probing: bool = False) -> tuple[list[str], dict]:
    """Shut the calling (freshly forked, still privileged) process in: the protections named in
    ``wanted``, the privilege drop, the rlimits. Returns (names applied, {name: why not}); the
    second is empty unless ``probing``, where a refused step is skipped instead of raised."""
    applied: list[str] = []
    refused: dict[str, str] = {}
    uid = settings["uid"]
    wanted = set(wanted) | ({"uid"} if uid is not None else set())  # never optional

    def step(name: str, action) -> None:
        if name not in wanted:
            return
        try:
            action()
            applied.append(name)
        except OSError as error:
            if not probing:
                raise
            refused[name] = str(error)

    step("memcg", lambda: os.write(settings["cgroup_fd"], b"0"))  # "0": the writing process
    step("ipc", lambda: _check(_libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)"))
    step("tmp", lambda: _fresh_tmp(settings))
    if "tmp" in applied:  # a /proc of its own needs the mount namespace just made
        step("proc", _private_proc)
    if uid is not None:
        step("uid", lambda: _drop_to_uid(uid))
    else:
        _drop_capabilities()  # (in a user namespace the zygote is its root: the snippet must not be)
    _set_limits(settings, cpu_seconds)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), "no_new_privs")  # no setuid binary gives anything back
    if settings["seccomp"]:
        step("seccomp", lambda: _load_seccomp(bytes.fromhex(settings["seccomp"])))
    return applied, refused


def _fresh_tmp(settings: dict) -> None:
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted below may show in the worker's view
    # An interpreter under /tmp (a CI checkout) must stay visible: held open, bound back below.
    # (Opened after the unshare: a bind's source must be a mount of this namespace.)
    kept = [(path, os.open(path, os.O_PATH)) for path in settings["dirs_under_tmp"]]
    for path in ("/tmp", "/dev/shm"):
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={settings['tmp_bytes']}")
    for path, fd in kept:
        os.makedirs(path, 0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)


def _private_proc() -> None:
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)  # read-only, as bubblewrap has it
    _mount(None, "/proc/sys", None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _drop_to_uid(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # (from root to another uid: every capability goes too)
    _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
                ctypes.c_ulong(0))  # (changing uid cleared it)


def _drop_capabilities() -> None:
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)  # this process
    empty = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; two words each
    _check(_libc.capset(header, empty), "capset")


def _set_limits(settings: dict, cpu_seconds: int) -> None:
    limits = {
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_AS: settings["memory_bytes"],
        resource.RLIMIT_NPROC: settings["nproc"],
        resource.RLIMIT_FSIZE: settings["file_bytes"],
        resource.RLIMIT_NOFILE: settings["nofile"],
    }
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _load_seccomp(program: bytes) -> None:
    """``program``: classic BPF as compiled by sandbox.seccomp (8 bytes an instruction)."""
    instructions = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(instructions))
    _check(_libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), "seccomp")
