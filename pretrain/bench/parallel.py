"""Parallelism benchmark: ZeRO model-state memory per rank (dp1 vs dp2) and the step-time cost of tensor parallelism.

    python -m pretrain.bench.parallel [--layers 8 --hidden 512 ...] [--steps 4] [--tiny] [hydra overrides ...]

CPU only (DeepSpeed's CPU accelerator, gloo): the ranks are processes spawned here, each with the variables
torchrun would set. Everything goes through our stack: the config composed from ``conf/train.yaml``,
the Trainer's plan and build phases (``pretrain.trainer``), ``ParallelGrid`` as the ``mpu``,
``parallelize`` for tensor parallelism.

1. **Model-state bytes per rank**, ZeRO stage 0, 1, 2, 3 at dp=2 against dp=1, and tp=2 / pp=2 (one
   data-parallel rank each, so ZeRO-0), every rank's bytes kept (``pretrain.bench.plan`` checks the planner's
   predictions against them), and, in the ZeRO-0 runs other than pp2, the activation bytes of one micro-batch
   (the tensors autograd saves in the forward: :func:`saved_activation_bytes`). The dp=1 figure is what a user
   holds with one data-parallel rank: ``batch_plan`` runs one rank without offload as ZeRO stage 0 whatever
   ``parallel.zero_stage`` says (params, grads, master weights and Adam states held whole), so that is the
   baseline of every stage. Bytes are counted by :func:`model_state_bytes` after the *backward* of the second
   step, before its optimizer step: optimizer states exist (from the first step) and the gradients are held,
   reduced. ZeRO-1 and ZeRO-2 hold the same then; they differ *during* the backward (ZeRO-1 keeps every
   gradient until the backward ends, ZeRO-2 reduces a bucket whenever ``reduce_bucket_size`` elements are
   ready, which for models smaller than our 5e8-element bucket is also only at the end). Counted in bf16
   (mixed precision: the setting ZeRO is designed for, what a GPU run uses) and in fp32 (the CPU default:
   DeepSpeed then keeps an fp32 master partition beside fp32 parameters, a second copy of the weights, so
   ZeRO-3 at dp=N holds 20/16 x 1/N of the dp=1 bytes: 0.625 at dp=2). The ranks of a run use micro batch 1
   here (model states do not depend on the batch).
2. **Step time of tp=2 vs tp=1**, fp32, same model, same initial weights, same batches, same global batch
   (dp=1 in both): tp=1 is one process with 2 threads, tp=2 two processes with 1 thread each, so both use the
   2 cores of the development machine. On one CPU the ratio measures what tensor parallelism costs
   (all-reduces in every layer, smaller matmuls), not what it gains on GPUs with fast links.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import tempfile
import time
from typing import Any

import torch

CONF = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "conf"))
BASE = ["trainer.device=cpu", "trainer.max_steps=1000", "run_dir=/tmp/pretrain-bench-parallel", "model=gpt/tiny"]
# The default model: the 29.5M GPT of pretrain.bench.train.
DEFAULT_SHAPE = dict(layers=8, hidden=512, heads=8, vocab=8192, seq=256, micro_batch=4)
# --tiny (the test): 5.2M parameters, every matrix above our stage3_param_persistence_threshold of 1e5 elements
# (hidden 384: 384 x 384 = 147k), so ZeRO-3 partitions all but the biases and norms with the config as it is.
TINY_SHAPE = dict(layers=2, hidden=384, heads=4, vocab=4096, seq=64, micro_batch=2)
STAGES = (0, 1, 2, 3)
# The two-rank runs that split the model instead of the data (tp=2 or pp=2, one data-parallel rank, so ZeRO-0):
# their model-state bytes per rank are what the planner's shares are checked against (pretrain.bench.plan).
SPLITS = ((2, 1), (1, 2))
# and tp=2 with sequence parallelism, fp32 only (its activations differ, its model states do not)
SEQUENCE_PARALLEL_RUN = ("fp32", 0, 2, 1, True)
CATEGORIES = ("params", "grads", "master", "optimizer")  # model states; "buffers" and "other" are reported apart


# ------------------------------------------------------------------------------------------------ byte counting


def model_state_bytes(engine, sources: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes of model states this rank holds, by kind, each tensor storage counted once (whole storage, deduped
    by ``untyped_storage().data_ptr()``; views of one flat buffer count as the buffer). Meta tensors and empty
    storages count nothing.

    * ``params``: the module's parameters: under ZeRO-3 the local partition ``p.ds_tensor`` plus whatever full
      data the rank holds (persistent parameters below ``stage3_param_persistence_threshold``, any gathered
      one); under ZeRO-1/2 the flat buffer the parameters are views of; plus any other low-precision copy the
      ZeRO optimizer keeps (attributes named ``*param*``, ``*bit16*``, ``*fp16*``).
    * ``grads``: ``p.grad`` of the parameters, ``.grad`` of the master weights, and tensors of the ZeRO
      optimizer whose attribute name says ``grad`` (``averaged_gradients``, ``grad_partitions_flat_buffer``,
      ``fp32_groups_gradients_flat``, ...).
    * ``master``: tensors the base optimizer steps that are not the module's parameters: the fp32 master
      weights (``single_partition_of_fp32_groups``, ``fp32_partitioned_groups_flat``, ``fp32_groups``). None at
      fp32 stage 0, where the optimizer steps the parameters themselves.
    * ``optimizer``: the base optimizer's ``state`` (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``). The ZeRO
      paper's "optimizer states" are ``master + optimizer``.
    * ``buffers`` (not model states): communication buckets of the ZeRO optimizer (attributes named ``*ipg*``,
      ``*bucket*``), allocated with ``torch.empty``: on CPU, pages never written are not resident.
    * ``other``: any other tensor found on the ZeRO optimizer (scalars such as the last gradient norm).

    The walk is generic: the ZeRO optimizer's ``__dict__`` is searched recursively through lists, tuples,
    dicts and dataclasses (DeepSpeed's IPG buckets), not through other objects. Pass ``sources`` (a dict) to
    get the bytes by where they were found as well (``"grads <- averaged_gradients"``).
    """
    out = {k: 0 for k in (*CATEGORIES, "buffers", "other")}
    seen: set[int] = set()

    def add(kind: str, t: Any, where: str) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        s = t.untyped_storage()
        if s.nbytes() == 0 or s.data_ptr() in seen:
            return
        seen.add(s.data_ptr())
        out[kind] += s.nbytes()
        if sources is not None:
            sources[f"{kind} <- {where}"] = sources.get(f"{kind} <- {where}", 0) + s.nbytes()

    params = list(engine.module.parameters())
    for p in params:
        add("params", getattr(p, "ds_tensor", None), "module parameters (ds_tensor)")
        add("params", p, "module parameters")
    for p in params:
        add("grads", p.grad, "module parameters .grad")
    wrapper = engine.optimizer
    base = getattr(wrapper, "optimizer", wrapper) if isinstance(getattr(wrapper, "optimizer", None),
                                                                torch.optim.Optimizer) else wrapper
    for state in base.state.values():
        for t in state.values():
            add("optimizer", t, "optimizer.state")
    for group in base.param_groups:
        for t in group["params"]:
            add("master", t, "optimizer.param_groups")
            add("grads", t.grad, "optimizer.param_groups .grad")
    if wrapper is not base:
        for name, value in vars(wrapper).items():
            if name == "optimizer":
                continue
            low = name.lower()
            if "ipg" in low or "bucket" in low:
                kind = "buffers"
            elif "grad" in low and "norm" not in low:
                kind = "grads"
            elif "fp32" in low or "master" in low:
                kind = "master"
            elif any(k in low for k in ("param", "bit16", "fp16", "lp_")):
                kind = "params"
            else:
                kind = "other"
            for t in _tensors(value, depth=0, visited=set()):
                add(kind, t, name)
                add("grads", t.grad, name + " .grad")
    return out


