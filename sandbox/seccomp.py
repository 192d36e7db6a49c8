"""The syscall filter every snippet runs under, compiled once in the parent.

Namespaces and rlimits leave doors open that only a filter closes: an AF_VSOCK socket reaches
the host whatever the network namespace; a user namespace of the snippet's own lets it mount a
tmpfs whose memory no rlimit counts; memfd_create and SysV shared memory hold memory outside the
address-space limit; io_uring can open sockets without the socket() call. Everything else is
allowed (a deny list: math snippets use numpy, sympy, subprocess and threads freely).

Compiled with the system's libseccomp (Debian ``libseccomp2``), loaded through ctypes: no Python
binding to install, and the worker's interpreter needs nothing (it loads the compiled BPF with
one prctl, see sandbox.confine). libseccomp resolves the syscall numbers of this architecture and
kills a process that makes syscalls through another ABI (x86's int 0x80, x32).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import tempfile

ALLOW = 0x7FFF0000
CMP_NE, CMP_MASKED_EQ = 1, 7
NAMESPACE_FLAGS = {  # clone() flags that would make a namespace (argument 0 on x86_64 and arm64)
    "CLONE_NEWTIME": 0x80, "CLONE_NEWNS": 0x20000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
REFUSED = (
    # namespaces and mounts: no user namespace of its own (and no tmpfs in it), no new view of anything
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    # other processes' memory and descriptors
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    # kernel facilities with a long record of exploits, or that outlive a process
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "syslog",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # memory the address-space limit does not count
    "memfd_create", "memfd_secret", "shmget", "msgget",
)


def _errno_action(code: int) -> int:
    return 0x00050000 | code


class _ArgCompare(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def compile_filter() -> bytes:
    """The filter as classic BPF, ready for prctl(PR_SET_SECCOMP). Raises OSError where
    libseccomp is missing or refuses."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    except OSError:
        raise OSError(errno.ENOENT, "libseccomp is not installed (Debian: apt-get install libseccomp2)") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCompare)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(ALLOW)
    if not context:
        raise OSError(errno.EINVAL, "seccomp_init failed")
    try:
        def refuse(name: str, code: int, *compares: tuple[int, int, int, int]) -> None:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == -1:  # (__NR_SCMP_ERROR) not a syscall of this architecture or libseccomp version
                return
            array = (_ArgCompare * max(len(compares), 1))(*[_ArgCompare(*c) for c in compares])
            result = lib.seccomp_rule_add_array(context, _errno_action(code), number, len(compares), array)
            if result != 0:
                raise OSError(-result, f"seccomp rule for {name}: {os.strerror(-result)}")

        for name in ("socket", "socketpair"):  # a socket of any family but AF_UNIX
            refuse(name, errno.EAFNOSUPPORT, (0, CMP_NE, socket.AF_UNIX, 0))
        for flag in NAMESPACE_FLAGS.values():
            refuse("clone", errno.EPERM, (0, CMP_MASKED_EQ, flag, flag))
        # clone3 passes its flags in memory, which a filter cannot read: ENOSYS makes the C
        # library fall back to clone, whose flags it can.
        refuse("clone3", errno.ENOSYS)
        for name in REFUSED:
            refuse(name, errno.EPERM)
        with tempfile.TemporaryFile() as out:
            result = lib.seccomp_export_bpf(context, out.fileno())
            if result != 0:
                raise OSError(-result, f"seccomp_export_bpf: {os.strerror(-result)}")
            out.seek(0)
            return out.read()
    finally:
        lib.seccomp_release(context)
