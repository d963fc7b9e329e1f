"""The suite's end-to-end training runs, in one table: each named run is trained at most once per test session,
and every test that needs it reads its run directory (``metrics.jsonl``, ``train.log``, ``checkpoints/``).

A run costs seconds of start-up (python, torch and DeepSpeed in every process) before its first step, and the
tiny models' steps take milliseconds; so a test that needs a run already in the table reads that one instead of
launching its own, and a new test first looks here for a run it can share. Tests read shared run directories;
they never train into them or change them (copy one to ``tmp_path`` first for that).

``e2e_run(name)`` (the session fixture in conftest.py) returns a :class:`Trained`: the run directory and the
output of each launch. An override may name a folder by placeholder: ``{dir}`` is the run's own directory and
``{run:NAME}`` the directory of run NAME (trained first when needed).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import TINY, read_metrics, run_train


@dataclass(frozen=True)
class Leg:
    """One launch into the run directory: extra overrides, and the process count if not the run's."""

    overrides: tuple[str, ...] = ()
    nproc: int | None = None


@dataclass(frozen=True)
class Run:
    """``overrides`` are given to every launch; ``legs`` are the successive launches (one by default), e.g. a
    run stopped and resumed; ``env`` is added to the environment of each launch."""

    overrides: tuple[str, ...]
    nproc: int = 1
    legs: tuple[Leg, ...] = (Leg(),)
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class Trained:
    """What a test reads: the run directory and each launch's output (``outputs[-1].stdout``: the last one)."""

    dir: Path
    outputs: list[subprocess.CompletedProcess] = field(default_factory=list)


def run(*overrides: str, nproc: int = 1, legs: list[Leg] | None = None, env: dict[str, str] | None = None) -> Run:
    return Run(tuple(overrides), nproc, tuple(legs or [Leg()]), tuple(sorted((env or {}).items())))


def leg(*overrides: str, nproc: int | None = None) -> Leg:
    return Leg(tuple(overrides), nproc)


# --------------------------------------------------------------------------------------- the shared settings
# GPT against one process: global batch 8 of micro-batches of 4, so one process accumulates 2 micro-batches per step
# and 2 data-parallel ranks take 1 each, the same samples either way (the sampler reads the global order in
# strides). Dropout off: its masks differ per data-parallel rank by design.
GPT_STEPS = 30
GPT_COMMON = (*TINY, "trainer.global_batch_size=8", f"trainer.max_steps={GPT_STEPS}", "trainer.eval_interval=15",
              "model.hidden_dropout=0", "model.attention_dropout=0")
GPT_ZERO = [("zero0", "fp32"), ("zero1", "fp32"), ("zero2", "fp32"), ("zero3", "bf16"), ("zero3_offload", "fp32")]

# GPT stopped and resumed on 2 processes; dropout on, so the RNG states must be restored too
GPT_RESUME = (*TINY, "model.hidden_dropout=0.1", "model.attention_dropout=0.1", "optim.sched.decay_steps=20",
              "trainer.eval_interval=5", "parallel=zero1")

# BERT / T5 against one process: 30 steps, global batch 8, micro-batch 4, no dropout (the tiny models have none by
# default; set here so that the comparison does not depend on it)
ZOO_STEPS = 30
ZOO_EQUAL = ("trainer.micro_batch_size=4", "trainer.global_batch_size=8", f"trainer.max_steps={ZOO_STEPS}",
             "trainer.log_interval=1", "trainer.eval_interval=0", "optim.sched.warmup_steps=2",
             "model.hidden_dropout=0", "model.attention_dropout=0")
ZOO_COMMON = ("trainer.micro_batch_size=4", "trainer.log_interval=1", "trainer.eval_interval=0",
              "optim.sched.warmup_steps=2")
ZOO_RESUME = {"bert_tiny": 1, "t5_tiny": 0}  # experiment -> ZeRO stage of its exact-resume runs
ZOO_RESUME_BERT, ZOO_RESUME_T5 = ((f"experiment={e}", *ZOO_COMMON, f"parallel=zero{z}", "optim.sched.decay_steps=6",
                                   "model.hidden_dropout=0.1") for e, z in ZOO_RESUME.items())

# pipeline parallelism: 4 micro-batches of 2 per step, so the 1F1B schedule has work in flight on both stages
PIPE_GPT = ("experiment=gpt_tiny", "trainer.micro_batch_size=2", "trainer.global_batch_size=8",
            "trainer.log_interval=1", "trainer.eval_interval=5", "optim.sched.warmup_steps=2",
            "optim.sched.decay_steps=10", "trainer.max_steps=10")
PIPE_BERT = (*PIPE_GPT[1:], "experiment=bert_tiny", "model.hidden_dropout=0", "model.attention_dropout=0")
TP2, PP2 = "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"

