"""GPU benchmark: ``llama_1b`` and ``gpt_1.3b`` in bf16 with flash attention (SDPA), under DeepSpeed ZeRO-1 and
under accelerate FSDP2, each with ``trainer.compile`` off and on, on one GPU.

    python -m pretrain.bench.gpu                 # all 8 configurations, sized for < 5 minutes on one H100/H200
    python -m pretrain.bench.gpu --dry-run       # compose and check every configuration (CPU, seconds)
    python -m pretrain.bench.gpu --only llama_1b/deepspeed_zero1/compiled --steps 20 --json out.json

Each configuration is a real training run of the Trainer (``Trainer(cfg).fit()``) on the built-in sample data with
the vocabulary of the real model (``model.vocab_size``), ``--warmup`` untimed steps (the first one holds the
compilation) and ``--steps`` timed ones. Printed per configuration: tokens/s, model TFLOP/s per GPU
(:func:`pretrain.flops.gpt_flops_per_token`, the trainer's own count), MFU against the GPU's dense bf16 peak
from the planner's device table (:mod:`pretrain.planner.devices`, named in the output), peak memory, and the
first step's time (compilation included); then compiled / eager per model and engine. With one GPU the
DeepSpeed engine runs ZeRO stage 0 (one data-parallel rank partitions nothing; ``parallel=zero1`` is what a
multi-GPU run of the preset would use) and FSDP2 shards over one rank.

The configurations of one engine run in one child process (an engine's global state, e.g. accelerate's, never
meets the other's), one after the other, freeing the GPU in between. Never run in CI: it needs a GPU. Figures
go to docs/benchmarks.md with the date, the device and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"

MODELS = {  # the presets, with the vocabulary of the real model (the sample data's tokenizer is smaller)
    "llama_1b": ["experiment=llama_1b", "model.vocab_size=32000"],
    "gpt_1.3b": ["experiment=gpt_1.3b", "model.vocab_size=50304"],
}
ENGINES = {
    "deepspeed_zero1": ["parallel=zero1"],
    "accelerate_fsdp2": ["engine=accelerate", "engine.accelerate.strategy=fsdp", "engine.accelerate.sharding=full",
                         "parallel=zero0"],
}
COMPILE = {"eager": ["trainer.compile=false"], "compiled": ["trainer.compile=true"]}
# one GPU, one micro-batch per step, no evaluation, no checkpoint, no W&B
COMMON = ["data=sample", "trainer.precision=bf16", "trainer.device=cuda", "trainer.global_batch_size=null",
          "trainer.eval_interval=0", "trainer.eval_iters=0", "trainer.log_interval=1", "optim.sched.warmup_steps=1",
          "checkpoint.interval=0", "checkpoint.save_at_end=false", "checkpoint.resume=never",
          "logger.wandb.mode=disabled"]


def configurations() -> dict[str, list[str]]:
    """name (model/engine/compile) -> Hydra overrides of conf/train.yaml."""
    return {f"{m}/{e}/{c}": [*mo, *eo, *COMMON, *co]
            for m, mo in MODELS.items() for e, eo in ENGINES.items() for c, co in COMPILE.items()}


def accelerate_missing() -> str | None:
    """Why the accelerate engine cannot be composed in this tree (None: it can)."""
    from pretrain.engines import ENGINES as BUILT

    if not (CONF / "engine" / "accelerate.yaml").is_file() or "accelerate" not in BUILT:
        return "engine=accelerate is not in this tree (no conf/engine/accelerate.yaml or pretrain.engines entry)"
    return None


def compose_cfg(overrides: list[str], run_dir: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pretrain.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"run_dir={run_dir}"])


def gpu_peak(cuda_name: str, precision: str = "bf16") -> tuple[float, str]:
    """(dense peak FLOP/s, its name) of a GPU by its CUDA name, from the planner's device table
    (:data:`pretrain.planner.devices.DEVICES`, whose peaks are :data:`pretrain.flops.PEAK_FLOPS`); a GPU the
    planner does not list falls back to the FLOPs table by (sub)name, then to a measured matmul."""
    from pretrain.flops import lookup_peak_flops
    from pretrain.planner.devices import DEVICES

    name = cuda_name.lower()
    known = sorted((d for d in DEVICES.values() if d.table_name.lower() in name),
                   key=lambda d: len(d.table_name), reverse=True)
    if known:
        d = known[0]
        return d.peak_flops(precision), f"{d.table_name} dense {precision}, pretrain.planner.devices[{d.name!r}]"
    peak = lookup_peak_flops(cuda_name, precision)
    if peak:
        return peak, f"{cuda_name} dense {precision}, pretrain.flops.PEAK_FLOPS"
    return 0.0, f"{cuda_name}: not in the device table"


def run_settings(steps: int, warmup: int, micro: int) -> list[str]:
    """The overrides a run adds to its configuration: micro-batch and step count."""
    return [f"trainer.micro_batch_size={micro}", f"trainer.max_steps={warmup + steps}"]


def dry_run(configs: dict[str, list[str]], settings: list[str]) -> dict[str, dict]:
    """Compose and check every configuration as the trainer's plan phase does, without data or a GPU: the
    schema, every value, the batch plan, the model shape; returns name -> its shape facts (or why skipped)."""
    from pretrain.config import validate_schema
    from pretrain.engines import batch_plan
    from pretrain.models import TokenizerInfo, get_family
    from pretrain.validation import fit_schedule_to_run, validate_values

    missing = accelerate_missing()
    out: dict[str, dict] = {}
    for name, overrides in configs.items():
        if missing and "engine=accelerate" in overrides:
            out[name] = {"skipped": missing}
            continue
        cfg = compose_cfg([*overrides, *settings], tempfile.gettempdir() + "/pretrain-bench-gpu")
        validate_schema(cfg)
        fit_schedule_to_run(cfg)
        validate_values(cfg)
        plan = batch_plan(cfg, 1)
        family = get_family(cfg.model.family)
        args = family.resolve_args(cfg.model, TokenizerInfo(None, cfg.model.vocab_size, 0))
        out[name] = {"engine": cfg.engine.name if "engine" in cfg else "deepspeed", "compile": cfg.trainer.compile,
                     "precision": cfg.trainer.precision.value, "micro_batch": plan.micro_batch_size,
                     "tokens_per_step": plan.global_batch_size * family.tokens_per_sample(args),
                     "model_flops_per_token": family.flops_per_token(args)["model"]}
    return out


def flash_attention_check(cfg) -> str | None:
    """None when SDPA's flash kernel takes this model's attention (heads, kv heads, head size, bf16, causal);
    else why not (the run then lets SDPA choose)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = cfg.model
    heads, kv = m.num_attention_heads, m.num_key_value_heads or m.num_attention_heads
    d = m.hidden_size // heads
    q = torch.randn(1, heads, 128, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, kv, 128, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=heads != kv).sum().backward()
    except RuntimeError as e:
        return str(e).splitlines()[0]
    return None


