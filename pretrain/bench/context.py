"""Context-parallel benchmark: tokens/s and peak memory of cp1 (one process) against cp2 (two processes, each with
half of every sequence) at sequence lengths 512, 2k and 8k.

    python -m pretrain.bench.context [--seqs 512,2048,8192] [--steps 3 --warmup 1] [--threads 1] [overrides ...]

CPU only (DeepSpeed's CPU accelerator, gloo), through our stack: the config composed from ``conf/train.yaml``
(``model=gpt/tiny`` by default, ``model.seq_length`` set per length), the Trainer's plan and build (the grid with
its context axis, ``context_parallelize``), the DeepSpeed engine. Each (cp, length) runs in fresh processes
(spawned here with torchrun's variables), fp32, micro batch 1, dp 1 (so ZeRO-0), the same random batches on
every rank, ``--warmup`` untimed steps, then ``--steps`` timed ones (barriers around them; the slowest rank's
time). Tokens/s count each sequence once (the cp ranks share it). Memory: each rank's peak resident set
(``ru_maxrss``) at the end, and how far the steps raised it above the resident set after the build (the
activations, attention and optimizer state of training at that length): the larger rank's. The ranks run with
``MALLOC_MMAP_THRESHOLD_=65536`` (glibc hands large freed blocks back at once), so the resident set follows
the live tensors.

cp2 runs as many processes as cp1 has threads x 2 (``--threads`` each): with ``--threads 1`` cp1 uses one core
and cp2 two, so the tokens/s ratio shows what splitting a sequence over two devices gains on this machine; the
memory ratio is per rank (what each device must hold).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from typing import Any

import torch

from pretrain.bench.parallel import _compose, _free_port

BASE = ["trainer.device=cpu", "trainer.max_steps=10", "model=gpt/tiny", "trainer.precision=fp32",
        "trainer.micro_batch_size=1", "trainer.global_batch_size=1", "parallel.zero_stage=0",
        "logger.wandb.mode=disabled", "model.hidden_dropout=0", "model.attention_dropout=0"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run(rank: int, world: int, port: int, threads: int, overrides: list[str], steps: int, warmup: int,
         log: str, results) -> None:
    """One rank of one (cp, length) run; puts (rank, ok, result or traceback) on ``results``."""
    import sys
    import traceback
    import warnings

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(log, "a", buffering=1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(threads)
    try:
        from pretrain.trainer import Trainer

        trainer = Trainer(_compose(overrides)).plan()
        trainer.build_model()
        trainer.build_engine()
        engine, args = trainer.engine.ds, trainer.args
        g = torch.Generator().manual_seed(0)  # the same batches on every rank of the context group
        batches = [torch.randint(0, args.vocab_size, (1, args.seq_length), generator=g) for _ in range(4)]
        losses = []

        def step(i: int) -> None:
            x = batches[i % len(batches)]
            loss = engine(x, x)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())

        built_rss = _rss_bytes()
        for i in range(warmup):
            step(i)
        torch.distributed.barrier()
        t0 = time.perf_counter()
        for i in range(steps):
            step(warmup + i)
        torch.distributed.barrier()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        results.put((rank, True, {"seconds": t.item(), "peak_rss": peak, "built_rss": built_rss,
                                  "step_peak": max(0, peak - built_rss), "losses": losses,
                                  "seq_length": args.seq_length, "cp": trainer.batch.context_parallel_size}))
        engine.destroy()
        trainer.stop_request.close()
        torch.distributed.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
        raise


def run_one(cp: int, seq: int, threads: int, steps: int, warmup: int, extra: list[str], logs: str) -> dict[str, Any]:
    """A (cp, length) run in ``cp`` fresh processes; the slowest rank's time, the larger rank's memory."""
    import queue

    import torch.multiprocessing as mp

    overrides = BASE + extra + [f"model.seq_length={seq}", f"parallel.context_parallel_size={cp}",
                                f"run_dir={logs}/cp{cp}_seq{seq}"]
    _compose(overrides)  # a bad override fails here, before any process starts
    # glibc returns a freed block to the system only above its mmap threshold, which it raises as large blocks are
    # freed: pin it low so that the resident set follows the live tensors and its peak measures them
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 16))
    ctx = mp.get_context("spawn")
    results, port = ctx.Queue(), _free_port()
    log = os.path.join(logs, f"cp{cp}_seq{seq}.log")
    procs = [ctx.Process(target=_run, args=(r, cp, port, threads, overrides, steps, warmup, log, results),
                         daemon=True) for r in range(cp)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        while len(out) < cp:
            try:
                rank, ok, value = results.get(timeout=1.0)
            except queue.Empty:
                if any(not p.is_alive() for p in procs) and results.empty():
                    raise RuntimeError(f"cp{cp} seq {seq}: a rank died\n{_tail(log)}") from None
                continue
            if not ok:
                raise RuntimeError(f"cp{cp} seq {seq}, rank {rank} failed:\n{value}\n{_tail(log)}")
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    ranks = [out[r] for r in range(cp)]
    seconds = ranks[0]["seconds"]
    return {"cp": cp, "seq_length": seq, "seconds": seconds, "tokens_per_s": seq * steps / seconds,
            "peak_rss": max(r["peak_rss"] for r in ranks), "step_peak": max(r["step_peak"] for r in ranks),
            "losses": ranks[0]["losses"]}


def _tail(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return "".join(f.readlines()[-30:])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", default="512,2048,8192", help="sequence lengths (default 512,2048,8192)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (both sides)")
    a = ap.parse_args(argv)
    seqs = [int(s) for s in a.seqs.split(",") if s.strip()]
    if not seqs or any(s % 2 for s in seqs):
        ap.error(f"--seqs {a.seqs!r}: even sequence lengths (cp2 splits them in two)")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as logs:
        for seq in seqs:
            row = {f"cp{cp}": run_one(cp, seq, a.threads, a.steps, a.warmup, a.overrides, logs) for cp in (1, 2)}
            row["tokens_ratio"] = row["cp2"]["tokens_per_s"] / row["cp1"]["tokens_per_s"]
            row["peak_ratio"] = row["cp2"]["peak_rss"] / row["cp1"]["peak_rss"]
            row["step_peak_ratio"] = row["cp2"]["step_peak"] / max(row["cp1"]["step_peak"], 1)
            # the same batches and weights: the losses must agree (context parallelism changes no result)
            row["max_loss_rel_diff"] = max(abs(x - y) / abs(x) for x, y in zip(row["cp1"]["losses"],
                                                                                 row["cp2"]["losses"]))
            rows.append(row)
            print(_line(row), flush=True)
    res = {"rows": rows, "steps": a.steps, "warmup": a.warmup, "threads": a.threads, "overrides": a.overrides,
           "torch": torch.__version__, "wall_s": time.perf_counter() - t0}
    report(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


def _mib(n: float) -> str:
    return f"{n / 2**20:8.1f}"


def _line(row: dict) -> str:
    c1, c2 = row["cp1"], row["cp2"]
    return (f"seq {c1['seq_length']:>6}: cp1 {c1['tokens_per_s']:9.1f} tok/s, peak {_mib(c1['peak_rss'])} MiB "
            f"(steps +{_mib(c1['step_peak']).strip()}) | cp2 {c2['tokens_per_s']:9.1f} tok/s, peak per rank "
            f"{_mib(c2['peak_rss'])} MiB (steps +{_mib(c2['step_peak']).strip()})")


def report(res: dict) -> None:
    print(f"\nfp32, micro batch 1, {res['steps']} timed steps after {res['warmup']} warm-up, {res['threads']} "
          f"thread(s) per process; cp2 = 2 processes")
    print(f"{'seq':>6} | {'cp1 tok/s':>10} {'cp2 tok/s':>10} {'cp2/cp1':>8} | {'cp1 peak MiB':>12} "
          f"{'cp2 peak/rank':>13} {'ratio':>6} | {'step +MiB cp1':>13} {'cp2':>8} {'ratio':>6} | loss diff")
    for row in res["rows"]:
        c1, c2 = row["cp1"], row["cp2"]
        print(f"{c1['seq_length']:>6} | {c1['tokens_per_s']:10.1f} {c2['tokens_per_s']:10.1f} "
              f"{row['tokens_ratio']:8.3f} | {_mib(c1['peak_rss']):>12} {_mib(c2['peak_rss']):>13} "
              f"{row['peak_ratio']:6.3f} | {_mib(c1['step_peak']):>13} {_mib(c2['step_peak']):>8} "
              f"{row['step_peak_ratio']:6.3f} | {row['max_loss_rel_diff']:.1e}")
    print(f"wall time {res['wall_s']:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