def _tensors(obj: Any, depth: int, visited: set[int]):
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if depth > 6 or id(obj) in visited:
        return
    if isinstance(obj, (list, tuple, set)):
        visited.add(id(obj))
        for x in obj:
            yield from _tensors(x, depth + 1, visited)
    elif isinstance(obj, dict):
        visited.add(id(obj))
        for x in obj.values():
            yield from _tensors(x, depth + 1, visited)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        visited.add(id(obj))
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name), depth + 1, visited)


def saved_activation_bytes(module: torch.nn.Module, forward) -> tuple[Any, int]:
    """(``forward()``, bytes of the tensors autograd saved for the backward meanwhile): each storage once,
    ``module``'s parameters and buffers left out. The activations of one micro-batch on this rank, what
    ``pretrain.bench.plan`` checks the planner's prediction against (a CPU has no max_memory_allocated)."""
    fixed = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        st = t.untyped_storage()
        if st.data_ptr() not in seen and st.data_ptr() not in fixed:
            seen.add(st.data_ptr())
            total += st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return out, total


def model_states(b: dict[str, int]) -> int:
    return sum(b[k] for k in CATEGORIES)


# ------------------------------------------------------------------------------------------------ ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from pretrain.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides)


def _build(cfg):
    """Config -> (trainer, model): the Trainer's own plan and model build (same seed, the full model, then the
    tensor-parallel split), in a process whose rank and world size are set as torchrun sets them."""
    from pretrain.trainer import Trainer

    trainer = Trainer(cfg).plan()
    return trainer, trainer.build_model()


