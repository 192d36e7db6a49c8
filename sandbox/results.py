"""What an execution gives back, what the sandbox raises, and the one method its users rely on
(so a test can stand in for the sandbox)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from data.errors import UserError
from sandbox.config import Status


@dataclass
class ExecutionResult:
    stdout: str
    stderr: str
    status: Status
    exit_code: int | None  # negative: killed by that signal; None: no exit status (worker failed)
    wall_s: float
    truncated: bool
    isolation: str  # the launcher and the protections in force, e.g. "bwrap(net,fs-ro,uid,pid,tmp)"
    protections: tuple[str, ...] = ()  # the names of sandbox.config.PROTECTIONS in force for this run


class SandboxError(RuntimeError):
    """The sandbox itself could not start or was used after close()."""


class SandboxUnavailable(SandboxError, UserError):
    """The isolation the config asks for cannot be had on this machine (one line, names the key)."""


class CodeRunner(Protocol):
    def run_many(self, codes: list[str]) -> list[Any]: ...
