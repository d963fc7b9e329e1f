"""A real one-node SLURM cluster on localhost for the tests: install, start, wait until idle, stop by PID.

Debian's ``slurmctld slurmd slurm-client munge`` packages, no systemd: ``munged`` runs as the munge user,
``slurmctld`` and ``slurmd -N localhost`` as root, every state/spool/pid/log path in a private temp dir, and
the client tools find the cluster through ``SLURM_CONF``. Nothing listens on anything but 127.0.0.1 ports
chosen free at start. Where root or apt is missing, :func:`unavailable_reason` says why and the tests skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ports import free_port

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged"]


def _free_port() -> int:
    return free_port()  # tests/ports.py: below the ephemeral range, this xdist worker's own slice


def _have_binaries() -> bool:
    return all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in BINARIES)


def unavailable_reason() -> str | None:
    """None when a cluster can be started here (binaries present, or root + apt-get to install them)."""
    if _have_binaries() and os.geteuid() == 0:
        return None
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd runs jobs as their user and munged must own /run/munge)"
    if not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is missing to install slurmctld slurmd slurm-client munge"
    return None


def install() -> None:
    if _have_binaries():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env,
                   capture_output=True, timeout=600)


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class Cluster:
    root: Path
    conf: Path
    cpus: int
    pids: dict[str, Path] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout: int = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=dict(os.environ, **self.env), capture_output=True, text=True,
                              check=check, timeout=timeout)

    def job_state(self, job_id: str) -> str:
        out = self.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
        return out or "GONE"

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            p = self.run("sinfo", "-h", "-o", "%T", check=False)
            last = (p.stdout + p.stderr).strip()
            if p.returncode == 0 and last.startswith("idle"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the local SLURM node did not become idle in {timeout}s (sinfo: {last!r}); "
                           f"logs in {self.root}")

    def leftover_pids(self) -> list[int]:
        """Processes of this cluster still alive: those whose environment holds its ``SLURM_CONF`` (job steps
        and what they started; found by PID in /proc, never by name, so no other cluster's)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                env = Path("/proc", entry, "environ").read_bytes()
            except OSError:  # gone, or not ours to read
                continue
            if mark in env.split(b"\0"):
                found.append(int(entry))
        return found

    def stop(self) -> None:
        """Cancel the jobs still queued or running, stop the daemons by the PIDs in their pid files (never by
        name), slurmd first, then end what is left of the jobs' steps (a ``slurmstepd`` outlives its slurmd)."""
        try:
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", "--full", *jobs, check=False)
                deadline = time.time() + 15
                while time.time() < deadline and self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                    time.sleep(0.3)
        except (subprocess.TimeoutExpired, OSError):  # a hung controller: the daemons are stopped all the same
            pass
        self._stop_daemons()
        killed = self.leftover_pids()
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10  # a killed process stays readable in /proc until it has exited
        while killed and time.time() < deadline:
            killed = [pid for pid in killed if pid in self.leftover_pids()]
            time.sleep(0.1)

    def _stop_daemons(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            pidfile = self.pids.get(name)
            if not pidfile or not pidfile.exists():
                continue
            try:
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (ValueError, ProcessLookupError, IndexError):
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def start(root: Path) -> Cluster:
    """Write slurm.conf and munge's dirs under ``root`` and start munged, slurmctld and slurmd."""
    root.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    mem_mb = 1024
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = max(256, int(line.split()[1]) // 1024 - 1024)
    except OSError:
        pass
    for d in ("state", "spool", "log", "munge"):
        (root / d).mkdir(exist_ok=True)
    munge = pwd.getpwnam("munge")
    for d in (root / "munge", Path("/run/munge")):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, munge.pw_uid, munge.pw_gid)
    os.chmod(root, 0o755)
    ctl_port, d_port = _free_port(), _free_port()
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=pretraintest
SlurmctldHost=localhost
SlurmctldPort={ctl_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again after cred_expire seconds (default 120): short here so requeue tests are quick
AuthInfo=cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MinJobAge=4
KillWait=5
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_interval=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    cluster = Cluster(root, conf, cpus, pids={
        "munged": root / "munge" / "munged.pid", "slurmctld": root / "slurmctld.pid", "slurmd": root / "slurmd.pid",
    })
    env = dict(os.environ, SLURM_CONF=str(conf))
    def daemon(cmd: list[str]) -> None:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()}; logs in {root}")

    try:
        daemon(["runuser", "-u", "munge", "--", _sbin("munged"), "--pid-file", str(cluster.pids["munged"]),
                "--log-file", str(root / "munge" / "munged.log"), "--seed-file", str(root / "munge" / "seed"), "--force"])
        daemon([_sbin("slurmctld"), "-i"])
        daemon([_sbin("slurmd"), "-N", "localhost"])
        cluster.wait_idle()
    except BaseException:
        cluster.stop()
        raise
    return cluster