# mixture of experts (docs/moe.md): the tiny GPT with 4 experts per layer, top-2, no dropping, 10 steps, fp32;
# ep1 (one process, MOE_STEPS + 4 steps) is the reference of ep2 (dp2, ZeRO-1) and ep2 x tp2 (4 processes, ZeRO-2)
# over MOE_STEPS; ep2's second leg resumes at ep1 for 2 steps, its third at ep2 with ZeRO-0 for 2 more (each rank
# holding half the experts: the checkpoint gathers and slices them by global index), all on ep1's losses
MOE_STEPS = 10
MOE = (*TINY, "trainer.global_batch_size=8", "model.hidden_dropout=0", "model.attention_dropout=0",
       "model.num_experts=4", "model.moe_router_topk=2", "model.moe_ffn_hidden_size=96", "trainer.precision=fp32",
       "parallel=zero1", f"optim.sched.decay_steps={MOE_STEPS + 4}")
EP2 = "parallel.expert_model_parallel_size=2"
CP2 = "parallel.context_parallel_size=2"

# the accelerate engine (docs/engines.md) at dp2 against DeepSpeed: 10 steps of GPT_COMMON on the 30-step runs' LR
# curve (decay over 30), so DDP compares with the first steps of gpt_dp2_zero0; FSDP2 with a 10-step ZeRO-3 fp32 run
ACCEL_STEPS = 10
ACCEL = (*GPT_COMMON, f"optim.sched.decay_steps={GPT_STEPS}", "trainer.precision=fp32")

