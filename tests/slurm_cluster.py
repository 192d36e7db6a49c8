"""A real single-node Slurm (munged + slurmctld + slurmd) on this machine, for tests.

Everything lives in a private temp folder: the munge key and socket, slurm.conf, state,
spool, pid and log files. Clients find it through SLURM_CONF (``SlurmCluster.env``), so
nothing under /etc is read or written, and free ports are picked so an existing Slurm on
the machine is left alone. The daemons run in the foreground as children of the test
process, which knows their pids and reaps them; teardown is ``scontrol shutdown`` and then
the munged pid from its pid file. Needs root (slurmd starts jobs as their owner) and the
Debian packages: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge

    with SlurmCluster() as cluster:
        job = subprocess.run(["sbatch", "--parsable", ...], env=cluster.env(), ...).stdout.strip()
        assert set(cluster.wait_for_job(job, timeout_s=60).values()) == {"COMPLETED"}

``slurm_cluster_or_skip()`` is the same but turns "cannot run here" into pytest.skip.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "squeue", "scontrol", "scancel")
ENDED_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE",
}
INSTALL_HINT = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"


class SlurmUnavailable(RuntimeError):
    """This machine cannot run a local Slurm (missing binaries, not root): a reason to skip."""


class SlurmStartError(RuntimeError):
    """Slurm was runnable here but did not come up: a real failure, with the daemons' logs."""


