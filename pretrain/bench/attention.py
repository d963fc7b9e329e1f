"""Attention benchmark: tokens/s and peak memory of full causal vs sliding-window attention at long sequences.

    python -m pretrain.bench.attention [--seqs 512 2048 8192] [--window 256] [--steps 2] [--layers 2 --hidden 128]

Each (sequence length, attention) runs in a fresh subprocess: a GPT (``pretrain.models.gpt``, LLaMA style, the
same seeded weights for every row) does ``--steps`` forward + backward passes of one sample after a warm-up
pass, in fp32 on the CPU. Rows:

* ``full``: causal attention, SDPA ``is_causal`` (the baseline of the ratios);
* ``window``: ``model.sliding_window=W`` as the model runs it here (:func:`pretrain.models.attention.
  choose_kernel`: on the CPU, the banded path once the sequence holds more than two blocks, the dense mask below);
* ``window-dense``: the same window through one SDPA call with the whole ``seq x seq`` mask (what the banded path
  avoids; also the output the banded path must equal).

Peak memory is the process's peak resident set (``ru_maxrss``) minus its resident set once the model is built,
before the first pass: the activations, masks and attention workspace of a forward + backward.
Ratios are against ``full`` at the same sequence length, measured in the same run. The cores this runs on are
shared: absolute tokens/s move with the machine's load, the ratios much less.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(seq: int, kind: str, window: int, steps: int, layers: int, hidden: int, heads: int,
            threads: int) -> dict:
    """One row, in this process: tokens/s and peak memory (MiB above the resident set before the passes)."""
    import torch

    from pretrain.models import attention
    from pretrain.models.gpt.config import GPTArgs
    from pretrain.models.gpt.model import GPT

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    args = GPTArgs(vocab_size=1024, num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                   num_key_value_heads=heads, ffn_hidden_size=4 * hidden, seq_length=seq, position_embedding="rope",
                   normalization="rmsnorm", activation="gelu", bias=False,
                   sliding_window=None if kind == "full" else window)
    if kind == "window-dense":  # the dense-mask path, whatever the kernel choice would be
        attention.LOCAL_BLOCK = 1 << 30
    model = GPT(args)
    ids = torch.randint(0, args.vocab_size, (1, seq + 1))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(ids[:, :-1], ids[:, 1:]).backward()

    kernel = attention.choose_kernel(model.layers[0].self_attn.spec(), "cpu", 0.0, has_flex=False, q_len=seq,
                                     k_len=seq)
    base = _rss_mib()  # the model built, before any pass (ru_maxrss only grows: the passes make the peak)
    step()  # warm-up: first-call allocations, thread pools
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seq": seq, "kind": kind, "kernel": kernel, "tokens_per_s": steps * seq / dt,
            "peak_mib": max(0.0, peak - base)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqs", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each row's process")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one row as JSON "seq,kind"
    a = p.parse_args(argv)
    shape = (a.window, a.steps, a.layers, a.hidden, a.heads, a.threads)
    if a.one:
        seq, kind = a.one.split(",")
        print(json.dumps(run_one(int(seq), kind, *shape)))
        return []
    rows = []
    print(f"GPT {a.layers} layers x {a.hidden} ({a.heads} heads), batch 1, fp32 CPU ({a.threads} thread(s)), "
          f"fwd+bwd, {a.steps} steps; window {a.window}")
    print(f"{'seq':>6} {'attention':<13} {'kernel':<12} {'tokens/s':>9} {'x full':>7} {'peak MiB':>9} {'x full':>7}")
    for seq in a.seqs:
        full = None
        for kind in ("full", "window", "window-dense"):
            cmd = [sys.executable, "-m", "pretrain.bench.attention", "--one", f"{seq},{kind}", "--window",
                   str(a.window), "--steps", str(a.steps), "--layers", str(a.layers), "--hidden", str(a.hidden),
                   "--heads", str(a.heads), "--threads", str(a.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            full = full or row
            row["speed_x"] = row["tokens_per_s"] / full["tokens_per_s"]
            row["memory_x"] = row["peak_mib"] / full["peak_mib"] if full["peak_mib"] else float("nan")
            rows.append(row)
            print(f"{seq:>6} {kind:<13} {row['kernel']:<12} {row['tokens_per_s']:>9.0f} {row['speed_x']:>7.2f} "
                  f"{row['peak_mib']:>9.0f} {row['memory_x']:>7.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
