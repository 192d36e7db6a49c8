"""The code sandbox against hostile snippets: each is contained with the right status, this test
process (and the machine) survives all of it, and nothing an execution does reaches the next one."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

import sandbox.pool as pool_module
import sandbox.seccomp as seccomp_module
from data.errors import UserError
from sandbox import (
    PROTECTIONS,
    Sandbox,
    SandboxConfig,
    SandboxError,
    SandboxUnavailable,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_SLACK_S = 3.0  # scheduling on a busy 2-core machine


def start_sandbox(**settings) -> Sandbox:
    """A sandbox on this interpreter or, where the snippet uid cannot read it (root with a pyenv
    under /root and no bwrap), on the system's: the containment under test is the same."""
    errors = []
    for python in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(python):
            try:
                return Sandbox(python=python, **settings)
            except SandboxError as error:
                errors.append(str(error))
    raise SandboxError(" | ".join(errors))


@pytest.fixture(scope="module")
def sandbox():
    with start_sandbox(wall_timeout_s=5, workers=2, max_output_bytes=4096, memory_mb=512) as box:
        yield box


def features(result_or_box) -> set[str]:
    text = result_or_box.isolation
    return set(text[text.index("(") + 1:-1].split(",")) if "(" in text else set()


def require_containment(box: Sandbox) -> None:
    """Snippets that signal everything they can must not run where that includes this process."""
    if not features(box) & {"uid", "pid"}:
        pytest.skip(f"isolation {box.isolation!r} has neither a pid namespace nor a uid of its own: "
                    "a snippet could kill the test process")


def sandbox_uid_processes(config: SandboxConfig, settle_s: float = 2.0) -> list[int]:
    """Live (not zombie) processes of the sandbox uids, after giving SIGKILLs time to land."""
    first, last = config.sandbox_uid, config.sandbox_uid + config.workers
    deadline = time.monotonic() + settle_s
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if first <= os.stat(f"/proc/{entry}").st_uid < last:
                        state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                        if state != "Z":
                            found.append(int(entry))
                except (OSError, IndexError):
                    pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_ok_and_isolation_reported(sandbox):
    result = sandbox.run("print(sum(range(10)))")
    assert (result.status, result.stdout, result.exit_code, result.truncated) == ("ok", "45\n", 0, False)
    assert result.isolation == sandbox.isolation
    assert result.isolation.split("(")[0] in ("bwrap", "unshare", "none")
    if os.geteuid() == 0:
        assert "uid" in features(result), "as root, snippets must never run as root"


def test_exception_is_error_with_traceback(sandbox):
    result = sandbox.run("x = 1\ny = x / 0\n")
    assert result.status == "error" and result.exit_code == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr
    assert "y = x / 0" in result.stderr  # the snippet's own line is shown
    syntax = sandbox.run("x = = 1")
    assert syntax.status == "error" and "SyntaxError" in syntax.stderr


def test_stdin_exit_code_and_fresh_state(sandbox):
    result = sandbox.run("import sys\nname = input()\nprint('hi', name)\nsys.exit(3)", stdin="Ada\n")
    assert (result.status, result.stdout, result.exit_code) == ("error", "hi Ada\n", 3)
    leak = sandbox.run("import math\nmath.LEAK = 1\nprint(1)")
    assert leak.status == "ok"
    assert sandbox.run("import math\nprint(hasattr(math, 'LEAK'))").stdout == "False\n"  # a fresh child each time
    draws = {sandbox.run("import random\nprint(random.random())").stdout for _ in range(3)}
    assert len(draws) == 3  # forked children must not share one random stream


def test_infinite_loop_times_out(sandbox):
    started = time.monotonic()
    result = sandbox.run("while True:\n    pass", timeout_s=1.5)
    elapsed = time.monotonic() - started
    assert result.status == "timeout"
    assert 1.5 <= elapsed < 1.5 + TIMEOUT_SLACK_S
    assert sandbox.run("print('next')").stdout == "next\n"


def test_fork_bomb_is_contained(sandbox):
    require_containment(sandbox)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    result = sandbox.run(bomb, timeout_s=2)
    assert result.status in ("killed", "error", "timeout")
    assert time.monotonic() - started < 2 + TIMEOUT_SLACK_S
    # The machine is still usable: this process can start processes, the sandbox can run code.
    spawned = subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True, timeout=30)
    assert spawned.stdout == "7\n"
    assert sandbox.run("import os\nif os.fork() == 0:\n    os._exit(0)\nprint('forked')").stdout == "forked\n"
    if "uid" in features(sandbox):
        assert sandbox_uid_processes(sandbox.config) == []  # nothing of the bomb is left