def missing_requirements() -> str | None:
    """Why a local Slurm cannot run here, or None if it can."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    # The daemons live in /usr/sbin, which is not always on a non-root PATH.
    missing = [name for name in missing if not Path("/usr/sbin", name).exists()]
    if missing:
        return f"Slurm binaries not found ({', '.join(missing)}); install with: {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd starts jobs as the submitting user)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmStartError("cannot read MemTotal from /proc/meminfo")


class SlurmCluster:
    def __init__(self, start_timeout_s: float = 30.0, keep_dir: bool = False) -> None:
        self.start_timeout_s = start_timeout_s
        self.keep_dir = keep_dir
        # slurmctld only runs on the host named in SlurmctldHost: the short hostname.
        self.node = socket.gethostname().split(".")[0]
        self.dir: Path | None = None
        self._procs: dict[str, subprocess.Popen] = {}

    # -- paths -------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.dir / "run" / "munge.socket"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for Slurm clients (and, through sbatch, for jobs) that points at this
        cluster. Slurm/sbatch variables of an enclosing job are dropped so they cannot leak
        into submissions (SBATCH_* would override the script's options)."""
        env = {
            key: value
            for key, value in (os.environ if base is None else base).items()
            if not key.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))
        }
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(
            [_binary(args[0]), *args[1:]], env=self.env(), capture_output=True, text=True,
            timeout=timeout, check=check,
        )

    # -- life ----------------------------------------------------------------------------
    def start(self) -> "SlurmCluster":
        reason = missing_requirements()
        if reason:
            raise SlurmUnavailable(reason)
        # Under /tmp rather than $TMPDIR or pytest's tmp_path: munged needs every folder above
        # its socket searchable by all (pytest's are 0700), and socket paths are limited to
        # 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="mathsynth-slurm-", dir="/tmp" if os.path.isdir("/tmp") else None))
        try:
            self._write_files()
            self._start_munged()
            self._start_slurm()
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_files(self) -> None:
        # munged refuses a socket whose folders are not searchable by everyone.
        self.dir.chmod(0o755)
        for sub in ("run", "state", "spool", "log"):
            (self.dir / sub).mkdir(mode=0o755)
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)  # munged refuses a key that others can read
        d = self.dir
        self.conf.write_text(
            "\n".join([
                "ClusterName=mathsynth-test",
                f"SlurmctldHost={self.node}(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                # Our private munged, not the system one at /run/munge.
                f"AuthInfo=socket={self.munge_socket}",
                f"StateSaveLocation={d}/state",
                f"SlurmdSpoolDir={d}/spool",
                f"SlurmctldPidFile={d}/run/slurmctld.pid",
                f"SlurmdPidFile={d}/run/slurmd.pid",
                f"SlurmctldLogFile={d}/log/slurmctld.log",
                f"SlurmdLogFile={d}/log/slurmd.log",
                # No cgroups needed (containers, CI): plain process tracking, no task binding.
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                "MailProg=/bin/true",
                "ReturnToService=2",
                # Schedule at once instead of every few seconds: an array runs in ~1 s, not ~10.
                "SchedulerParameters=sched_min_interval=0,batch_sched_delay=0,bf_interval=1",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                # Finished jobs stay visible to scontrol for a while (no accounting database).
                "MinJobAge=600",
                f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={len(os.sched_getaffinity(0))} "
                f"RealMemory={int(_memory_mb() * 0.9)} State=UNKNOWN",
                f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                "",
            ])
        )

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.dir / "log" / f"{name}.stderr", "ab")
        # Foreground daemons, children of this process: their pids are known and they are
        # reaped, so nothing is left behind as a zombie or an orphan with a stale pid file.
        self._procs[name] = subprocess.Popen(
            [_binary(name), *args], env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()

    def _start_munged(self) -> None:
        d = self.dir
        self._spawn(
            "munged", "--foreground", f"--key-file={d}/munge.key", f"--socket={self.munge_socket}",
            f"--pid-file={d}/run/munged.pid", f"--log-file={d}/log/munged.log", f"--seed-file={d}/run/munged.seed",
        )
        self._wait_for(lambda: self.munge_socket.exists(), "munged to create its socket", "munged")

    def _start_slurm(self) -> None:
        # -i: ignore (absent) saved state; -D: foreground; -N: the node name slurm.conf uses.
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-N", self.node, "-f", str(self.conf))

    def _node_state(self) -> str:
        result = self.run("sinfo", "-h", "-n", self.node, "-o", "%t", check=False, timeout=10)
        return result.stdout.strip() if result.returncode == 0 else ""

    def _wait_idle(self) -> None:
        self._wait_for(lambda: self._node_state() == "idle", f"node {self.node} to be idle in sinfo")

    def _wait_for(self, ready, what: str, *daemons: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [n for n, p in self._procs.items() if p.poll() is not None and (not daemons or n in daemons)]
            if dead:
                raise SlurmStartError(f"{', '.join(dead)} exited while waiting for {what}\n{self.logs()}")
            time.sleep(0.2)
        raise SlurmStartError(
            f"timed out after {self.start_timeout_s:.0f}s waiting for {what} (last state: "
            f"{self._node_state() or 'unknown'!r})\n{self.logs()}"
        )

    def logs(self, tail_lines: int = 15) -> str:
        """The daemons' log tails, for error messages."""
        if self.dir is None:
            return ""
        parts = []
        for path in sorted((self.dir / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail_lines:]
            if lines:
                parts.append(f"--- {path}\n" + "\n".join(lines))
        return "\n".join(parts)

    def job_states(self, job_id: str) -> dict[str, str]:
        """Array task id (or a pending range such as "0-1") -> job state, from slurmctld's
        memory: no accounting database here, so no sacct (MinJobAge keeps ended jobs)."""
        result = self.run("scontrol", "-o", "show", "job", job_id, check=False, timeout=10)
        states = {}
        for line in result.stdout.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            states[fields.get("ArrayTaskId", fields.get("JobId", "?"))] = fields.get("JobState", "?")
        return states

    def wait_for_job(self, job_id: str, timeout_s: float) -> dict[str, str]:
        """Poll until every task of ``job_id`` has ended; its final states. (``sbatch --wait``
        sleeps longer and longer between polls: here an array that ended after ~12 s was
        reported after ~42 s.)"""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = self.job_states(job_id)
            if states and all(state in ENDED_STATES for state in states.values()):
                return states
            time.sleep(0.25)
        raise TimeoutError(f"job {job_id} not ended after {timeout_s:.0f}s: {self.job_states(job_id)}")

    def job_ids(self) -> list[str]:
        result = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
        return result.stdout.split() if result.returncode == 0 else []

    def cancel_all_jobs(self, timeout: float = 15.0) -> None:
        """Cancel every job (the cluster is private: they are all ours) and wait until gone."""
        deadline = time.monotonic() + timeout
        while (jobs := self.job_ids()) and time.monotonic() < deadline:
            self.run("scancel", *jobs, check=False, timeout=10)
            time.sleep(0.5)

    def stop(self) -> None:
        """``scontrol shutdown`` stops slurmctld and slurmd; munged is stopped by the pid in
        its pid file. A daemon that does not exit in time is killed by its own pid."""
        if self.dir is None:
            return
        slurm = [self._procs[n] for n in ("slurmctld", "slurmd") if n in self._procs]
        if any(p.poll() is None for p in slurm):
            try:
                # Jobs outlive slurmd (slurmstepd runs them), so cancel what a failed test left.
                self.cancel_all_jobs()
                self.run("scontrol", "shutdown", check=False, timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for proc in slurm:
            _wait_or_kill(proc)
        munged = self._procs.get("munged")
        pid_file = self.dir / "run" / "munged.pid"
        if munged is not None and munged.poll() is None:
            pid = int(pid_file.read_text().strip()) if pid_file.exists() else munged.pid
            if pid == munged.pid:  # never signal a pid we did not start
                os.kill(pid, signal.SIGTERM)
            _wait_or_kill(munged)
        self._procs.clear()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_or_kill(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # Popen.kill signals proc.pid only: the daemon this object started
        proc.wait(timeout=5)


def slurm_cluster_or_skip(**kwargs) -> SlurmCluster:
    """Start a cluster, or pytest.skip with the reason when this machine cannot run one."""
    import pytest

    try:
        return SlurmCluster(**kwargs).start()
    except SlurmUnavailable as reason:
        pytest.skip(str(reason))