RUNS: dict[str, Run] = {
    # ------------------------------------------------------- GPT (test_train_e2e.py)
    # the reference of every GPT layout: one process launched without torchrun (ZeRO-0, accumulation 2)
    "gpt_one_process": run(*GPT_COMMON, "parallel=zero0"),
    "gpt_dp2_zero0": run(*GPT_COMMON, "parallel=zero0", "trainer.precision=fp32", nproc=2),
    "gpt_dp2_zero1": run(*GPT_COMMON, "parallel=zero1", "trainer.precision=fp32", nproc=2),
    "gpt_dp2_zero2": run(*GPT_COMMON, "parallel=zero2", "trainer.precision=fp32", nproc=2),
    "gpt_dp2_zero3": run(*GPT_COMMON, "parallel=zero3", "trainer.precision=bf16", nproc=2),
    "gpt_dp2_zero3_offload": run(*GPT_COMMON, "parallel=zero3_offload", "trainer.precision=fp32", nproc=2),
    "gpt_tp2": run(*GPT_COMMON, TP2, nproc=2),
    "llama_dp2_zero2_accum2": run(
        "experiment=llama_tiny", "trainer.micro_batch_size=2", "trainer.global_batch_size=8", "trainer.max_steps=30",
        "trainer.log_interval=1", "trainer.eval_interval=0", "parallel=zero2", nproc=2),
    "gpt_resume_straight": run(*GPT_RESUME, "trainer.max_steps=20", nproc=2, env={"WANDB_MODE": "offline"}),
    "gpt_resume_split": run(*GPT_RESUME, nproc=2, env={"WANDB_MODE": "offline"},
                            legs=[leg("trainer.max_steps=10"), leg("trainer.max_steps=20")]),
    # ZeRO-2 on 2 ranks for 3 steps, resumed by one process to 6, then to 8 with half the global batch; the LR
    # curve is the reference's (decay over its 30 steps)
    "gpt_resume_reshaped": run(*GPT_COMMON, f"optim.sched.decay_steps={GPT_STEPS}", legs=[
        leg("trainer.max_steps=3", "parallel=zero2", nproc=2), leg("trainer.max_steps=6", "parallel=zero2"),
        leg("trainer.max_steps=8", "trainer.global_batch_size=4")]),
    # ------------------------------------------------------- BERT / T5 (test_parallel_equality.py, test_zoo_e2e.py)
    "bert_one_process": run("experiment=bert_tiny", *ZOO_EQUAL, "parallel=zero0"),
    "t5_one_process": run("experiment=t5_tiny", *ZOO_EQUAL, "parallel=zero0"),
    "bert_tp2": run("experiment=bert_tiny", *ZOO_EQUAL, TP2, nproc=2),
    "t5_tp2": run("experiment=t5_tiny", *ZOO_EQUAL, TP2, nproc=2),
    # BERT saves DeepSpeed's files only (export consolidates its ZeRO-2 shards), T5 also the layout-free copy
    "bert_dp2_zero2": run("experiment=bert_tiny", *ZOO_EQUAL, "parallel=zero2", "checkpoint.universal=false", nproc=2),
    "t5_dp2_zero3": run("experiment=t5_tiny", *ZOO_EQUAL, "parallel=zero3", "checkpoint.universal=true", nproc=2),
    # 6 steps straight, and 3 + resumed to 6, on 2 processes; dropout on: the RNG streams must resume too
    "bert_resume_straight": run(*ZOO_RESUME_BERT, nproc=2, legs=[leg("trainer.max_steps=6")]),
    "bert_resume_split": run(*ZOO_RESUME_BERT, nproc=2, legs=[leg("trainer.max_steps=3"), leg("trainer.max_steps=6")]),
    "t5_resume_straight": run(*ZOO_RESUME_T5, nproc=2, legs=[leg("trainer.max_steps=6")]),
    "t5_resume_split": run(*ZOO_RESUME_T5, nproc=2, legs=[leg("trainer.max_steps=3"), leg("trainer.max_steps=6")]),
    # ------------------------------------------------------- pipeline, sequence parallelism (test_pipeline_e2e.py)
    "gpt_pp_one_process": run(*PIPE_GPT, "checkpoint.interval=5"),  # checkpoints at 5 and 10
    "gpt_pp2": run(*PIPE_GPT, PP2, nproc=2),
    "gpt_tp2_pp2": run(*PIPE_GPT, "trainer.max_steps=5", PP2, TP2, nproc=4),
    # its step-5 checkpoint resumed by one process (tp, pp and ZeRO stage change) and by dp2 with ZeRO-3
    "gpt_tp2_pp2_resumed_one_process": run(*PIPE_GPT, "checkpoint.resume={run:gpt_tp2_pp2}/checkpoints/step_000005",
                                           "checkpoint.dir={dir}/ckpt"),
    "gpt_tp2_pp2_resumed_dp2_zero3": run(*PIPE_GPT, "checkpoint.resume={run:gpt_tp2_pp2}/checkpoints/step_000005",
                                         "checkpoint.dir={dir}/ckpt", "parallel=zero3", nproc=2),
    "gpt_tp2_sp": run(*PIPE_GPT, TP2, "parallel.sequence_parallel=true", nproc=2),
    "bert_pp_one_process": run(*PIPE_BERT),
    "bert_pp2": run(*PIPE_BERT, PP2, nproc=2),
    # ------------------------------------------------------- accelerate engine (test_accelerate_e2e.py)
    "accel_ddp_dp2": run(*ACCEL, "engine=accelerate", f"trainer.max_steps={ACCEL_STEPS}", nproc=2),
    "gpt_dp2_zero3_fp32": run(*ACCEL, "parallel=zero3", f"trainer.max_steps={ACCEL_STEPS}", nproc=2),
    # FSDP2 with full sharding to step 5, resumed from that DCP checkpoint to 10 replicated (sharding=none: DCP
    # reshards the saved shards)
    "accel_fsdp2_dp2": run(*ACCEL, "engine=fsdp2", "checkpoint.interval=5", nproc=2, legs=[
        leg("trainer.max_steps=5"), leg(f"trainer.max_steps={ACCEL_STEPS}", "engine.accelerate.sharding=none")]),
    # ------------------------------------------------------- failures (test_failures.py)
    "moe_ep1": run(*MOE, f"trainer.max_steps={MOE_STEPS + 4}"),  # one process accumulating 2 micro-batches
    "moe_ep2": run(*MOE, nproc=2, legs=[leg(EP2, f"trainer.max_steps={MOE_STEPS}"),
                                       leg(f"trainer.max_steps={MOE_STEPS + 2}"),
                                       leg(EP2, "parallel.zero_stage=0", f"trainer.max_steps={MOE_STEPS + 4}")]),
    "moe_ep2_tp2": run(*MOE, EP2, TP2, "parallel.zero_stage=2", f"trainer.max_steps={MOE_STEPS}", nproc=4),
    # ------------------------------------------------------- context parallelism (test_context_parallel.py)
    # 10 steps of cp1's references above on the same samples (their 30-step LR curve): llama cp2 (RoPE, GQA; ZeRO-0
    # all-reducing over the context ranks) against llama_dp2_zero2_accum2; gpt cp2 x dp2 (ZeRO-1 over 4 ranks)
    # against gpt_one_process
    "llama_cp2": run("experiment=llama_tiny", "trainer.micro_batch_size=2", "trainer.global_batch_size=8",
                     "trainer.max_steps=10", "optim.sched.decay_steps=30", "trainer.log_interval=1",
                     "trainer.eval_interval=5", "parallel=zero0", CP2, nproc=2),
    "gpt_cp2_dp2": run(*GPT_COMMON, "parallel=zero1", "trainer.precision=fp32", "trainer.max_steps=10",
                       f"optim.sched.decay_steps={GPT_STEPS}", "trainer.eval_interval=5", CP2, nproc=4),
    "gpt_budget_stop": run(*TINY, "trainer.max_steps=6", "trainer.max_wall_time_s=0.000001"),
    # ------------------------------------------------------- training health (test_guard.py: "faults" on 2 ranks)
    "gpt_dp2_zero2_guard": run(*TINY, "trainer.global_batch_size=8", "model.hidden_dropout=0",
                               "model.attention_dropout=0", "optim.sched.decay_steps=30", "trainer.max_steps=16",
                               "trainer.guard.window=5", "trainer.guard.warmup_steps=5", "trainer.guard.patience=3",
                               "trainer.guard.inject={nan_at: [7], spike_at: [12]}", "parallel=zero2", nproc=2),
    # ------------------------------------------------------- distillation (test_distill.py; baseline: gpt_one_process)
    # a teacher of 4x the width and twice the depth, 60 steps; the student is gpt_one_process distilled from it
    "gpt_kd_teacher": run(*TINY, "model.hidden_size=128", "model.num_layers=4", "trainer.micro_batch_size=8",
                          "trainer.global_batch_size=8", "trainer.max_steps=60", "model.hidden_dropout=0",
                          "model.attention_dropout=0", "parallel=zero0"),
    "gpt_kd_student": run(*GPT_COMMON, "parallel=zero0", "objective=distill", "distill.teacher={run:gpt_kd_teacher}",
                          "distill.alpha=0.2", "distill.temperature=1.0"),
}

