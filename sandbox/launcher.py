"""How a worker process is started, chosen once per sandbox: inside bubblewrap, inside util-linux
``unshare``, or bare. The launcher gives the worker its network namespace and filesystem view;
the per-execution protections come later (sandbox.confine) and need the zygote to hold
CAP_SYS_ADMIN in its namespaces, which each launcher grants: as root by keeping that capability,
otherwise by making the zygote root of a user namespace of its own (root there only: the snippet
drops every capability before it runs).

* ``bwrap``: new net/pid/ipc/uts namespaces, a minimal read-only filesystem (/usr, /etc, the
  interpreter's prefixes; not /home, /root or the repository), a private /tmp and /dev/shm,
  ``--die-with-parent``.
* ``unshare``: new net/pid/ipc/uts/mount namespaces; the host filesystem is visible.
* ``none``: the host's namespaces (the per-execution ones still apply where we are root).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from sandbox.config import SandboxConfig
from sandbox.results import SandboxUnavailable


@dataclass
class LaunchPlan:
    kind: str  # bwrap | unshare | none
    prefix: list[str]  # the command that wraps `python -I -c ...`
    protections: list[str]  # what the launcher itself gives: net, fs-ro
    worker_pid_namespace: bool  # the zygote lives in a pid namespace of the worker's own
    private_tmp: bool  # /tmp is the worker's own (else executions' fallback directories go to a host one)


_PROBE_CACHE: dict[tuple, bool] = {}


def plan_launch(config: SandboxConfig, python: str) -> LaunchPlan:
    """The first launcher that works here (``auto``) or the one the config names; the latter
    unavailable is a user error."""
    as_root = os.geteuid() == 0
    wanted = ["bwrap", "unshare", "none"] if config.isolation == "auto" else [config.isolation]
    for kind in wanted:
        if kind == "bwrap" and shutil.which("bwrap"):
            prefix = _bwrap_prefix(python, config.tmp_mb << 20, as_root)
            if prefix and _works(prefix + [python, "-I", "-c", "pass"]):
                return LaunchPlan("bwrap", prefix, ["net", "fs-ro"], worker_pid_namespace=True, private_tmp=True)
        elif kind == "unshare" and shutil.which("unshare"):
            prefix = _unshare_prefix(as_root)
            if _works(prefix + [python, "-I", "-c", "pass"]):
                return LaunchPlan("unshare", prefix, ["net"], worker_pid_namespace=True, private_tmp=False)
        elif kind == "none":
            return LaunchPlan("none", [], [], worker_pid_namespace=False, private_tmp=False)
    raise SandboxUnavailable(f"sandbox.isolation: {config.isolation!r} is not available here (tried: "
                             f"{', '.join(wanted)}); install bubblewrap (apt-get install bubblewrap), check that "
                             "user namespaces are allowed, or set isolation to 'auto'")


def _works(command: list[str]) -> bool:
    key = tuple(command)
    if key not in _PROBE_CACHE:
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                                  env={"PATH": os.defpath}, check=False)
            _PROBE_CACHE[key] = done.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _PROBE_CACHE[key] = False
    return _PROBE_CACHE[key]


@functools.lru_cache(maxsize=8)
def interpreter_dirs(python: str) -> list[str]:
    """The directories the interpreter needs (its prefixes and its own), parents before children."""
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
    if as_root:  # what the zygote needs: drop to the snippet uid, make namespaces and mounts, kill, clean up
        cmd += ["--cap-drop", "ALL"]
        for capability in ("SETUID", "SETGID", "SYS_ADMIN", "KILL", "DAC_OVERRIDE", "FOWNER"):
            cmd += ["--cap-add", f"CAP_{capability}"]
    else:
        cmd += ["--unshare-user", "--uid", "0", "--gid", "0", "--cap-add", "ALL"]
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
    for directory in interpreter_dirs(python):
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
        cmd[1:1] = ["--user", "--map-root-user"]
    return cmd + ["--"]