def _batches(args, micro: int, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, args.vocab_size, (micro, args.seq_length), generator=g) for _ in range(n)]


def _count_before_pipeline_step(engine, out: dict) -> None:
    """Make DeepSpeed's pipeline engine count :func:`model_state_bytes` just before its optimizer step (after the
    backward of the step's last micro-batch), as the data-parallel runs count after their backward."""
    from deepspeed.runtime.pipe.schedule import OptimizerStep

    table = dict(type(engine)._INSTRUCTION_MAP)
    step = table[OptimizerStep]

    def counted_step(self, *a, **kw):
        sources: dict[str, int] = {}
        out["bytes"], out["sources"] = model_state_bytes(self, sources), sources
        return step(self, *a, **kw)

    table[OptimizerStep] = counted_step
    engine._INSTRUCTION_MAP = table


def _measure_memory(rank: int, world: int, overrides: list[str], runs: list[tuple]) -> list[dict]:
    """For each (precision, ZeRO stage[, tp, pp]): build the engine, run a step, then the forward and backward of a
    second one, count :func:`model_state_bytes`, finish the step. tp/pp (default 1) split the ``world`` ranks;
    the data-parallel size is what is left."""
    results = []
    for run in runs:
        precision, stage, tp, pp, sp = (*run, *(1, 1, False)[len(run) - 2:])
        # micro batch 1: model states do not depend on the batch, and two bf16 steps on a CPU are slow enough
        cfg = _compose(overrides + [f"trainer.precision={precision}", f"parallel.zero_stage={stage}",
                                    "trainer.micro_batch_size=1", f"parallel.tensor_model_parallel_size={tp}",
                                    f"parallel.pipeline_model_parallel_size={pp}",
                                    f"parallel.sequence_parallel={'true' if sp else 'false'}"])
        trainer, model = _build(cfg)
        plan, args = trainer.batch, trainer.args
        n_params = trainer.n_params
        trainer.build_engine()
        engine = trainer.engine.ds
        batches = _batches(args, plan.micro_batch_size, 2, seed=rank if pp == 1 else 0)
        if pp > 1:
            got: dict = {}
            stream = iter({"input_ids": x, "labels": x} for x in batches)
            trainer.engine.train_step(stream, plan.grad_accum_steps, trainer.device)
            _count_before_pipeline_step(engine, got)
            trainer.engine.train_step(stream, plan.grad_accum_steps, trainer.device)
            counted, sources = got["bytes"], got["sources"]
        else:
            activations = None
            for i, x in enumerate(batches):
                if i == 1 and plan.zero_stage == 0:  # (ZeRO-3 would gather parameters inside the forward)
                    loss, activations = saved_activation_bytes(engine.module, lambda e=engine, x=x: e(x, x))
                else:
                    loss = engine(x, x)
                engine.backward(loss)
                if i == 1:
                    sources = {}
                    counted = model_state_bytes(engine, sources)
                engine.step()
        results.append({"precision": precision, "requested_stage": stage, "stage": plan.zero_stage, "dp": world,
                        "tp": tp, "pp": pp, "sp": sp, "data_parallel_size": plan.data_parallel_size,
                        "pipeline_stage": trainer.grid.get_pipe_parallel_rank(),
                        "tensor_rank": trainer.grid.get_tensor_model_parallel_rank(),
                        "parameters": n_params, "bytes": counted, "sources": sources,
                        "activation_bytes": activations if pp == 1 else None,
                        "ds_optimizer": type(engine.optimizer).__name__})
        engine.destroy()
        trainer.stop_request.close()
        del engine, model, trainer
    return results


