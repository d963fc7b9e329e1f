"""DeepSpeed's own checkpoint files under the weights-only loader: every ZeRO stage, bf16 and a pipeline
module save through pretrain.checkpoint.save and load back through pretrain.checkpoint.load (the allow-list
covers what their files hold), export reads ZeRO checkpoints through zero_to_fp32 under the same guard, and
a crafted optimizer file in torch's legacy format (which the opcode scan cannot read) is refused by the
loader itself. One subprocess: a process group of one, built and torn down away from the test session."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, _free_port

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, sys
from pathlib import Path
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", DS_ACCELERATOR="cpu")
import torch, deepspeed
sys.path.insert(0, sys.argv[2])
from ckpt_helpers import craft
from pretrain import checkpoint as ckpt, export
from pretrain.core.errors import CheckpointError
from pretrain.distributed import skip_shm_inference_op

skip_shm_inference_op()  # as the trainer does on CPU: no JIT build of an op that only inference uses
deepspeed.init_distributed(dist_backend="gloo")
out, results = Path(sys.argv[1]), {}


def engine(stage, bf16, pipe, seed):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)]
    if pipe:
        from deepspeed.pipe import PipelineModule
        model = PipelineModule(layers, num_stages=1, loss_fn=lambda o, y: ((o - y) ** 2).mean())
    else:
        model = torch.nn.Sequential(*layers)
    cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
           "zero_optimization": {"stage": stage}, "bf16": {"enabled": bf16}}
    eng, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    return eng


def step(eng, bf16, pipe):
    dt = torch.bfloat16 if bf16 else torch.float32
    x, y = torch.randn(2, 8, dtype=dt), torch.randn(2, 1, dtype=dt)
    if pipe:
        return float(eng.train_batch(iter([(x, y)])))
    loss = ((eng(x) - y) ** 2).mean()
    eng.backward(loss)
    eng.step()
    return float(loss)


def params(eng):
    if hasattr(eng.module.parameters().__next__(), "ds_id"):  # ZeRO-3: gather the partitioned weights
        with deepspeed.zero.GatheredParameters(list(eng.module.parameters())):
            return [p.detach().float().clone() for p in eng.module.parameters()]
    return [p.detach().float().clone() for p in eng.module.parameters()]


for stage, bf16, pipe in [(0, False, False), (0, True, False), (1, False, False), (1, True, False),
                          (2, False, False), (2, True, False), (3, False, False), (3, True, False), (1, False, True)]:
    name = f"zero{stage}{'-bf16' if bf16 else ''}{'-pipe' if pipe else ''}"
    ckpt_dir = out / name
    a = engine(stage, bf16, pipe, seed=0)
    step(a, bf16, pipe)
    state = {"step": 1, "consumed_samples": 2, "world_size": 1, "zero_stage": stage}
    ckpt.save(a, ckpt_dir, 1, state, rank=0, keep_last=2)
    torch.manual_seed(1)
    next_a = step(a, bf16, pipe)  # the step after the checkpoint, from the saved weights and optimizer
    b = engine(stage, bf16, pipe, seed=123)  # other weights
    tag = ckpt.resolve_resume("auto", ckpt_dir)[1]
    loaded, rng = ckpt.load(b, ckpt_dir, tag, rank=0, world_size=1)
    torch.manual_seed(1)
    next_b = step(b, bf16, pipe)
    r = {"tag": tag, "step": loaded["step"], "rng": rng is not None, "same_next_loss": next_a == next_b,
         "same_weights": all(torch.equal(p, q) for p, q in zip(params(a), params(b)))}
    if stage >= 1 and not pipe:
        sd = export.consolidated_state_dict(export.Source(ckpt_dir, tag, state))  # zero_to_fp32, guarded
        r["export_keys"] = sorted(sd)
    results[name] = r

# a crafted ZeRO optimizer file in the legacy (non-zip) format: only the forced weights-only load stops it
victim = out / "zero1" / "step_000001" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
marker = out / "PWNED"
craft(victim, marker, legacy=True)
try:
    ckpt.load(engine(1, False, False, seed=5), out / "zero1", "step_000001", rank=0, world_size=1)
    results["crafted"] = "loaded"
except CheckpointError as e:
    results["crafted"] = str(e)
results["marker"] = marker.exists()
print("RESULTS " + json.dumps(results))
"""


def test_deepspeed_checkpoints_of_every_stage_load_weights_only_and_a_crafted_one_is_refused(tmp_path, train_env):
    env = dict(train_env, MASTER_PORT=str(_free_port()))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(REPO / "tests" / "faults")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-3000:], proc.stderr[-5000:])
    results = json.loads(lines[-1][len("RESULTS "):])
    for name, r in results.items():
        if name in ("crafted", "marker"):
            continue
        assert r["tag"] == "step_000001" and r["step"] == 1 and r["rng"], (name, r)
        assert r["same_weights"] and r["same_next_loss"], (name, r)
        if "export_keys" in r:
            assert r["export_keys"] == ["0.bias", "0.weight", "2.bias", "2.weight"], (name, r)
    assert len(results) == 11
    victim = tmp_path / "zero1" / "step_000001" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert results["crafted"].startswith(f"refusing to load {victim}"), results["crafted"]
    assert "posix.system" in results["crafted"] and results["marker"] is False
