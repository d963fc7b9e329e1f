"""Throughput of the accelerate engine against the DeepSpeed engine at the same settings, as a ratio.

    python -m pretrain.bench.train --engines [--steps 4] [--rounds 3] [hydra overrides ...]
    python -m pretrain.bench.engines engine.accelerate.strategy=fsdp trainer.precision=bf16

Both engines are built as a training run builds them (the Trainer's plan and model phases, then
``pretrain.engines.get_engine``) from one seeded model (the accelerate side gets a copy), and step through
``Engine.train_step`` (the loop's own call: forward, backward, accumulation, clipping, optimizer and LR step) on the
same batches. Steps alternate between the two in rounds so that drift of the machine hits both alike. Under
torchrun every rank runs both; rank 0 prints. ``engine.accelerate.*`` overrides choose the accelerate side's
strategy (DDP by default, FSDP2 with ``engine.accelerate.strategy=fsdp``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "conf")


def compare_engines(overrides: list[str], steps: int = 4, rounds: int = 3, warmup: int = 2,
                    json_path: str | None = None) -> dict:
    """Tokens/s of DeepSpeed and accelerate on the model of ``overrides`` (pretrain.bench.train's defaults first)."""
    from hydra import compose, initialize_config_dir

    from pretrain.bench.train import DEFAULTS
    from pretrain.config import register_configs
    from pretrain.engines import get_engine
    from pretrain.trainer import Trainer

    register_configs()
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        cfg = compose("train", overrides=DEFAULTS + ["engine=accelerate", *overrides])
    trainer = Trainer(cfg).plan()  # validated as an accelerate run (DeepSpeed's side reads no engine.* key)
    model = trainer.build_model()
    device, plan, args = trainer.device, trainer.batch, trainer.args
    other = copy.deepcopy(model)
    build = (trainer.batch, device, trainer.grid, trainer.param_names, trainer.family)
    engines = {"deepspeed": get_engine("deepspeed")(model, cfg, *build),
               "accelerate": get_engine("accelerate")(other, cfg, *build)}
    for e in engines.values():
        e.train()

    g = torch.Generator().manual_seed(0)
    shape = (plan.micro_batch_size, args.seq_length)
    pool = [torch.randint(0, args.vocab_size, shape, generator=g) for _ in range(8)]

    def batches():
        i = 0
        while True:
            x = pool[i % len(pool)]
            i += 1
            yield {"input_ids": x, "labels": x}

    streams = {name: batches() for name in engines}

    def timed(name: str, n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            engines[name].train_step(streams[name], plan.grad_accum_steps, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for name in engines:
        timed(name, warmup)
    spent = dict.fromkeys(engines, 0.0)
    order = list(engines)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            spent[name] += timed(name, steps)
    tokens = steps * rounds * plan.global_batch_size * args.seq_length  # every rank's together
    res: dict = {name: {"tokens_per_s": tokens / t} for name, t in spent.items()}
    res["ratio"] = res["accelerate"]["tokens_per_s"] / res["deepspeed"]["tokens_per_s"]
    acc = engines["accelerate"].config
    res["setup"] = {"precision": trainer.precision, "device": str(device), "world_size": trainer.world,
                    "micro_batch": plan.micro_batch_size, "accum": plan.grad_accum_steps, "seq_length": args.seq_length,
                    "parameters": trainer.n_params, "deepspeed_zero_stage": plan.zero_stage,
                    "accelerate": {k: acc[k] for k in ("strategy", "sharding", "distributed_type")},
                    "timed_steps": steps * rounds, "threads": torch.get_num_threads()}
    if trainer.rank == 0:
        s = res["setup"]
        print(f"engines: {s['parameters'] / 1e6:.1f}M parameters, seq {s['seq_length']}, "
              f"micro batch {s['micro_batch']} "
              f"x accum {s['accum']}, {s['precision']}, {s['world_size']} x {device}; DeepSpeed ZeRO-{plan.zero_stage} "
              f"vs accelerate {acc['strategy']}{'/' + acc['sharding'] if acc['sharding'] else ''}; "
              f"{s['timed_steps']} timed steps each")
        for name in engines:
            print(f"{name:12}{res[name]['tokens_per_s']:12.1f} tokens/s")
        print(f"ratio accelerate / deepspeed tokens/s: {res['ratio']:.3f}")
        if json_path:
            with open(json_path, "w") as f:
                json.dump(res, f, indent=2)
    for e in engines.values():
        e.close()
    trainer.stop_request.close()
    torch.distributed.destroy_process_group()
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round and per engine")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    a = ap.parse_args(argv)
    return compare_engines(a.overrides, a.steps, a.rounds, a.warmup, a.json)


if __name__ == "__main__":
    main()
