"""FLOPs per token, peak FLOP/s per device and MFU.

Model FLOPs per token (fwd + bwd, the PaLM / Megatron convention)::

    6 * N_layers                 (every weight of the transformer layers: GQA's smaller k/v and SwiGLU's
                                  three matrices are counted as they are, from the real shape)
  + 6 * hidden * vocab           (the output projection; tied or not, it is a real matmul)
  + 12 * layers * hidden * seq   (attention scores and weighted sum: 2·2·seq·hidden forward, x3 with backward;
                                  counted in full for causal attention, as PaLM does; a sliding-window
                                  layer counts min(window, seq) keys instead of seq)

Embedding lookups cost no FLOPs and are excluded. A mixture-of-experts layer counts its *active* weights in
``N_layers``: the router and the ``moe_router_topk`` experts a token runs through (:func:`gpt_parameter_counts`),
so a MoE model's MFU compares with that of the dense model of the same active size. Hardware FLOPs add what
activation checkpointing recomputes (:mod:`pretrain.models.recompute`): under ``model.recompute_granularity=full``
one more forward of every layer (``2 * N_layers + 4 * layers * hidden * seq``), under ``selective`` only the
attention core's forward (``4 * layers * hidden * seq``, the score and weighted-sum matmuls: a third of the
attention term).
MFU uses model FLOPs, HFU hardware FLOPs.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from pretrain.core.atomic import atomic_write
from pretrain.models.gpt import GPTArgs, count_parameters
from pretrain.models.recompute import recompute_flops

# Dense peak FLOP/s per device, from the vendors' data sheets (no sparsity). fp32 on tensor-core GPUs means
# plain FP32 (TF32 is off by default in PyTorch for matmuls).
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100 SXM": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "GH200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "B200": {"bf16": 2250e12, "fp16": 2250e12, "fp32": 80e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "A800": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
    "RTX 4090": {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12},
    "V100": {"bf16": 0.0, "fp16": 125e12, "fp32": 15.7e12},
    "MI300X": {"bf16": 1307e12, "fp16": 1307e12, "fp32": 163e12},
    "MI250X": {"bf16": 383e12, "fp16": 383e12, "fp32": 47.9e12},
}


def moe_layer_indices(args: GPTArgs) -> list[int]:
    """The layers whose MLP is a mixture of experts (none for a dense model), as the model builds them."""
    return [i for i in range(args.num_layers) if args.is_moe_layer(i)]


def gpt_parameter_counts(args: GPTArgs) -> dict[str, int]:
    """``count_parameters`` with what FLOPs need of a mixture of experts: ``total`` holds every expert,
    ``active`` the router and the ``moe_router_topk`` experts one token runs through (what FLOPs and MFU count;
    ``== total`` for a dense model), ``*_non_embedding`` without the embeddings and a separate output layer; the
    number of MoE layers and the parameters of one ``expert`` and one ``router`` (0 for a dense model)."""
    c = count_parameters(args)
    outside = c["total"] - c["non_embedding"]  # embeddings and the untied output layer
    out = {"total": c["total"], "active": c["active"], "non_embedding": c["non_embedding"],
           "active_non_embedding": c["active"] - outside, "moe_layers": 0, "expert": 0, "router": 0}
    layers = moe_layer_indices(args)
    if layers:
        n_mats = 3 if args.activation == "swiglu" else 2
        out.update(moe_layers=len(layers), expert=n_mats * args.hidden_size * args.moe_ffn_hidden_size,
                   router=args.num_experts * args.hidden_size)
    return out


def gpt_flops_per_token(args: GPTArgs) -> dict[str, float]:
    """Model and hardware FLOPs per token of a GPT (module docstring). A mixture of experts counts its *active*
    parameters: the ``moe_router_topk`` experts each token is routed to and the router, not the experts it
    skips; tokens a capacity factor drops are still counted (the model's FLOPs, not the work that ran)."""
    p = gpt_parameter_counts(args)
    h, L, s, V = args.hidden_size, args.num_layers, args.seq_length, args.vocab_size
    layer_params = p["active_non_embedding"] - (h if args.normalization == "rmsnorm" or not args.bias else 2 * h)
    # a sliding-window layer's queries see min(window, seq) keys (docs/attention.md), a global layer's seq
    attn = sum(12 * h * min(s, args.layer_window(i) or s) for i in range(L))
    model = 6 * layer_params + 6 * h * V + attn
    recompute = recompute_flops(args, layers_forward=2 * layer_params + attn / 3, attention_core_forward=attn / 3)
    return {"model": float(model), "hardware": float(model + recompute)}


def lookup_peak_flops(device_name: str, precision: str) -> float | None:
    """Peak of a known GPU by (sub)name, longest match first (so 'H100 PCIe' beats 'H100')."""
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_FLOPS[key].get(precision) or None
    return None


def measure_cpu_peak_flops(precision: str, seconds: float = 0.5, n: int = 1024) -> float:
    """Dense matmul FLOP/s of this CPU (all threads) over one run of ``seconds``: one sample, as noisy as the
    machine is busy. The MFU denominator comes from :func:`cpu_peak_flops`, the best of several such runs."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}[precision]
    g = torch.Generator().manual_seed(0)  # never the global RNG (training's dropout stream)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    a @ b  # warm-up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start)


# Cache of measured CPU peaks: one entry per (CPU model, cores, torch version, precision); bump to re-measure.
CPU_PEAK_CACHE_VERSION = 1
CPU_PEAK_RUNS, CPU_PEAK_SECONDS = 5, 1.0


def cpu_fingerprint() -> str:
    """What the achievable matmul rate depends on: CPU model, the cores torch may use, torch's version."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} | {cores} cores | {torch.get_num_threads()} threads | torch {torch.__version__}"


def cpu_peak_cache_path() -> Path:
    """``$PRETRAIN_CACHE/cpu_peak_flops.json`` (default ``~/.cache/pretrain``), beside the sample data."""
    root = Path(os.environ.get("PRETRAIN_CACHE") or Path.home() / ".cache" / "pretrain").expanduser()
    return root / "cpu_peak_flops.json"


def _cache_key(precision: str) -> str:
    return f"v{CPU_PEAK_CACHE_VERSION} | {cpu_fingerprint()} | {precision}"


def cpu_peak_flops(precision: str, runs: int = CPU_PEAK_RUNS, seconds: float = CPU_PEAK_SECONDS,
                   cache: bool = True) -> tuple[float, str]:
    """(peak FLOP/s of this CPU, where it came from): the best of ``runs`` matmul runs of ``seconds`` each,
    measured once per machine and cached.

    The best run, not the median: other processes on the machine only ever slow a run down, so the fastest run
    is the closest to what the CPU can do (timeit's reasoning); a single 0.5 s run on a busy machine read half
    the peak and MFU showed 170%. The median is kept in the cache for reference. Delete the cache file (its path
    is in the returned source) or set ``trainer.peak_flops_per_device`` to override."""
    path, key = cpu_peak_cache_path(), _cache_key(precision)
    if not cache:
        return _best_of(precision, runs, seconds)[0], f"measured on this CPU (best of {runs} x {seconds:g} s)"
    from pretrain.data.locking import file_lock

    # One process measures, the others (ranks of this node) wait and read its result: runs measured side by side
    # would each see a share of the machine.
    with file_lock(path.with_name(path.name + ".lock")):
        entries = _read_cache(path)
        hit = entries.get(key)
        if isinstance(hit, dict) and isinstance(hit.get("peak"), (int, float)) and hit["peak"] > 0:
            return float(hit["peak"]), f"measured on this CPU, cached in {path}"
        peak, median = _best_of(precision, runs, seconds)
        entries[key] = {"peak": peak, "median": median, "runs": runs, "seconds_per_run": seconds,
                        "measured_at": int(time.time())}
        try:
            atomic_write(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
        except OSError:  # a read-only cache folder: measure again next time
            pass
    return peak, f"measured on this CPU (best of {runs} x {seconds:g} s matmul runs; cached in {path})"


def _best_of(precision: str, runs: int, seconds: float) -> tuple[float, float]:
    samples = sorted(measure_cpu_peak_flops(precision, seconds) for _ in range(max(1, runs)))
    return samples[-1], samples[len(samples) // 2]


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def forget_cpu_peak(precision: str) -> bool:
    """Drop this CPU's cached peak for ``precision`` (True if there was one), so the next run measures again.
    Called when a run's MFU exceeded 100% against it: the cached best run was then measured on a busy machine
    (it can only ever read low), and keeping it would make every later run's MFU wrong too."""
    from pretrain.data.locking import file_lock

    path, key = cpu_peak_cache_path(), _cache_key(precision)
    with file_lock(path.with_name(path.name + ".lock")):
        entries = _read_cache(path)
        if entries.pop(key, None) is None:
            return False
        try:
            atomic_write(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
        except OSError:
            return False
    return True


def check_mfu(mfu: float, peak_source: str = "") -> str | None:
    """A warning when ``mfu`` exceeds 100% (the peak is too low: measured on a busy machine, or a wrong
    ``trainer.peak_flops_per_device``), else None. The caller logs it (once per run is enough)."""
    if not (mfu > 1.0):
        return None
    where = f" (peak: {peak_source})" if peak_source else ""
    return (f"MFU {100 * mfu:.0f}% is above 100%: the peak FLOP/s per device{where} is too low; set "
            f"trainer.peak_flops_per_device to the device's real dense peak, or delete {cpu_peak_cache_path()} "
            "to re-measure a CPU on a quiet machine")


def peak_flops_per_device(device: torch.device, precision: str, configured: float | None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from). ``configured`` (trainer.peak_flops_per_device) wins."""
    if configured:
        return float(configured), "configured"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = lookup_peak_flops(name, precision)
        if peak:
            return peak, f"table ({name})"
        return _measure_cuda(device, precision), f"measured ({name})"
    return cpu_peak_flops(precision)


def _measure_cuda(device: torch.device, precision: str) -> float:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    n = 8192
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, dtype=dtype, device=device, generator=g)
    b = torch.randn(n, n, dtype=dtype, device=device, generator=g)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)