class _Trainer:
    """fp32 training at tp = world size (dp = 1), ZeRO stage 0 as batch_plan runs one data-parallel rank."""

    def __init__(self, rank: int, world: int, overrides: list[str]):
        cfg = _compose(overrides + ["trainer.precision=fp32", f"parallel.tensor_model_parallel_size={world}"])
        self.trainer, model = _build(cfg)
        self.plan, self.args = self.trainer.batch, self.trainer.args
        self.rank_parameters = sum(p.numel() for p in model.parameters())
        self.trainer.build_engine()
        self.engine = self.trainer.engine.ds
        self.batches = _batches(self.args, self.plan.micro_batch_size, 8, seed=0)  # the same on every tp rank
        self.i = 0
        self.losses: list[float] = []

    def run(self, n: int) -> float:
        """Seconds for ``n`` steps, the slowest rank's (barriers before and after)."""
        torch.distributed.barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            x = self.batches[self.i % len(self.batches)]
            loss = self.engine(x, x)
            self.engine.backward(loss)
            self.engine.step()
            self.losses.append(loss.item())
            self.i += 1
        torch.distributed.barrier()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.item()

    def info(self) -> dict:
        return {"threads": torch.get_num_threads(), "zero_stage": self.plan.zero_stage,
                "micro_batch": self.plan.micro_batch_size, "global_batch": self.plan.global_batch_size,
                "seq_length": self.args.seq_length, "rank_parameters": self.rank_parameters, "losses": self.losses}


def _serve(rank: int, world: int, port: int, threads: int, overrides: list[str], log: str, cmds, results) -> None:
    """One rank: joins its group (gloo), then runs the parent's commands until "stop"."""
    import sys
    import traceback
    import warnings

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    # DeepSpeed's prints and its compiler probes (C level): into the log, shown if something fails
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(log, "a", buffering=1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(threads)
    trainer = None
    try:
        from pretrain.distributed import init_distributed

        init_distributed(torch.device("cpu"), "gloo", 600)
        while True:
            cmd, *args = cmds.get()
            if cmd == "stop":
                break
            if cmd == "trainer":
                trainer = _Trainer(rank, world, overrides)
                out: Any = None
            elif cmd == "time":
                out = trainer.run(*args)
            elif cmd == "info":
                out = trainer.info()
                trainer.engine.destroy()
                trainer.trainer.stop_request.close()
                trainer = None
            elif cmd == "memory":
                out = _measure_memory(rank, world, overrides, *args)
            else:
                raise ValueError(f"unknown command {cmd!r}")
            results.put((rank, True, out))
        torch.distributed.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
        raise


class Ranks:
    """``world`` spawned CPU processes joined by gloo (their own rendezvous), ``threads`` torch threads each,
    running commands sent by the parent; idle ones block on a queue and take no CPU. Keeping both groups
    alive lets the timed rounds of tp=1 and tp=2 alternate, as in ``pretrain.bench.train``."""

    def __init__(self, world: int, threads: int, overrides: list[str], log_dir: str):
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.world, self.results = world, ctx.Queue()
        self.cmds = [ctx.Queue() for _ in range(world)]
        port = _free_port()
        self.logs = [os.path.join(log_dir, f"world{world}-rank{r}.log") for r in range(world)]
        self.procs = [ctx.Process(target=_serve, args=(r, world, port, threads, overrides, self.logs[r], self.cmds[r],
                                                       self.results), daemon=True) for r in range(world)]
        for p in self.procs:
            p.start()

    def send(self, *cmd: Any) -> None:
        for q in self.cmds:
            q.put(cmd)

    def collect(self, timeout_s: float = 900) -> list[Any]:
        import queue

        out: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(out) < self.world:
            try:
                rank, ok, value = self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(self.procs) if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"world {self.world}: rank(s) {dead or 'all'} "
                                       f"{'died' if dead else 'timed out'}\n{self._log_tail()}")
                continue
            if not ok:
                self.close()
                raise RuntimeError(f"world {self.world}, rank {rank} failed:\n{value}\n{self._log_tail()}")
            out[rank] = value
        return [out[r] for r in range(self.world)]

    def call(self, *cmd: Any) -> list[Any]:
        self.send(*cmd)
        return self.collect()

    def _log_tail(self) -> str:
        tails = []
        for path in self.logs:
            if os.path.exists(path):
                with open(path) as f:
                    tails.append(f"--- {os.path.basename(path)}\n" + "".join(f.readlines()[-30:]))
        return "\n".join(tails)

    def close(self) -> None:
        for q in self.cmds:
            q.put(("stop",))
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