_PLACEHOLDER = re.compile(r"\{(dir|run:[A-Za-z0-9_]+)\}")


class Runner:
    """Trains the runs of :data:`RUNS` on first use, each in ``root / name``, and remembers the result (or the
    failure, so that the tests sharing a failed run fail at once with its message instead of training it again)."""

    def __init__(self, root: Path, env: dict[str, str], runs: dict[str, Run] | None = None):
        self.root, self.env, self.runs = root, env, RUNS if runs is None else runs
        self.done: dict[str, Trained | BaseException] = {}

    def __call__(self, name: str) -> Trained:
        if name not in self.runs:
            raise KeyError(f"no end-to-end run {name!r} in tests/e2e.py RUNS (known: {', '.join(sorted(self.runs))})")
        if name not in self.done:
            try:
                self.done[name] = self._train(name)
            except BaseException as e:  # noqa: BLE001 - remembered and re-raised for every test that needs it
                self.done[name] = e
        result = self.done[name]
        if isinstance(result, BaseException):
            if isinstance(result, (KeyboardInterrupt, SystemExit)):
                raise result
            pytest.fail(f"end-to-end run {name!r} failed:\n{result}", pytrace=False)
        return result

    def _train(self, name: str) -> Trained:
        spec, run_dir = self.runs[name], self.root / name

        def resolve(m: re.Match) -> str:
            key = m.group(1)
            return str(run_dir) if key == "dir" else str(self(key[len("run:"):]).dir)

        env = dict(self.env, **dict(spec.env))
        trained = Trained(run_dir)
        for lg in spec.legs:
            overrides = [_PLACEHOLDER.sub(resolve, o) for o in (*spec.overrides, *lg.overrides)]
            trained.outputs.append(run_train([*overrides, f"run_dir={run_dir}"], env, nproc=lg.nproc or spec.nproc))
        return trained


# ----------------------------------------------------------------------------------- comparing runs

# Gradient norms are compared less tightly than losses. Adam turns the last-bit differences of another summation
# order into weight differences of ~1e-5 within 10 steps (elements with ~0 gradient, such as the key biases,
# move by lr x m / (sqrt(v) + eps) whatever their size), and on a step where the gradient spikes its norm
# amplifies them: on the sample data, GPT tiny's step 11 has grad norm 1.19563 from one process's weights and
# 1.19538 from tp2's, both computed by the same unsharded model in float64 (2e-4 apart), while the losses stay
# within 6e-7 over the 30 steps.
GRAD_NORM_REL = 1e-3


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if "loss" in r]


def assert_same_steps(ref: list[dict], got: list[dict], loss_rel: float, grad_norm_rel: float | None = None) -> float:
    """The same steps, each on the same batches (``batch_checksum``) with the loss (and gradient norm) within
    ``loss_rel`` (``grad_norm_rel``) relative of the reference's; returns the largest relative loss difference."""
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, len(ref) + 1))
    worst = 0.0
    for x, y in zip(ref, got):
        assert y["batch_checksum"] == x["batch_checksum"], (x["step"], x["batch_checksum"], y["batch_checksum"])
        assert y["loss"] == pytest.approx(x["loss"], rel=loss_rel), (x["step"], x["loss"], y["loss"])
        if grad_norm_rel is not None:
            assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=grad_norm_rel), (
                x["step"], x["grad_norm"], y["grad_norm"])
        worst = max(worst, abs(y["loss"] - x["loss"]) / abs(x["loss"]))
    return worst