def test_memory_bomb_is_memory(sandbox):
    result = sandbox.run("block = bytearray(8 * 1024 ** 3)")
    assert result.status == "memory" and "MemoryError" in result.stderr
    growing = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 ** 2))")
    assert growing.status == "memory"
    assert sandbox.run("print('ok')").status == "ok"


def test_huge_output_is_truncated_and_bounded(sandbox):
    cap = sandbox.config.max_output_bytes
    endless = sandbox.run("while True:\n    print('x' * 1000)")
    assert endless.truncated and endless.status in ("ok", "killed")
    assert cap <= len(endless.stdout.encode()) <= cap + 100  # the cap plus the truncation mark
    assert "truncated" in endless.stdout
    finite = sandbox.run("import sys\nsys.stdout.write('y' * 100000)\nsys.stderr.write('z' * 100000)")
    assert finite.status == "ok" and finite.truncated
    assert len(finite.stdout.encode()) <= cap + 100 and len(finite.stderr.encode()) <= cap + 100


def test_writing_outside_its_directory_does_not_reach_the_host(sandbox):
    name = f"sandbox-escape-{uuid.uuid4().hex}"
    targets = [Path("/etc") / name, REPO_ROOT / name, Path.home() / name, Path("/") / name]
    if "tmp" in features(sandbox):
        targets.append(Path("/tmp") / name)  # a private /tmp: written inside, invisible here
    code = (
        "import os\n"
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n"
        "        with open(path, 'w') as handle:\n"
        "            handle.write('escaped')\n"
        "        print('wrote', path)\n"
        "    except OSError as error:\n"
        "        print('refused', path, type(error).__name__)\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print('cwd', os.getcwd())\n"
    )
    try:
        result = sandbox.run(code)
        assert result.status == "ok", result.stderr
        for target in targets:
            assert not target.exists(), f"the snippet wrote {target} on the host"
        cwd = result.stdout.split("cwd ")[-1].strip()
        if "tmp" not in features(sandbox):  # the working directory is a host path: gone afterwards
            assert not Path(cwd).exists()
    finally:
        for target in targets:
            if target.exists() and target.is_file():
                target.unlink()


def test_parent_environment_is_invisible(monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("MATHSYNTH_SANDBOX_SECRET", secret)
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        f"for pid in [os.getppid(), {os.getpid()}] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace'))\n"
        "    except OSError as error:\n"
        "        print('refused', pid, type(error).__name__)\n"
    )
    with start_sandbox(workers=1, wall_timeout_s=10) as box:  # started after the secret was set
        result = box.run(code)
    assert result.status == "ok", result.stderr
    assert secret not in result.stdout and "MATHSYNTH_SANDBOX_SECRET" not in result.stdout


def test_sockets_fail_under_network_isolation(sandbox):
    if not sandbox.network_isolated:
        pytest.skip(f"no network isolation available here ({sandbox.isolation}): sockets are not blocked")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted = []

    def accept():
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not accepted:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    code = (
        "import socket\n"
        f"for address in [('127.0.0.1', {port}), ('10.255.255.1', 80), ('1.1.1.1', 53)]:\n"
        "    try:\n"
        "        socket.create_connection(address, timeout=1).close()\n"
        "        print('connected', address)\n"
        "    except OSError as error:\n"
        "        print('failed', address, type(error).__name__)\n"
    )
    try:
        result = sandbox.run(code)
    finally:
        time.sleep(0.3)
        accepted.append(None)  # stops the accept loop
        thread.join(timeout=5)
        listener.close()
    assert result.status == "ok", result.stderr
    assert "connected" not in result.stdout and result.stdout.count("failed") == 3
    assert accepted == [None], "the snippet reached the test's listening socket"


@pytest.mark.parametrize("attack", [
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
    "import os, signal\nos.kill({test_pid}, signal.SIGKILL)",
    "import subprocess\nsubprocess.run('kill -9 -1', shell=True)\nprint('after')",
    "import os, signal\nos.kill(-1, signal.SIGKILL)",
])
def test_signalling_the_parent_leaves_the_test_alive(sandbox, attack):
    require_containment(sandbox)
    result = sandbox.run(attack.replace("{test_pid}", str(os.getpid())))
    assert result.status in ("ok", "error", "killed")
    os.kill(os.getpid(), 0)  # still here (we would not be running otherwise)
    assert sandbox.run("print('alive')").stdout == "alive\n"


