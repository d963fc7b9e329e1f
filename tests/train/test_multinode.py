"""Two "nodes" on one machine: two torchrun launchers (--nnodes 2, c10d rendezvous on localhost) train one
tiny job together, the code path of two real nodes (the launch in slurm/train.sbatch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, TINY, _free_port, losses_by_step

pytestmark = pytest.mark.slow


def test_two_launchers_with_c10d_rendezvous_on_localhost_train_one_job(tmp_path, train_env):
    run_dir = tmp_path / "run"
    port = _free_port()
    launcher = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes", "-m", "pretrain.train",
        *TINY, f"run_dir={run_dir}", "trainer.max_steps=4", "parallel=zero2",
    ]
    procs = [subprocess.Popen(launcher, cwd=REPO, env=train_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-3000:] for o in outs)
    assert any("on 2 x cpu (gloo)" in o for o in outs)  # one world of two processes, not two worlds of one
    assert sorted(losses_by_step(run_dir)) == [1, 2, 3, 4]
    state = json.loads((run_dir / "checkpoints" / "step_000004" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["zero_stage"] == 2
    # ZeRO-2 optimizer shards of both ranks were written into the one checkpoint
    assert len(list((run_dir / "checkpoints" / "step_000004").glob("*optim_states.pt"))) == 2
