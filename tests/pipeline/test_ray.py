"""``executor=ray`` on a real local Ray cluster: the local executor's bytes, a killed worker's task retried,
and the completion markers a dead driver left respected (only what is missing is done).

Ray binds the machine's external interface unless only loopback exists, so the cluster, the driver and
everything they start run inside fresh network *and* PID namespaces (``unshare -n -p -f -m --mount-proc``,
root only): there ``ip link set lo up`` leaves 127.0.0.1 as the only address, ``ray stop`` sees only the
namespace's processes, and the kernel ends whatever is left in the namespace when its shell exits. Where PID
namespaces are refused, a network namespace alone, and the test kills the processes in it by PID. One
cluster (2 CPUs, a small object store, no dashboard) and one driver run (tests/pipeline/ray_driver.py) serve
the module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipelines.config import validate
from pretrain.core.errors import ConfigError

from .test_run import _compose, _overrides, tree_hashes

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# What a driver killed in the middle of the run leaves: two parts read (and their signatures), a temporary
# file of a third part half written.
SEEDED = ("work/read/alpha/part-00000", "work/signatures/alpha/part-00000", "work/markers/read/alpha/part-00000",
          "work/markers/signatures/alpha/part-00000", "work/read/beta/part-00000", "work/markers/read/beta/part-00000")
STALE = "work/read/alpha/part-00001.parquet.tmp-99999"


PID_NS = ["unshare", "-n", "-p", "-f", "--kill-child", "-m", "--mount-proc"]  # network + PID namespaces
NET_NS = ["unshare", "-n"]  # network only: Ray is then stopped by the PIDs of the namespace's processes


def _namespace() -> tuple[list[str] | None, str]:
    """The ``unshare`` command to run the cluster in, or None and why not."""
    if not sys.platform.startswith("linux"):
        return None, "needs Linux network namespaces (unshare -n)"
    if os.geteuid() != 0:
        return None, "needs root for unshare -n (a private network namespace, so Ray binds only 127.0.0.1)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None, "needs unshare (util-linux) and ip (iproute2)"
    if importlib.util.find_spec("ray") is None:
        return None, "ray is not installed (pip install 'ray>=2.40')"
    errors = []
    for cmd in (PID_NS, NET_NS):
        probe = subprocess.run([*cmd, "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
        if probe.returncode == 0:
            return cmd, ""
        errors.append(probe.stderr.strip()[:200])
    return None, f"unshare -n cannot run here: {errors}"


UNSHARE, WHY_NOT = _namespace()
needs_cluster = pytest.mark.skipif(UNSHARE is None, reason=WHY_NOT)


def _kill_namespace(netns: str) -> None:
    """SIGKILL, by PID, every process in the network namespace ``netns`` (``net:[inode]``): only this test's."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.readlink(f"/proc/{entry}/ns/net") == netns:
                    os.kill(int(entry), 9)
            except OSError:
                pass


def _seed(reference: Path, out: Path) -> dict[str, int]:
    """Copy the seeded units from the local run; returns their files' mtimes."""
    (out / "work").mkdir(parents=True)
    shutil.copy2(reference / "work" / "plan.json", out / "work" / "plan.json")
    mtimes = {}
    for rel in tree_hashes(reference):
        if rel.startswith(SEEDED):
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(reference / rel, dst)
            mtimes[rel] = dst.stat().st_mtime_ns
    (out / STALE).write_bytes(b"PAR1 half a file")
    return mtimes