def test_background_process_holding_stdout_does_not_block(sandbox):
    code = "import subprocess\nsubprocess.Popen(['sleep', '30'])\nprint('started')"
    started = time.monotonic()
    result = sandbox.run(code)
    assert result.status == "ok" and result.stdout == "started\n"
    assert time.monotonic() - started < 3  # the child's exit ends the run, not the pipe's end
    if "uid" in features(sandbox):
        assert sandbox_uid_processes(sandbox.config) == []


def test_run_many_keeps_order_and_uses_the_pool(sandbox):
    results = sandbox.run_many([f"print({i} * {i})" for i in range(20)])
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(20)]
    started = time.monotonic()
    sleepers = sandbox.run_many(["import time\ntime.sleep(1)"] * 2)
    assert all(r.status == "ok" for r in sleepers)
    assert time.monotonic() - started < 1.9  # both workers at once


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return found


def test_dead_or_wedged_worker_is_replaced_and_never_hangs(monkeypatch):
    monkeypatch.setattr(pool_module, "GRACE_S", 1.0)
    with start_sandbox(workers=1, wall_timeout_s=5) as box:
        worker = box._workers[0]
        worker.process.kill()  # a crashed zygote
        worker.process.wait()
        assert box.run("print(1)").stdout == "1\n"
        for pid in [worker.process.pid] + _descendants(worker.process.pid):  # a zygote that stops answering
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        result = box.run("print(2)", timeout_s=0.5)
        assert time.monotonic() - started < 0.5 + 1.0 + TIMEOUT_SLACK_S
        assert result.status in ("timeout", "killed")
        assert box.run("print(3)").stdout == "3\n"


def test_config_is_validated_and_closed_sandbox_refuses():
    with pytest.raises(ValidationError):
        SandboxConfig(wall_timeout=3)  # a misspelt key
    with pytest.raises(ValidationError):
        SandboxConfig(isolation="docker")
    box = start_sandbox(workers=1)
    box.close()
    with pytest.raises(SandboxError):
        box.run("print(1)")


@pytest.mark.parametrize("kind", ["bwrap", "unshare", "none"])
def test_each_available_isolation_kind(kind):
    try:
        box = start_sandbox(isolation=kind, workers=1, wall_timeout_s=5)
    except SandboxError as error:
        pytest.skip(f"{kind} is not usable here: {error}")
    with box:
        assert box.isolation.startswith(kind)
        assert box.run("print(6 * 7)").stdout == "42\n"
        if not features(box) & {"uid", "pid"}:
            return
        killed = box.run("import subprocess\nsubprocess.run('kill -9 -1', shell=True)")
        assert killed.status in ("ok", "error", "killed")
        code = ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
                "    print('connected')\nexcept OSError:\n    print('failed')")
        if box.network_isolated:
            assert box.run(code).stdout == "failed\n"
        assert box.run("print('alive')").stdout == "alive\n"


def test_an_interpreter_under_tmp_is_not_hidden_by_the_private_tmp(tmp_path):
    """CI clones into a folder that may sit under /tmp: the sandbox's private /tmp must not
    hide the interpreter of a virtual environment there."""
    import shutil
    import subprocess
    import sys

    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed: this checks the bwrap mount order")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert str(venv).startswith("/tmp/")
    with Sandbox(SandboxConfig(isolation="bwrap", python=str(venv / "bin" / "python"), workers=1)) as sandbox:
        result = sandbox.run("print(6 * 7)")
    assert result.status == "ok" and result.isolation.startswith("bwrap"), result


# -- each execution starts clean and leaves nothing alive ---------------------------------------
# Holes found by hostile testing of the per-worker design; each test failed there.

@pytest.fixture(scope="module")
def one_worker():
    """One worker, so that consecutive executions are sure to share it; a small /tmp to fill."""
    with start_sandbox(workers=1, wall_timeout_s=5, memory_mb=256, tmp_mb=16) as box:
        yield box


def require_any(box: Sandbox, *protections: str) -> None:
    """Skip where none of the protections that close this hole is in force (the result says so)."""
    if not set(protections) & set(box.protections):
        pytest.skip(f"none of {protections} is in force here ({box.isolation})")