def run_one(name: str, overrides: list[str], steps: int, warmup: int, micro: int, root: Path) -> dict:
    """One configuration: a training run of warmup + steps steps; the timed figures from its metrics."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pretrain.trainer import Trainer

    peak, peak_name = gpu_peak(torch.cuda.get_device_name())
    run_dir = root / name.replace("/", "_")
    cfg = compose_cfg([*overrides, *run_settings(steps, warmup, micro),
                       *([f"trainer.peak_flops_per_device={peak}"] if peak else [])], str(run_dir))
    why_not_flash = flash_attention_check(cfg)
    import torch._dynamo

    torch._dynamo.reset()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if why_not_flash is None else contextlib.nullcontext():
        trainer.fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in records if "step_time_s" in r and r["step"] > warmup]
    step_s = statistics.median(r["step_time_s"] for r in timed)
    tok_s = trainer.batch.global_batch_size * trainer.seq / step_s
    tflops = trainer.flops["model"] * tok_s / 1e12
    res = {"tokens_per_s": tok_s, "tflops_per_gpu": tflops, "mfu": tflops * 1e12 / peak if peak else None,
           "peak_mem_gib": max(r["peak_mem_gb"] for r in records if "peak_mem_gb" in r),
           "first_step_s": records[0]["step_time_s"], "step_s": step_s, "wall_s": time.perf_counter() - t0,
           "peak_flops": peak, "peak_name": peak_name, "micro_batch": micro, "seq_length": trainer.seq,
           "attention": "flash (SDPA FLASH_ATTENTION)" if why_not_flash is None else f"SDPA default ({why_not_flash})",
           "device": torch.cuda.get_device_name(), "parameters": trainer.n_params}
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return res


def worker(names: list[str], steps: int, warmup: int, micro: int, out: Path) -> None:
    """The child process of one engine: its configurations one after the other, results as JSON to ``out``."""
    configs = configurations()
    results = {}
    with tempfile.TemporaryDirectory(prefix="pretrain-bench-gpu-") as root:
        for name in names:
            try:
                results[name] = run_one(name, configs[name], steps, warmup, micro, Path(root))
            except Exception as e:  # one configuration's failure (out of memory, say) leaves the others
                results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            out.write_text(json.dumps(results, indent=2))
            print(f"{name}: {results[name]}", flush=True)


def report(results: dict[str, dict]) -> None:
    first = next((r for r in results.values() if "peak_name" in r), None)
    if first:
        print(f"device: {first['device']}; MFU against {first['peak_flops'] / 1e12:.0f} TFLOP/s "
              f"({first['peak_name']}); micro batch {first['micro_batch']} x seq {first['seq_length']}, "
              f"bf16, {first['attention']}")
    print(f"{'configuration':40}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}{'1st step s':>12}")
    for name, r in results.items():
        if "tokens_per_s" not in r:
            print(f"{name:40}  {r.get('error') or r.get('skipped')}")
            continue
        mfu = f"{100 * r['mfu']:6.1f}%" if r["mfu"] is not None else "     -"
        print(f"{name:40}{r['tokens_per_s']:11.0f}{r['tflops_per_gpu']:9.1f}{mfu}{r['peak_mem_gib']:10.1f}"
              f"{r['first_step_s']:12.1f}")
    for name, r in results.items():
        other = results.get(name.replace("/compiled", "/eager"))
        if name.endswith("/compiled") and "tokens_per_s" in r and other and "tokens_per_s" in other:
            ratio = r["tokens_per_s"] / other["tokens_per_s"]
            print(f"compiled / eager tokens/s, {name.rsplit('/', 1)[0]}: {ratio:.3f}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="compose and check every configuration on CPU, then stop")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first holds the compilation)")
    ap.add_argument("--micro-batch", type=int, default=4, help="sequences of 2048 tokens per step")
    ap.add_argument("--only", nargs="*", help="configuration names (model/engine/compile) to run; default: all")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: a child process's JSON output file
    a = ap.parse_args(argv)

    configs = configurations()
    names = a.only or list(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        ap.error(f"unknown configuration(s) {', '.join(unknown)}; expected some of {', '.join(configs)}")
    if a.worker:
        worker(names, a.steps, a.warmup, a.micro_batch, Path(a.worker))
        return {}
    if a.dry_run:
        res = dry_run({n: configs[n] for n in names}, run_settings(a.steps, a.warmup, a.micro_batch))
        for name, r in res.items():
            print(f"{name:40} " + ("skipped: " + r["skipped"] if "skipped" in r else
                                   f"engine {r['engine']}, compile {r['compile']}, {r['precision']}, "
                                   f"{r['tokens_per_step']} tokens/step x {r['model_flops_per_token']:.3g} FLOPs"))
        for gpu in ("NVIDIA H100 80GB HBM3", "NVIDIA H200"):
            peak, peak_name = gpu_peak(gpu)
            print(f"peak for {gpu}: {peak / 1e12:.0f} TFLOP/s ({peak_name})")
        return res

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("pretrain.bench.gpu needs a CUDA GPU (use --dry-run to check the configurations on CPU)")
    missing = accelerate_missing()
    results: dict[str, dict] = {}
    by_engine: dict[str, list[str]] = {}
    for n in names:
        if missing and "engine=accelerate" in configs[n]:
            results[n] = {"skipped": missing}
        else:
            by_engine.setdefault(n.split("/")[1], []).append(n)
    t0 = time.perf_counter()
    env = dict(os.environ, WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    for engine, group in by_engine.items():
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, "-m", "pretrain.bench.gpu", "--worker", f.name, "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--micro-batch", str(a.micro_batch), "--only", *group]
            proc = subprocess.run(cmd, env=env)
            done = json.loads(Path(f.name).read_text() or "{}") if Path(f.name).stat().st_size else {}
        for n in group:
            results[n] = done.get(n) or {"error": f"the {engine} worker exited with {proc.returncode} before it"}
    results = {n: results[n] for n in names}
    report(results)
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
