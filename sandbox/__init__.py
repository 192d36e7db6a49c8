"""Isolated execution of model-written Python, shared by eval (tool-integrated solving), distill
and synth (the check that a tool solution's program prints its boxed answer).

A warm pool of zygote workers runs each snippet in a fresh forked child; each execution gets a
pid namespace of its own that is killed whole at its end, fresh /tmp, /dev/shm, /proc and IPC
namespaces, a dedicated uid (as root), rlimits, a seccomp filter and a memory cgroup, where the
machine allows each; every result lists the protections that were in force
(:data:`sandbox.config.PROTECTIONS`). Modules: ``config`` (settings, protection names),
``results`` (what comes back, errors), ``pool`` (the :class:`Sandbox`), ``launcher`` (how a worker
is started), ``protocol`` (the pipes), ``zygote`` and ``confine`` (what runs inside a worker),
``seccomp`` and ``cgroups`` (the filter and memory cgroups, set up by the parent),
``program_answers`` (does a program print the answer its solution boxes), with ``notebook`` (a
solution's code blocks as one program) and ``printed`` (printed Python read as an answer).
Programs may import the standard library and :data:`sandbox.config.PACKAGES`. Imports no stage.
"""
from sandbox.config import PACKAGES, PROTECTIONS, SandboxConfig
from sandbox.pool import Sandbox
from sandbox.results import (
    CodeRunner,
    ExecutionResult,
    SandboxError,
    SandboxUnavailable,
)

__all__ = ["PACKAGES", "PROTECTIONS", "CodeRunner", "ExecutionResult", "Sandbox", "SandboxConfig", "SandboxError",
           "SandboxUnavailable"]
