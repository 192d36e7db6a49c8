"""The code sandbox against hostile snippets: each is contained with the right status, and this
test process (and the machine) survives all of it."""
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

import eval.sandbox as sandbox_module
from eval.sandbox import Sandbox, SandboxConfig, SandboxError

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
    monkeypatch.setattr(sandbox_module, "_GRACE_S", 1.0)
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