# ------------------------------------------------------------------------------------------------ main


def _cpu_ticks(pids: list[int]) -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of ``pids``) from /proc; None where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = sum(v) - v[3] - v[4]  # all but idle and iowait
        ours = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ours += int(fields[11]) + int(fields[12])  # utime + stime, every thread of the process
        return busy, ours
    except (OSError, ValueError, IndexError):
        return None


def _timed_round(g: "Ranks", steps: int, pids: list[int]) -> tuple[float, float | None]:
    """Seconds of ``steps`` steps of group ``g``, and the share of the machine's CPUs that processes other than
    this benchmark's used meanwhile (other jobs on a shared machine: the step times are not comparable then)."""
    before, t0 = _cpu_ticks(pids), time.monotonic()
    seconds = g.call("time", steps)[0]
    after, wall = _cpu_ticks(pids), time.monotonic() - t0
    if before is None or after is None:
        return seconds, None
    foreign = (after[0] - before[0]) - (after[1] - before[1])
    return seconds, max(0.0, foreign / (wall * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)))


def _mib(n: int) -> str:
    return f"{n / 2**20:9.2f}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true",
                    help=f"small and fast, for the test: {TINY_SHAPE}, 1 warm-up step, 1 round of 2 timed steps")
    for k, v in DEFAULT_SHAPE.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=None, help=f"(default {v})")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round and tp size (default 4)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds alternating tp1 and tp2 (default 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first, per tp size (default 2)")
    ap.add_argument("--precisions", default="bf16,fp32", help="of the memory part (default bf16,fp32)")
    ap.add_argument("--verbose", action="store_true", help="print where the counted bytes were found")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    a = ap.parse_args(argv)

    shape = dict(TINY_SHAPE if a.tiny else DEFAULT_SHAPE)
    shape.update({k: getattr(a, k) for k in shape if getattr(a, k) is not None})
    steps = a.steps if a.steps is not None else (2 if a.tiny else 4)
    rounds = a.rounds if a.rounds is not None else (1 if a.tiny else 3)
    warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 2)
    timed = steps > 0 and rounds > 0
    precisions = [p for p in a.precisions.split(",") if p]
    if not precisions or not set(precisions) <= {"bf16", "fp32"}:
        ap.error(f"--precisions {a.precisions!r}: a comma-separated list of bf16 and fp32 (fp16 needs CUDA)")
    overrides = BASE + [
        f"model.num_layers={shape['layers']}", f"model.hidden_size={shape['hidden']}",
        f"model.num_attention_heads={shape['heads']}", f"model.vocab_size={shape['vocab']}",
        f"model.seq_length={shape['seq']}", f"trainer.micro_batch_size={shape['micro_batch']}",
    ] + a.overrides
    _compose(overrides)  # a bad override fails here, before any process starts

    t_start = time.perf_counter()
    t_tp: dict[int, list[float]] = {1: [], 2: []}
    foreign: dict[int, list[float]] = {1: [], 2: []}
    phases: dict[str, float] = {}
    mark = t_start

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name], mark = round(now - mark, 2), now

    with tempfile.TemporaryDirectory() as logs:
        one, two = Ranks(1, 2, overrides, logs), Ranks(2, 1, overrides, logs)  # both start up at once
        try:
            if timed:
                one.send("trainer")
                two.send("trainer")
                one.collect(), two.collect()
                phase("start-up, tp engines")
                for g in (one, two):  # warm-up, untimed; from here on one group at a time
                    g.call("time", warmup)
                pids = [p.pid for p in one.procs + two.procs]
                for r in range(rounds):  # alternate which goes first, so drift of the machine hits both alike
                    for g in ((one, two) if r % 2 == 0 else (two, one)):
                        seconds, other = _timed_round(g, steps, pids)
                        t_tp[g.world].append(seconds)
                        if other is not None:
                            foreign[g.world].append(other)
                info = {1: one.call("info")[0], 2: two.call("info")[0]}
                phase("tp steps")
            one.send("memory", [(p, 0) for p in precisions])  # bytes, not time: both groups at once
            two.send("memory", [(p, s) for p in precisions for s in STAGES]
                     + [(p, 0, *split) for p in precisions for split in SPLITS]
                     + ([SEQUENCE_PARALLEL_RUN] if "fp32" in precisions else []))
            mem1, mem2 = one.collect(), two.collect()
            phase("memory")
        finally:
            one.close()
            two.close()
    wall = time.perf_counter() - t_start

    n_params = mem1[0][0]["parameters"]
    res: dict[str, Any] = {
        "shape": shape, "parameters": n_params, "overrides": a.overrides, "memory": {}, "timing": None,
        "wall_s": wall, "phases_s": phases, "load_avg": os.getloadavg(), "deepspeed": _version("deepspeed"),
        "torch": torch.__version__,
    }
    # -------- memory: dp1 baseline (one rank) against the dp2 rank that holds the most
    for prec in precisions:
        base = next(r for r in mem1[0] if r["precision"] == prec)
        bb = base["bytes"]
        rows: dict[str, Any] = {"dp1": {"stage": base["stage"], "bytes": bb, "sources": base["sources"],
                                        "ds_optimizer": base["ds_optimizer"],
                                        "activation_bytes": base["activation_bytes"]}}
        for s in STAGES:
            per_rank = [next(r for r in mem2[k] if r["precision"] == prec and r["requested_stage"] == s
                             and (r["tp"], r["pp"]) == (1, 1) and not r["sp"]) for k in range(2)]
            worst = max(per_rank, key=lambda r: model_states(r["bytes"]))
            b = worst["bytes"]
            rows[f"zero{s}_dp2"] = {
                "stage": worst["stage"], "bytes": b, "sources": worst["sources"], "ds_optimizer": worst["ds_optimizer"],
                "per_rank_total": [model_states(r["bytes"]) for r in per_rank],
                "ratio": model_states(b) / model_states(bb),
                "ratio_by_kind": {k: (b[k] / bb[k] if bb[k] else None) for k in CATEGORIES},
                "ratio_optimizer_states": (b["master"] + b["optimizer"]) / (bb["master"] + bb["optimizer"]),
            }
        for tp, pp, sp in [(tp, pp, False) for tp, pp in SPLITS] + [(2, 1, True)]:
            ranks = [next((r for r in mem2[k] if r["precision"] == prec
                           and (r["tp"], r["pp"], r["sp"]) == (tp, pp, sp)), None) for k in range(2)]
            if None in ranks:  # the sequence-parallel run is fp32 only
                continue
            rows[f"tp{tp}_pp{pp}" + ("_sp" if sp else "")] = {
                "stage": ranks[0]["stage"], "tp": tp, "pp": pp, "sp": sp, "ds_optimizer": ranks[0]["ds_optimizer"],
                "per_rank": [{"bytes": r["bytes"], "pipeline_stage": r["pipeline_stage"],
                              "tensor_rank": r["tensor_rank"], "activation_bytes": r["activation_bytes"]}
                             for r in ranks],
                "bytes": max((r["bytes"] for r in ranks), key=model_states),
                "per_rank_total": [model_states(r["bytes"]) for r in ranks],
                "ratio": max(model_states(r["bytes"]) for r in ranks) / model_states(bb),
            }
        res["memory"][prec] = rows
    # -------- timing
    if timed:
        t1, t2 = sum(t_tp[1]), sum(t_tp[2])
        n = steps * rounds
        res["timing"] = {
            "steps": n, "rounds": rounds, "warmup": warmup, "ratio": t2 / t1,
            "round_ratios": [b / a_ for a_, b in zip(t_tp[1], t_tp[2])],
            "other_processes_cpu_share": {f"tp{k}": max(v) if v else None for k, v in foreign.items()},
            "tp1": {**info[1], "seconds": t_tp[1], "step_s": t1 / n},
            "tp2": {**info[2], "seconds": t_tp[2], "step_s": t2 / n},
            "first_loss_rel_diff": abs(info[2]["losses"][0] - info[1]["losses"][0]) / abs(info[1]["losses"][0]),
        }

    # -------- print
    print(f"model: GPT {n_params / 1e6:.2f}M parameters, {shape['layers']} layers x {shape['hidden']}, "
          f"{shape['heads']} heads, vocab {shape['vocab']}, seq {shape['seq']}, micro batch {shape['micro_batch']}; "
          f"CPU, gloo, torch {torch.__version__}, DeepSpeed {res['deepspeed']}")
    for prec in precisions:
        rows = res["memory"][prec]
        print(f"\nmodel-state MiB per rank, {prec}, counted after the backward of step 2; dp2: the rank holding most; "
              f"dp1: one rank, run by batch_plan as ZeRO-{rows['dp1']['stage']} ({rows['dp1']['ds_optimizer']})")
        print(f"{'':13}{'params':>9}{'grads':>9}{'master':>9}{'Adam':>9}{'total':>9}{'dp2/dp1':>9}"
              f"{'opt.st.':>9}{'buffers':>11}")
        for name, r in rows.items():
            b = r["bytes"]
            label = (f"dp1 (ZeRO-{r['stage']})" if name == "dp1" else
                     f"tp{r['tp']}{' sp' if r['sp'] else ''} pp{r['pp']} Z{r['stage']}" if "tp" in r
                     else f"ZeRO-{r['stage']} dp2")
            ratios = (f"{r['ratio']:9.3f}" + (f"{r['ratio_optimizer_states']:9.3f}" if "ratio_optimizer_states" in r
                                              else f"{'-':>9}")) if "ratio" in r else f"{'-':>9}{'-':>9}"
            print(f"{label:13}{_mib(b['params'])}{_mib(b['grads'])}{_mib(b['master'])}{_mib(b['optimizer'])}"
                  f"{_mib(model_states(b))}{ratios}{b['buffers'] / 2**20:11.1f}")
            if a.verbose:
                for where, nbytes in sorted(r["sources"].items()):
                    print(f"{'':15}{nbytes / 2**20:9.2f}  {where}")
    print("  total = params + grads + master + Adam; opt.st. = master + Adam (the ZeRO paper's optimizer states);"
          "\n  buffers = communication buckets (torch.empty, reduce_bucket_size elements), not counted in total")
    if timed:
        t = res["timing"]
        print(f"\nstep time, fp32, tp=2 vs tp=1, dp=1, ZeRO-{t['tp1']['zero_stage']}: same initial weights, same "
              f"batches (global batch {t['tp1']['global_batch']} x seq {t['tp1']['seq_length']}); {warmup} warm-up "
              f"steps, then {rounds} round(s) of {steps} timed steps, alternating which goes first")
        print(f"{'':6}{'ranks x threads':>16}{'s/step':>10}{'tokens/s':>10}{'params/rank':>13}{'first loss':>12}")
        for name, ranks in (("tp1", 1), ("tp2", 2)):
            r = t[name]
            tok = r["global_batch"] * r["seq_length"] / r["step_s"]
            print(f"{name:6}{ranks:>12} x {r['threads']:<2}{r['step_s']:10.3f}{tok:10.1f}"
                  f"{r['rank_parameters'] / 1e6:12.2f}M{r['losses'][0]:12.5f}")
        print("  both use the 2 cores: on one CPU the ratio is what tensor parallelism costs (an all-reduce per "
              "attention\n  and MLP block each way, smaller matmuls), not the speed-up it brings across GPUs")
        share = t["other_processes_cpu_share"]
        if share["tp1"] is not None:
            busy = max(share.values())
            print(f"  other processes used up to {100 * share['tp1']:.0f}% (during tp1 rounds) and "
                  f"{100 * share['tp2']:.0f}% (tp2) of the machine's CPUs"
                  + ("\n  WARNING: a busy machine, the step times are not comparable (the 2 threads of one process "
                     "suffer most)" if busy > 0.1 else ""))
    print("\nsummary")
    for prec in precisions:
        for s in STAGES:
            r = res["memory"][prec][f"zero{s}_dp2"]
            target = " (target <= 0.6)" if s == 3 else ""
            print(f"  {prec:5} ZeRO-{s} dp2/dp1 model-state bytes per rank: {r['ratio']:.3f}{target}; optimizer "
                  f"states {r['ratio_optimizer_states']:.3f}; Adam states {r['ratio_by_kind']['optimizer']:.3f}")
    if timed:
        t = res["timing"]
        print(f"  fp32  tp2/tp1 step time: {t['ratio']:.3f} (rounds {min(t['round_ratios']):.3f} to "
              f"{max(t['round_ratios']):.3f}; first-step losses equal within {t['first_loss_rel_diff']:.1e} relative)")
    print(f"  wall time {wall:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in phases.items())}); load average "
          f"{res['load_avg'][0]:.1f} at the end (2 cores)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


if __name__ == "__main__":
    main()
