"""Throughput benchmark: our full training stack (DeepSpeed engine) vs a bare PyTorch loop.

    python -m pretrain.bench.train [--steps 4] [--rounds 3] [hydra overrides ...]
    python -m pretrain.bench.train --engines [...]   # accelerate vs DeepSpeed instead (pretrain.bench.engines)

Same model (a ~30M-parameter GPT-2 style model by default), same initial weights, same AdamW, same
batches, same process. With one process there is nothing to shard and the engine runs ZeRO stage 0
whatever ``parallel.zero_stage`` says (see ``pretrain.engines.base.batch_plan``), unless offload is on.
Steps alternate between the two in rounds so that drift of the machine (thermal, other load) hits both
alike. Prints tokens/s, TFLOP/s and MFU of each and the ratio ours / bare.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
from hydra import compose, initialize_config_dir

from pretrain.config import register_configs
from pretrain.flops import check_mfu, forget_cpu_peak, gpt_flops_per_token, peak_flops_per_device
from pretrain.optim import lr_lambda, param_groups
from pretrain.trainer import Trainer

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "conf")
DEFAULTS = [
    "model=gpt/tiny", "model.num_layers=8", "model.hidden_size=512", "model.num_attention_heads=8",
    "model.seq_length=256", "model.vocab_size=8192", "trainer.micro_batch_size=4",
    "trainer.max_steps=1000", "run_dir=/tmp/pretrain-bench",
]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round and per side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--engines", action="store_true", help="accelerate vs DeepSpeed tokens/s (pretrain.bench.engines)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    a = ap.parse_args(argv)
    if a.engines:
        from pretrain.bench.engines import compare_engines

        return compare_engines(a.overrides, a.steps, a.rounds, a.warmup, a.json)

    register_configs()
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfg = compose("train", overrides=DEFAULTS + a.overrides)
    # Our side is built exactly as a training run builds it (the Trainer's plan and build phases); the bare
    # side starts from a copy of the same seeded model, before the engine takes it.
    trainer = Trainer(cfg).plan()
    ours_model = trainer.build_model()
    device, precision, plan, args = trainer.device, trainer.precision, trainer.batch, trainer.args
    bare_model = copy.deepcopy(ours_model).to(device)
    trainer.build_engine()
    engine = trainer.engine

    o = cfg.optim
    opt = torch.optim.AdamW(
        param_groups(bare_model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
        fused=device.type == "cuda", foreach=None if device.type == "cuda" else True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.sched, cfg.trainer.max_steps))
    # bf16: the bare loop uses the usual recipe (fp32 weights + autocast); ours DeepSpeed's bf16 engine.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    g = torch.Generator().manual_seed(0)
    shape = (plan.micro_batch_size, args.seq_length)
    batches = [torch.randint(0, args.vocab_size, shape, generator=g) for _ in range(8)]

    def ours_step(i: int) -> float:
        x = batches[i % len(batches)].to(device)
        loss = engine.forward({"input_ids": x, "labels": x})
        engine.backward(loss)
        engine.step()
        return loss.item()

    def bare_step(i: int) -> float:
        x = batches[i % len(batches)].to(device)
        with autocast:
            loss = bare_model(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), o.clip_grad)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    def timed(fn, n: int, offset: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for i in range(n):
            fn(offset + i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    timed(ours_step, a.warmup, 0)
    timed(bare_step, a.warmup, 0)
    t_ours = t_bare = 0.0
    for r in range(a.rounds):
        first, second = (ours_step, bare_step) if r % 2 == 0 else (bare_step, ours_step)
        t1 = timed(first, a.steps, r * a.steps)
        t2 = timed(second, a.steps, r * a.steps)
        if first is ours_step:
            t_ours, t_bare = t_ours + t1, t_bare + t2
        else:
            t_ours, t_bare = t_ours + t2, t_bare + t1

    n_steps = a.steps * a.rounds
    tokens = n_steps * plan.micro_batch_size * args.seq_length
    flops = gpt_flops_per_token(args)["model"]
    peak, peak_src = peak_flops_per_device(device, precision, cfg.trainer.peak_flops_per_device)
    n_params = sum(p.numel() for p in bare_model.parameters())
    res = {}
    for name, t in (("deepspeed", t_ours), ("bare_pytorch", t_bare)):
        tok_s = tokens / t
        res[name] = {"tokens_per_s": tok_s, "tflops": flops * tok_s / 1e12, "mfu": flops * tok_s / peak}
    res["ratio"] = res["deepspeed"]["tokens_per_s"] / res["bare_pytorch"]["tokens_per_s"]
    res["setup"] = {
        "parameters": n_params, "device": str(device), "precision": precision, "zero_stage": plan.zero_stage,
        "micro_batch": plan.micro_batch_size, "seq_length": args.seq_length, "timed_steps": n_steps,
        "peak_flops": peak, "peak_source": peak_src, "threads": torch.get_num_threads(),
    }
    print(f"model: {n_params / 1e6:.1f}M parameters, {args.num_layers} layers x {args.hidden_size}, seq {args.seq_length}, "
          f"micro batch {plan.micro_batch_size}, {precision}, ZeRO-{plan.zero_stage}, {device}, "
          f"{n_steps} timed steps each; peak {peak / 1e12:.3f} TFLOP/s ({peak_src})")
    print(f"{'':14}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}")
    for name in ("deepspeed", "bare_pytorch"):
        r = res[name]
        print(f"{name:14}{r['tokens_per_s']:12.1f}{r['tflops']:10.4f}{100 * r['mfu']:7.1f}%")
    print(f"ratio deepspeed / bare_pytorch tokens/s: {res['ratio']:.3f} (target >= 0.95)")
    warning = check_mfu(max(res["deepspeed"]["mfu"], res["bare_pytorch"]["mfu"]), peak_src)
    if warning:  # the ratio stands (same run, same peak); the MFU columns do not
        dropped = "cached in" in peak_src and forget_cpu_peak(precision)
        print(f"warning: {warning}" + ("; the cached CPU peak is dropped, rerun to re-measure" if dropped else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    trainer.stop_request.close()
    torch.distributed.destroy_process_group()
    return res


if __name__ == "__main__":
    main()
