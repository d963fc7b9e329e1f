"""Throughput benchmark: our full training stack (DeepSpeed engine) vs a bare PyTorch loop, with and without
``trainer.compile``, and against a plain Hugging Face ``GPT2LMHeadModel`` training loop.

    python -m pretrain.bench.train [--steps 4] [--rounds 3] [--no-compile] [--no-hf] [hydra overrides ...]
    python -m pretrain.bench.train --engines [...]   # accelerate vs DeepSpeed instead (pretrain.bench.engines)

Same model (a ~30M-parameter GPT-2 style model by default), same initial weights, same AdamW, same
batches, same process. With one process there is nothing to shard and the engine runs ZeRO stage 0
whatever ``parallel.zero_stage`` says (see ``pretrain.engines.base.batch_plan``), unless offload is on.
Steps alternate between the sides in rounds so that drift of the machine (thermal, other load) hits all
alike. Prints tokens/s, TFLOP/s and MFU of each and the ratio ours / bare.

Two more sides, on by default (``--no-compile``, ``--no-hf`` leave them out): ``deepspeed_compiled``, a second
engine of the same kind over another copy of the same model with ``trainer.compile=true`` (the engine compiles
each transformer block, :mod:`pretrain.models.compile`; its warm-up holds the compilation, reported apart), and
``hf_gpt2``, a plain loop (AdamW, clipping, the LR schedule, autocast under bf16) over Hugging Face's
``GPT2LMHeadModel`` (``LlamaForCausalLM`` for a LLaMA-style model) of the same shape, SDPA attention, loaded
with the same initial weights through the export adapter. Ratios: compiled / eager, and each of ours / HF.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

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
    ap.add_argument("--no-compile", action="store_true", help="leave out the trainer.compile=true side")
    ap.add_argument("--no-hf", action="store_true", help="leave out the Hugging Face GPT2LMHeadModel side")
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
    compiled_model = None if a.no_compile else copy.deepcopy(ours_model)
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

    sides = {"deepspeed": engine_step(engine, batches, device), "bare_pytorch": bare_step}
    if compiled_model is not None:
        sides["deepspeed_compiled"] = engine_step(compiled_engine(trainer, compiled_model), batches, device)
    if not a.no_hf:
        sides["hf_gpt2"] = hf_step(trainer, bare_model, batches, precision)
    warmup_s = {name: timed(fn, a.warmup, 0) for name, fn in sides.items()}  # the compiled side compiles here
    spent = dict.fromkeys(sides, 0.0)
    names = list(sides)
    for r in range(a.rounds):  # each round starts with another side
        for name in names[r % len(names):] + names[:r % len(names)]:
            spent[name] += timed(sides[name], a.steps, r * a.steps)

    n_steps = a.steps * a.rounds
    tokens = n_steps * plan.micro_batch_size * args.seq_length
    flops = gpt_flops_per_token(args)["model"]
    peak, peak_src = peak_flops_per_device(device, precision, cfg.trainer.peak_flops_per_device)
    n_params = sum(p.numel() for p in bare_model.parameters())
    res = {}
    for name, t in spent.items():
        tok_s = tokens / t
        res[name] = {"tokens_per_s": tok_s, "tflops": flops * tok_s / 1e12, "mfu": flops * tok_s / peak,
                     "warmup_s": warmup_s[name]}
    res["ratio"] = res["deepspeed"]["tokens_per_s"] / res["bare_pytorch"]["tokens_per_s"]
    res.update(side_ratios(res))
    res["setup"] = {
        "parameters": n_params, "device": str(device), "precision": precision, "zero_stage": plan.zero_stage,
        "micro_batch": plan.micro_batch_size, "seq_length": args.seq_length, "timed_steps": n_steps,
        "peak_flops": peak, "peak_source": peak_src, "threads": torch.get_num_threads(),
    }
    print(f"model: {n_params / 1e6:.1f}M parameters, {args.num_layers} layers x {args.hidden_size}, seq {args.seq_length}, "
          f"micro batch {plan.micro_batch_size}, {precision}, ZeRO-{plan.zero_stage}, {device}, "
          f"{n_steps} timed steps each; peak {peak / 1e12:.3f} TFLOP/s ({peak_src})")
    print(f"{'':20}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'warm-up s':>11}")
    for name in spent:
        r = res[name]
        print(f"{name:20}{r['tokens_per_s']:12.1f}{r['tflops']:10.4f}{100 * r['mfu']:7.1f}%{r['warmup_s']:11.1f}")
    print(f"ratio deepspeed / bare_pytorch tokens/s: {res['ratio']:.3f} (target >= 0.95)")
    for key, (label, target) in RATIO_LABELS.items():
        if key in res:
            print(f"ratio {label} tokens/s: {res[key]:.3f}" + (f" (target >= {target})" if target else ""))
    warning = check_mfu(max(res[name]["mfu"] for name in spent), peak_src)
    if warning:  # the ratio stands (same run, same peak); the MFU columns do not
        dropped = "cached in" in peak_src and forget_cpu_peak(precision)
        print(f"warning: {warning}" + ("; the cached CPU peak is dropped, rerun to re-measure" if dropped else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    trainer.stop_request.close()
    torch.distributed.destroy_process_group()
    return res


# ------------------------------------------------------------------ the compiled side and the Hugging Face side

RATIO_LABELS = {  # result key -> (what it divides, the target it must meet or None)
    "ratio_compiled_vs_eager": ("deepspeed_compiled / deepspeed", None),
    "ratio_deepspeed_vs_hf": ("deepspeed / hf_gpt2", 0.95),
    "ratio_compiled_vs_hf": ("deepspeed_compiled / hf_gpt2", 0.95),
}


def side_ratios(res: dict) -> dict[str, float]:
    """The ratios of the compiled and Hugging Face sides that ran (``RATIO_LABELS``)."""
    pairs = {"ratio_compiled_vs_eager": ("deepspeed_compiled", "deepspeed"),
             "ratio_deepspeed_vs_hf": ("deepspeed", "hf_gpt2"), "ratio_compiled_vs_hf": ("deepspeed_compiled", "hf_gpt2")}
    return {key: res[a]["tokens_per_s"] / res[b]["tokens_per_s"] for key, (a, b) in pairs.items()
            if a in res and b in res}


def compiled_engine(trainer: Trainer, model: torch.nn.Module):
    """An engine of the trainer's kind over ``model`` (a copy of the trainer's seeded model, before its engine
    took it) with ``trainer.compile=true``: the engine compiles each block, as in a training run."""
    cfg = copy.deepcopy(trainer.cfg)
    with open_dict(cfg):
        cfg.trainer.compile = True
    return type(trainer.engine)(model, cfg, trainer.batch, trainer.device, trainer.grid, trainer.param_names,
                                trainer.family)


def engine_step(engine, batches: list[torch.Tensor], device: torch.device):
    def step(i: int) -> float:
        x = batches[i % len(batches)].to(device)
        loss = engine.forward({"input_ids": x, "labels": x})
        engine.backward(loss)
        engine.step()
        return loss.item()

    return step


def hf_step(trainer: Trainer, model: torch.nn.Module, batches: list[torch.Tensor], precision: str):
    """A plain training loop over the Hugging Face model of ``model``'s shape and initial weights (GPT-2 style:
    ``GPT2LMHeadModel``; LLaMA style: ``LlamaForCausalLM``), SDPA attention, as a user of transformers writes it."""
    import transformers

    args, adapter, device, o = trainer.args, trainer.family.hf, trainer.device, trainer.cfg.optim
    arch = next((arch for arch in ("GPT2LMHeadModel", "LlamaForCausalLM") if not adapter.misfit(arch, args)), None)
    if arch is None:
        raise SystemExit(f"no Hugging Face class of this model's shape for the hf_gpt2 side: "
                         f"{'; '.join(adapter.misfit('GPT2LMHeadModel', args))}; use --no-hf")
    config = adapter.hf_config(arch, args, {})
    hf = getattr(transformers, arch)._from_config(config, attn_implementation="sdpa")
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    hf.load_state_dict(adapter.to_hf(arch, args, sd), strict=False)  # the tied output layer is re-tied by HF
    hf.to(device).train()
    opt = torch.optim.AdamW(param_groups(hf, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                            fused=device.type == "cuda", foreach=None if device.type == "cuda" else True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.sched, trainer.cfg.trainer.max_steps))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(i: int) -> float:
        x = batches[i % len(batches)].to(device)
        with autocast:
            loss = hf(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), o.clip_grad)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


if __name__ == "__main__":
    main()
