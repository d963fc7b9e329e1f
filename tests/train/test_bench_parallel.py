"""The parallelism benchmark (pretrain.bench.parallel): its byte counting, and a --tiny run end to end.

Byte counts are deterministic (tensor storages, not a memory profiler), so their ratios are asserted; the
step-time ratio is only checked to be a number.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import once_lock, shared_tmp
from pretrain.bench.parallel import model_state_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.randn(3, 8)).sum().backward()
    opt.step()


def test_model_state_bytes_plain_optimizer():
    """Stage 0 fp32: the optimizer steps the parameters themselves; no master copy."""
    model = nn.Linear(8, 16)
    opt = torch.optim.AdamW(model.parameters(), foreach=True)
    _step(model, opt)
    n = sum(p.numel() for p in model.parameters())
    b = model_state_bytes(SimpleNamespace(module=model, optimizer=opt))
    assert b["params"] == b["grads"] == 4 * n
    assert b["master"] == 0
    assert b["optimizer"] == 8 * n + 4 * len(list(model.parameters()))  # exp_avg, exp_avg_sq, step per param


def test_model_state_bytes_zero_like_wrapper_dedupes_views():
    """A ZeRO-1/2-like layout: parameters are views of one flat buffer (counted once, with its padding), a
    master partition the base optimizer steps, a gradient partition and a communication bucket."""
    model = nn.Linear(8, 16)
    n = sum(p.numel() for p in model.parameters())
    flat = torch.zeros(n + 8)  # alignment padding
    off = 0
    for p in model.parameters():
        p.data = flat[off : off + p.numel()].view_as(p)
        off += p.numel()
    master = nn.Parameter(torch.zeros(n // 2))
    base = torch.optim.AdamW([master], foreach=True)
    master.grad = torch.zeros_like(master)
    base.step()

    class Wrapper:
        pass

    w = Wrapper()
    w.optimizer = base
    w.bit16_groups_flat = [flat]
    w.bit16_groups = [list(model.parameters())]
    w.single_partition_of_fp32_groups = [master]
    w.averaged_gradients = {0: [torch.zeros(n // 2)]}
    w.ipg_buckets = {torch.float32: SimpleNamespace(buffer=None)}  # not a dataclass: not walked
    w.ipg_buffer = [torch.empty(1000)]
    sources: dict[str, int] = {}
    b = model_state_bytes(SimpleNamespace(module=model, optimizer=w), sources)
    assert b["params"] == 4 * (n + 8)
    assert b["master"] == 4 * (n // 2)
    assert b["grads"] == 4 * (n // 2) * 2  # averaged_gradients + the master's .grad
    assert b["optimizer"] == 8 * (n // 2) + 4
    assert b["buffers"] == 4000
    assert sources["grads <- averaged_gradients"] == 4 * (n // 2)


def tiny_bench(tmp_path_factory) -> tuple[dict, str, float]:
    """(JSON result, stdout, seconds) of ``pretrain.bench.parallel --tiny``, run once per test session: its byte
    counts are also what tests/train/test_plan.py checks the planner's predictions against."""
    base = shared_tmp(tmp_path_factory)
    out, text = base / "bench_parallel_tiny.json", base / "bench_parallel_tiny.stdout"
    with once_lock(out):  # one run for every xdist worker
        if not out.exists():
            env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
            t0 = time.perf_counter()
            partial = out.with_suffix(".partial")  # out appears last, once the run has passed: the "done" mark
            proc = subprocess.run([sys.executable, "-m", "pretrain.bench.parallel", "--tiny", "--json", str(partial)],
                                  cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            elapsed = time.perf_counter() - t0
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
            text.write_text(proc.stdout)
            (base / "bench_parallel_tiny.seconds").write_text(str(elapsed))
            partial.replace(out)
    return json.loads(out.read_text()), text.read_text(), float((base / "bench_parallel_tiny.seconds").read_text())


@pytest.mark.slow
def test_bench_parallel_tiny(tmp_path_factory):
    res, text, elapsed = tiny_bench(tmp_path_factory)
    for needle in ("ZeRO-3 dp2/dp1 model-state bytes per rank", "tp2/tp1 step time", "dp2/dp1", "opt.st."):
        assert needle in text, text
    n = res["parameters"]

    bf16, fp32 = res["memory"]["bf16"], res["memory"]["fp32"]
    # dp1 baseline (ZeRO-0): every kind held whole, exactly the bytes per parameter of each precision
    assert bf16["dp1"]["stage"] == fp32["dp1"]["stage"] == 0
    expected = ((bf16, {"params": 2, "grads": 2, "master": 4}), (fp32, {"params": 4, "grads": 4, "master": 0}))
    for mem, per_param in expected:
        b = mem["dp1"]["bytes"]
        for kind, k in per_param.items():
            assert b[kind] == k * n, (kind, b)
        assert 8 * n <= b["optimizer"] <= 8 * n + 4 * 1000  # exp_avg + exp_avg_sq (+ 4-byte step counters)
    # ZeRO at dp2: the stages actually run, Adam states halved
    for mem in (bf16, fp32):
        for s in (1, 2, 3):
            r = mem[f"zero{s}_dp2"]
            assert r["stage"] == s
            assert r["ratio_by_kind"]["optimizer"] == pytest.approx(0.5, abs=0.01)
            assert r["ratio"] < 1
    # bf16 (mixed precision, ZeRO's setting): optimizer states (fp32 master + Adam) halve from ZeRO-1 on;
    # ZeRO-3 partitions params and grads too: ~0.5 of dp1, within the 0.6
    assert bf16["zero1_dp2"]["ratio_optimizer_states"] == pytest.approx(0.5, abs=0.01)
    assert bf16["zero3_dp2"]["ratio"] <= 0.6
    assert bf16["zero3_dp2"]["bytes"]["params"] < 0.6 * bf16["dp1"]["bytes"]["params"]
    # fp32: DeepSpeed keeps an fp32 master partition beside the fp32 parameters -> 20/16 x 1/2 = 0.625 at ZeRO-3
    assert fp32["zero3_dp2"]["ratio"] <= 0.65
    assert fp32["zero1_dp2"]["bytes"]["master"] == pytest.approx(2 * n, rel=0.01)

    t = res["timing"]
    assert math.isfinite(t["ratio"]) and t["ratio"] > 0
    assert t["tp1"]["threads"] == 2 and t["tp2"]["threads"] == 1
    assert t["first_loss_rel_diff"] < 1e-5  # same initial weights and batch at tp1 and tp2
    print(f"bench --tiny: {elapsed:.1f} s")
