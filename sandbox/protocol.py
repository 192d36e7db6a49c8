"""What goes over a worker's pipes: its own code first, then length-prefixed JSON requests and
replies. Kept apart because both sides use it: the worker's blocking half runs inside the worker
(standard library only), the parent's half never blocks past a deadline and never trusts a
length it did not cap.

A worker's command line is ``python -I -c BOOTSTRAP``: the interpreter may be another one than
ours and, under bubblewrap, cannot see this repository, so the worker-side modules
(protocol, confine, zygote) arrive as source on stdin and are installed as ``sandbox.*``.
"""
from __future__ import annotations

import json
import os
import select
import struct
import time

# Reads the worker-side modules and settings from stdin, installs the modules, runs the zygote.
# Nothing else is sent before the zygote says it is ready, so reading ahead cannot swallow a request.
BOOTSTRAP = (
    "import json, os, sys, types\n"
    "d = b''\n"
    "while len(d) < 10 or len(d) < 10 + int(d[:10]):\n"
    "    c = os.read(0, 1 << 16)\n"
    "    if not c:\n"
    "        raise SystemExit('sandbox worker: no code on stdin')\n"
    "    d += c\n"
    "bundle = json.loads(d[10:])\n"
    "package = sys.modules['sandbox'] = types.ModuleType('sandbox')\n"
    "package.__path__ = []\n"
    "for name, source in bundle['modules']:\n"
    "    module = sys.modules['sandbox.' + name] = types.ModuleType('sandbox.' + name)\n"
    "    exec(compile(source, '<sandbox.' + name + '>', 'exec'), module.__dict__)\n"
    "    setattr(package, name, module)\n"
    "sys.modules['sandbox.zygote'].main(bundle['settings'])\n"
)


def bundle(modules: list[tuple[str, str]], settings: dict) -> bytes:
    """What BOOTSTRAP reads: (name, source) pairs in import order, and the worker's settings."""
    body = json.dumps({"modules": modules, "settings": settings}).encode()
    return b"%010d" % len(body) + body


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


# -- the worker's side: blocking, the parent is trusted -------------------------------------------

def send(fd: int, message: dict) -> None:
    data = frame(message)
    while data:
        data = data[os.write(fd, data):]


def receive(fd: int) -> dict | None:
    """The next message, or None once the parent has closed the pipe."""
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


# -- the parent's side: non-blocking pipes, every call bounded by a deadline ----------------------

def write_all(fd: int, data: bytes, deadline: float) -> bool:
    while data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
            return False
        try:
            data = data[os.write(fd, data):]
        except (BrokenPipeError, BlockingIOError, OSError):
            return False
    return True


def read_message(fd: int, deadline: float, limit: int) -> dict | None:
    """One message of at most ``limit`` bytes, or None (deadline, end of file, garbage)."""
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