@pytest.fixture(scope="module")
def ray_run(corpus, reference, tmp_path_factory) -> dict:
    """One namespace: ``ray start``, the driver over the seeded output directory, ``ray stop``."""
    tmp = tmp_path_factory.mktemp("ray")
    out, flag = tmp / "out", tmp / "killed-worker"
    seeded = _seed(reference, out)
    temp_dir = Path("/tmp") / f"ray-test-{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
    ray_bin = str(Path(sys.executable).with_name("ray"))
    q = shlex.join
    start = q([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", "6380", "--num-cpus", "2",
               "--object-store-memory", str(100 * 2**20), "--include-dashboard=false", "--disable-usage-stats",
               "--temp-dir", str(temp_dir)])
    driver = q([sys.executable, str(HERE / "ray_driver.py"), "127.0.0.1:6380", str(out), str(corpus["alpha"]),
                str(corpus["beta"]), str(flag)])
    script = "\n".join([
        f"readlink /proc/$$/ns/net > {tmp}/netns",
        "ip link set lo up",
        f"{start} > {tmp}/ray-start.log 2>&1 || {{ cat {tmp}/ray-start.log; exit 3; }}",
        f"{driver} > {tmp}/driver.out 2> {tmp}/driver.err",
        f"echo $? > {tmp}/driver.rc",
        # in a PID namespace `ray stop` sees only the namespace's processes; the test kills by PID otherwise
        f"{q([ray_bin, 'stop', '--force'])} > /dev/null 2>&1" if UNSHARE == PID_NS else "true",
    ])
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run([*UNSHARE, "bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    finally:
        netns = (tmp / "netns").read_text().strip() if (tmp / "netns").exists() else ""
        if netns and netns != os.readlink("/proc/self/ns/net"):
            _kill_namespace(netns)  # whatever is left of the cluster (nothing, after ray stop in a PID namespace)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "flag": flag, "seeded": seeded, "rc": (tmp / "driver.rc").read_text().strip(),
            "stdout": (tmp / "driver.out").read_text(), "stderr": (tmp / "driver.err").read_text()}


@needs_cluster
def test_ray_gives_the_local_bytes_after_a_killed_worker_and_skips_what_is_done(ray_run, reference):
    r = ray_run
    err = r["stderr"]
    assert r["rc"] == "0", err[-4000:]
    assert "ray: 127.0.0.1:6380" in err  # the driver joined the namespace's cluster, on loopback
    # the first read task killed its worker; Ray ran it again and the part is complete
    killed = r["flag"].read_text()
    assert killed in ("alpha/part-00001", "alpha/part-00002", "alpha/part-00003", "beta/part-00001"), killed
    source, name = killed.split("/")
    assert (r["out"] / "work" / "markers" / "read" / source / f"{name}.done.json").exists()
    # the units the dead driver had finished were not redone, its half-written file was cleared
    assert "stage read: 2 parts already complete, 4 to do" in err
    assert "stage signatures: 1 parts already complete, 5 to do" in err
    for rel, mtime in r["seeded"].items():
        assert (r["out"] / rel).stat().st_mtime_ns == mtime, rel
    summary = json.loads(r["stdout"].strip().splitlines()[-1])
    assert summary["complete"]
    assert summary["error"] == "DataError: part 7: not a corpus"
    assert summary["died"].startswith("stage dies: the task of dies failed 1 time(s) (executor.max_retries=0)")
    runs = {t["stage"]: t["tasks_run"] for t in summary["timings"]}
    assert runs["read"] == 4 and runs["documents"] == 6 and runs["report"] == 1, runs
    for stage in ("read", "signatures", "tokenize"):  # a progress bar per stage, fed by the tasks
        assert f"{stage}: 100%" in err, err[-3000:]
    assert tree_hashes(r["out"]) == tree_hashes(reference)  # byte for byte the local executor's output


def test_the_ray_preset_and_its_keys_are_checked_before_any_work(corpus, tmp_path):
    cfg = _compose(_overrides(corpus, tmp_path / "o", "executor=ray", "executor.address=head:6379"))
    ex = cfg.executor
    assert (ex.backend, ex.address, ex.max_retries, ex.cpus_per_task) == ("ray", "head:6379", 3, 1.0)
    for key, bad in (("backend", "spark"), ("max_retries", -1), ("cpus_per_task", 0), ("split_min_mb", -1)):
        wrong = cfg.copy()
        wrong.executor[key] = bad
        with pytest.raises(ConfigError, match=f"executor.{key}"):
            validate(wrong)
    assert not (tmp_path / "o").exists()


def test_progress_counts_only_the_latest_attempt_of_a_task():
    """A retried task starts over: the documents its killed attempt reported are taken back from the stage's
    progress when the next attempt first reports, so the bar ends at the real total."""
    from data_pipelines.executor.ray import _AttemptCounts

    a, b, c, x = (1, "a"), (2, "b"), (3, "c"), (1, "x")  # attempts by start time
    counts = _AttemptCounts()
    deltas = [counts.add(0, a, 5, 1), counts.add(1, x, 3, 1), counts.add(0, a, 2, 0),
              counts.add(0, b, 4, 1),  # task 0 again, on a new worker: its 7 documents and 1 unit taken back
              counts.add(0, b, 3, 0), counts.add(1, x, 0, 0),
              counts.add(0, a, 9, 1)]  # a late report of the killed attempt: ignored
    assert deltas == [(5, 1), (3, 1), (2, 0), (4 - 7, 1 - 1), (3, 0), (0, 0), (0, 0)]
    assert sum(d for d, _ in deltas) == 7 + 3 and sum(u for _, u in deltas) == 2
    # the retry's report first, then one the killed attempt sent before it died (from another process, so in
    # no set order): the retry's counts stand; and an attempt that never reported before a later one did
    counts = _AttemptCounts()
    deltas = [counts.add(0, c, 5, 1), counts.add(0, b, 3, 3), counts.add(0, a, 1, 1), counts.add(0, c, 95, 0)]
    assert deltas == [(5, 1), (0, 0), (0, 0), (95, 0)] and sum(d for d, _ in deltas) == 100