def held_mib(result) -> int:
    return int(result.stdout.split("held")[-1])


# A dozen daemons, each killing everything its uid may kill, in a loop: a cleanup pass running as
# that uid after the run was itself killed before it could kill them.
KILLER_DAEMONS = """
import os, signal, time
for _ in range(12):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                try:
                    os.kill(-1, signal.SIGKILL)
                except OSError:
                    pass
        os._exit(0)
time.sleep(0.3)
"""


def test_daemons_die_with_their_execution(one_worker):
    require_any(one_worker, "pid")
    for _ in range(3):
        one_worker.run(KILLER_DAEMONS)
        later = [one_worker.run("import time\ntime.sleep(0.05)\nprint('alive')") for _ in range(3)]
        assert [r.stdout for r in later] == ["alive\n"] * 3, later
    if "uid" in one_worker.protections:
        assert sandbox_uid_processes(one_worker.config) == []


SYSV_SEGMENT = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
segment = libc.shmget(0x5A5A, 4096, {flags})
if segment < 0:
    print('no segment')
else:
    address = libc.shmat(segment, None, 0)
    {then}
"""


def test_sysv_shared_memory_does_not_reach_the_next_execution(one_worker):
    require_any(one_worker, "ipc", "seccomp")
    one_worker.run(SYSV_SEGMENT.format(flags=0o1600, then="ctypes.memmove(address, b'leaked', 6)"))
    second = one_worker.run(SYSV_SEGMENT.format(flags=0, then="print(ctypes.string_at(address, 6))"))
    assert second.status == "ok" and "leaked" not in second.stdout, second


def test_files_under_a_locked_folder_in_tmp_do_not_reach_the_next_execution(one_worker):
    require_any(one_worker, "tmp")
    one_worker.run("import os\nos.makedirs('/tmp/locked/inner')\nopen('/tmp/locked/inner/note', 'w').write('leaked')\n"
                   "os.chmod('/tmp/locked', 0)")
    second = one_worker.run("import os\ntry:\n    os.chmod('/tmp/locked', 0o700)\n"
                            "    print(open('/tmp/locked/inner/note').read())\nexcept OSError:\n    print('clean')")
    assert second.stdout == "clean\n", second


def test_a_full_tmp_does_not_reach_the_next_execution(one_worker):
    require_any(one_worker, "tmp")
    size = one_worker.config.tmp_mb << 20
    one_worker.run("import os\nos.mkdir('/tmp/full')\nfd = os.open('/tmp/full/blob', os.O_WRONLY | os.O_CREAT)\n"
                   f"try:\n    os.posix_fallocate(fd, 0, {size})\nexcept OSError:\n    pass\nos.chmod('/tmp/full', 0)")
    second = one_worker.run("import os\nfd = os.open('/tmp/probe', os.O_WRONLY | os.O_CREAT)\n"
                            "os.posix_fallocate(fd, 0, 1 << 20)\nprint('wrote')")
    assert second.stdout == "wrote\n", second


MEMFD_HOARD = """
import os
total = 0
try:
    while total < 768 << 20:
        fd = os.memfd_create('hoard')
        os.posix_fallocate(fd, 0, 32 << 20)
        total += 32 << 20
except OSError as error:
    print('refused:', error)
print('held', total >> 20)
"""


def test_memfd_memory_is_not_beyond_the_limit(one_worker):
    require_any(one_worker, "seccomp", "memcg")
    result = one_worker.run(MEMFD_HOARD)
    assert result.status != "ok" or held_mib(result) <= one_worker.config.memory_mb, result


# A user namespace of its own gives the snippet CAP_SYS_ADMIN there: enough to mount a tmpfs,
# whose pages no rlimit counts.
TMPFS_IN_OWN_USER_NAMESPACE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.getuid(), os.getgid()
if libc.unshare(0x10000000 | 0x20000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
    raise SystemExit(f'unshare refused: {os.strerror(ctypes.get_errno())}')
open('/proc/self/setgroups', 'w').write('deny')
open('/proc/self/uid_map', 'w').write(f'0 {uid} 1')
open('/proc/self/gid_map', 'w').write(f'0 {gid} 1')
os.mkdir('mnt')
if libc.mount(b'tmpfs', b'mnt', b'tmpfs', 0, b'size=2g') != 0:
    raise SystemExit(f'mount refused: {os.strerror(ctypes.get_errno())}')
total = 0
while total < 768 << 20:
    fd = os.open(f'mnt/{total}', os.O_WRONLY | os.O_CREAT)
    os.posix_fallocate(fd, 0, 32 << 20)
    total += 32 << 20
print('held', total >> 20)
"""


def test_no_tmpfs_in_a_user_namespace_of_its_own(one_worker):
    require_any(one_worker, "seccomp", "memcg")
    result = one_worker.run(TMPFS_IN_OWN_USER_NAMESPACE)
    assert result.status != "ok" or held_mib(result) <= one_worker.config.memory_mb, result


def test_memory_of_all_its_processes_counts(sandbox):
    """RLIMIT_AS is per process; the memory cgroup counts the execution's processes together."""
    require_any(sandbox, "memcg")
    limit = sandbox.config.memory_mb
    code = (f"import subprocess, sys\nblock = b'x' * ({limit * 6 // 10} << 20)\n"
            f"subprocess.run([sys.executable, '-c', \"b = b'y' * ({limit // 2} << 20)\"])\nprint('held both')")
    result = sandbox.run(code)
    assert result.status == "memory", result
    assert sandbox.run("print('next')").stdout == "next\n"


def test_no_socket_but_unix_ones(one_worker):
    """AF_VSOCK reaches the host (a VM's hypervisor) whatever the network namespace."""
    require_any(one_worker, "seccomp")
    code = ("import socket\nfor family in ('AF_VSOCK', 'AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_PACKET'):\n"
            "    try:\n        socket.socket(getattr(socket, family), socket.SOCK_DGRAM).close()\n"
            "        print(family, 'created')\n    except OSError:\n        print(family, 'refused')\n"
            "a, b = socket.socketpair()\na.sendall(b'unix ok')\nprint(b.recv(16).decode())")
    result = one_worker.run(code)
    assert result.status == "ok", result
    assert "created" not in result.stdout and result.stdout.count("refused") == 5, result.stdout
    assert result.stdout.endswith("unix ok\n")


def test_results_say_which_protections_were_in_force(one_worker):
    result = one_worker.run("print(1)")
    assert result.protections == one_worker.protections
    assert set(result.protections) <= set(PROTECTIONS)
    assert result.isolation == f"{result.isolation.split('(')[0]}({','.join(result.protections)})"
    with start_sandbox(workers=1, without=["seccomp", "ipc"]) as box:
        assert not {"seccomp", "ipc"} & set(box.run("print(1)").protections)


def test_what_is_not_in_force_is_logged(monkeypatch, caplog):
    def no_libseccomp():
        raise OSError("libseccomp is not installed (test)")

    monkeypatch.setattr(pool_module, "compile_filter", no_libseccomp)
    with caplog.at_level("WARNING", logger="sandbox.pool"), start_sandbox(workers=1) as box:
        assert "seccomp" not in box.run("print(1)").protections
    assert any("seccomp (libseccomp is not installed (test))" in record.getMessage() for record in caplog.records)


def test_a_package_programs_may_use_that_the_interpreter_lacks_is_logged(monkeypatch, caplog):
    # Each worker looks for sandbox.config.PACKAGES at start (without importing them).
    monkeypatch.setattr(pool_module, "PACKAGES", ("math", "mathsynth_no_such_package"))
    with caplog.at_level("WARNING", logger="sandbox.pool"), start_sandbox(workers=1) as box:
        assert box.missing_packages == ("mathsynth_no_such_package",)
    assert any("cannot import mathsynth_no_such_package" in record.getMessage() for record in caplog.records)


def test_an_unavailable_isolation_is_a_one_line_user_error(monkeypatch):
    monkeypatch.setattr("sandbox.launcher.shutil.which", lambda name: None)
    with pytest.raises(SandboxUnavailable) as raised:
        Sandbox(isolation="bwrap", workers=1)
    assert isinstance(raised.value, UserError) and "\n" not in str(raised.value)
    assert "isolation" in str(raised.value) and "bwrap" in str(raised.value)


def test_the_seccomp_filter_compiles_where_libseccomp_exists():
    try:
        program = seccomp_module.compile_filter()
    except OSError as error:
        pytest.skip(f"no libseccomp here: {error}")
    assert len(program) % 8 == 0 and len(program) // 8 > 20  # classic BPF, one rule per refused call at least
