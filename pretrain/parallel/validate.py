"""Check a parallel layout against the model and batch config before any process group or model exists.

DeepSpeed and the sharded layers would fail on a bad layout too, but late (after minutes of start-up on a
cluster), on one rank, deep inside (an assert in the pipeline engine, a shape error in a matmul) or not at all
(a head split in half still multiplies). Here every problem is found at once and each message names the key,
its value and what to change. What the checks need of the model's shape, and whether the family has pipeline
stages or sequence parallelism, the model family says (``ModelFamily.shape_facts`` and friends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

from pretrain.core.errors import ConfigError
from pretrain.models import FAMILIES, get_family  # the family registry (imports no torch)


@dataclass(frozen=True)
class ParallelLayout:
    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    global_batch_size: int
    cp: int = 1  # context-parallel ranks per sequence (they read the same samples: not in the batch arithmetic)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp * self.cp

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches per step per data-parallel rank (with pp > 1: the micro-batches in the pipeline)."""
        return self.global_batch_size // (self.micro_batch_size * self.dp)


def tensor_parallel_problems(*, tp: int, heads: int, kv_heads: int, ffn: int, vocab: int | None,
                             vocab_multiple: int | None = None) -> list[str]:
    """What keeps a model of this shape from splitting over ``tp`` ranks (empty: it splits). ``vocab`` None:
    the vocabulary comes from the tokenizer, padded to ``vocab_multiple`` (``model.make_vocab_size_divisible_by``)."""
    out = []
    if tp == 1:
        return out
    if heads % tp:
        out.append(f"model.num_attention_heads={heads} is not divisible by parallel.tensor_model_parallel_size={tp} "
                   f"(each rank holds whole heads); choose a tensor-parallel size that divides {heads}")
    if kv_heads != heads and kv_heads % tp:
        out.append(f"model.num_key_value_heads={kv_heads} is not divisible by parallel.tensor_model_parallel_size="
                   f"{tp}; use a tensor-parallel size that divides {kv_heads} or more key/value heads")
    if ffn % tp:
        out.append(f"the MLP width (model.ffn_hidden_size) {ffn} is not divisible by "
                   f"parallel.tensor_model_parallel_size={tp}; set model.ffn_hidden_size to a multiple of {tp}")
    if vocab is not None and vocab % tp:
        out.append(f"model.vocab_size={vocab} is not divisible by parallel.tensor_model_parallel_size={tp}; pad it "
                   f"to {math.ceil(vocab / tp) * tp} (or set model.vocab_size=null to pad the tokenizer's vocabulary)")
    if vocab is None and vocab_multiple is not None and vocab_multiple % tp:
        out.append(f"model.make_vocab_size_divisible_by={vocab_multiple} is not a multiple of "
                   f"parallel.tensor_model_parallel_size={tp}, so the padded vocabulary may not split evenly; set it "
                   f"to {math.lcm(vocab_multiple, tp)}")
    return out


def moe_sequence_parallel_problem(tp: int) -> str:
    return (f"parallel.sequence_parallel=true with model.num_experts > 0: the MoE layers hold whole experts on "
            f"every one of the {tp} tensor ranks and route the full sequence, which sequence parallelism splits; "
            "set parallel.sequence_parallel=false (tensor parallelism of the attention works with MoE)")


def moe_problems(m, *, tp: int, pp: int, sequence_parallel: bool, dp: int = 1, ep: int = 1,
                 zero_stage: int = 0, offload: bool = False) -> list[str]:
    """What keeps a mixture-of-experts model (``model.num_experts`` > 0) from this layout (empty: nothing)."""
    experts = getattr(m, "num_experts", 0) or 0
    out = []
    if ep < 1:
        return [f"parallel.expert_model_parallel_size={ep} must be >= 1"]
    if ep > 1 and not experts:
        return [f"parallel.expert_model_parallel_size={ep} needs a mixture-of-experts model (model.num_experts > 0); "
                "set it to 1 for a dense model"]
    if not experts:
        return []
    if experts % ep:
        out.append(f"model.num_experts={experts} is not divisible by parallel.expert_model_parallel_size={ep} "
                   f"(each expert-parallel rank runs as many experts); choose a size that divides {experts}")
    if dp % ep:
        out.append(f"parallel.expert_model_parallel_size={ep} does not divide the data-parallel size {dp} (the "
                   f"experts spread over data-parallel ranks); choose a size that divides {dp}")
    if ep > 1 and zero_stage == 3:
        out.append(f"parallel.expert_model_parallel_size={ep} with parallel.zero_stage=3 is not supported (ZeRO-3 "
                   "gathers the expert weights per module while the all-to-all runs; untested); use "
                   "parallel.zero_stage=1 or 2")
    if ep > 1 and offload:
        out.append(f"parallel.expert_model_parallel_size={ep} with parallel.offload_optimizer=true is not supported "
                   "(ZeRO-Offload's CPU optimizer over the expert-data-parallel partitions is untested); set "
                   "parallel.offload_optimizer=false")
    if pp > 1:
        out.append(f"parallel.pipeline_model_parallel_size={pp} with model.num_experts={m.num_experts}: the MoE "
                   "layers' auxiliary losses are summed by the whole model's forward, which DeepSpeed's pipeline "
                   "stages do not run; use tensor and data parallelism for MoE models")
    if sequence_parallel and tp > 1:
        out.append(moe_sequence_parallel_problem(tp))
    return out


CONTEXT_PARALLEL_FAMILIES = ("gpt",)


def context_parallel_problems(family: str, *, cp: int, tp: int, pp: int, heads: int, kv_heads: int, seq_length: int,
                              sequence_parallel: bool = False, experts: int = 0, zero_stage: int = 0) -> list[str]:
    """What keeps this layout from splitting the sequence over ``cp`` context-parallel ranks with DeepSpeed-Ulysses
    (:mod:`pretrain.parallel.context`; empty: it splits). Each rank runs attention over the whole sequence for
    heads/(tp x cp) of the heads, so the heads must split; its chunk of seq_length/cp tokens runs everything else."""
    key = "parallel.context_parallel_size"
    if cp < 1:
        return [f"{key}={cp} must be >= 1"]
    if cp == 1:
        return []
    if family not in CONTEXT_PARALLEL_FAMILIES:
        return [f"{key}={cp} is implemented for model.family={'|'.join(CONTEXT_PARALLEL_FAMILIES)} only, not {family} "
                "(its attention is not causal over one packed sequence); train it with data and tensor parallelism, "
                "or set model.seq_length smaller and use a GPT for long context"]
    out = []
    split, by = tp * cp, (f"parallel.tensor_model_parallel_size x {key} = {tp} x {cp} = {tp * cp}" if tp > 1
                          else f"{key}={cp}")
    if heads % split:
        out.append(f"model.num_attention_heads={heads} is not divisible by {by} (each context rank attends over the "
                   f"whole sequence for 1/{split} of the heads); choose a context-parallel size that divides "
                   f"{heads // tp if heads % tp == 0 else heads}")
    if kv_heads != heads and kv_heads % split:
        out.append(f"model.num_key_value_heads={kv_heads} is not divisible by {by} (the all-to-all splits the key/value "
                   f"heads too); use a context-parallel size that divides {kv_heads // tp if kv_heads % tp == 0 else kv_heads}"
                   " or more key/value heads")
    if seq_length % cp:
        out.append(f"model.seq_length={seq_length} is not divisible by {key}={cp} (each rank takes an equal chunk); "
                   f"use a sequence length that is a multiple of {cp}")
    if pp > 1:
        out.append(f"{key}={cp} with parallel.pipeline_model_parallel_size={pp} is not supported (DeepSpeed's pipeline "
                   "engine sends whole-sequence activations between stages); use context x tensor x data parallelism")
    if sequence_parallel and tp > 1:
        out.append(f"{key}={cp} with parallel.sequence_parallel=true is not supported (untested: both split the "
                   "sequence); set parallel.sequence_parallel=false")
    if zero_stage == 3:
        out.append(f"{key}={cp} with parallel.zero_stage=3 is not supported (DeepSpeed 0.19's ZeRO-3 does not sum the "
                   "gradients over the context ranks as its ZeRO-1/2 do: measured, the losses leave cp1's from step 2 "
                   "on); use parallel.zero_stage=1 or 2, which partition over data x context ranks")
    if experts:
        out.append(f"{key}={cp} with model.num_experts={experts} is not supported (the routers' auxiliary losses would "
                   "count every chunk's tokens as a whole sequence); use data, tensor and expert parallelism for MoE")
    return out


def validate_parallel(cfg: DictConfig, world_size: int) -> ParallelLayout:
    """The layout ``tp x pp x dp`` of ``world_size`` ranks for ``cfg`` (``parallel``, ``trainer``, ``model``),
    or a :class:`ConfigError` listing every problem with what to change."""
    p, t, m = cfg.parallel, cfg.trainer, cfg.model
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    cp = int(getattr(p, "context_parallel_size", 1))
    problems: list[str] = []
    if tp < 1 or pp < 1:
        raise ConfigError(f"parallel.tensor_model_parallel_size={tp} and parallel.pipeline_model_parallel_size={pp} "
                          "must both be >= 1")
    if cp < 1:
        raise ConfigError(f"parallel.context_parallel_size={cp} must be >= 1")
    if cp > 1 and world_size % (tp * pp * cp):
        problems.append(
            f"the world size {world_size} is not divisible by parallel.tensor_model_parallel_size x "
            f"parallel.pipeline_model_parallel_size x parallel.context_parallel_size = {tp} x {pp} x {cp} = "
            f"{tp * pp * cp}; launch a multiple of {tp * pp * cp} processes or change the sizes"
        )
    elif world_size % (tp * pp):
        problems.append(
            f"the world size {world_size} is not divisible by parallel.tensor_model_parallel_size x "
            f"parallel.pipeline_model_parallel_size = {tp} x {pp} = {tp * pp}; launch a multiple of {tp * pp} "
            f"processes or change the sizes"
        )
    dp = max(world_size // (tp * pp * cp), 1)

    family = get_family(str(getattr(m, "family", "gpt")))
    shape = family.shape_facts(m)
    problems += tensor_parallel_problems(tp=tp, heads=shape.heads, kv_heads=shape.kv_heads, ffn=shape.ffn,
                                         vocab=m.vocab_size, vocab_multiple=m.make_vocab_size_divisible_by)
    if tp > 1 and not family.tp_plan:
        problems.append(f"parallel.tensor_model_parallel_size={tp} is not available for model.family={family.name} "
                        "(it declares no tensor-parallel plan); use data parallelism (ZeRO) for it")
    if pp > 1:
        for key, n in shape.layers.items():
            if n % pp:
                problems.append(f"{key}={n} is not divisible by parallel.pipeline_model_parallel_size={pp} (each "
                                f"stage holds the same number of layers); choose a pipeline size that divides {n}")
        if family.pipeline_unsupported:
            problems.append(f"parallel.pipeline_model_parallel_size={pp} is not available for model.family="
                            f"{family.name} ({family.pipeline_unsupported}); use "
                            f"{'tensor and ' if family.tp_plan else ''}data parallelism for it")
        part = str(p.pipeline_partition)
        if part not in ("parameters", "uniform") and not (part.startswith("type:") and len(part) > 5):
            problems.append(f"parallel.pipeline_partition={part!r}; expected parameters, uniform or "
                            "type:<layer class regex> (default type:TransformerLayer)")
        if p.zero_stage > 1:
            problems.append(f"parallel.pipeline_model_parallel_size={pp} needs parallel.zero_stage <= 1 (DeepSpeed's "
                            f"pipeline engine cannot shard gradients or parameters), got {p.zero_stage}; set "
                            "parallel.zero_stage=1")
    if p.sequence_parallel and tp > 1:
        if family.sequence_parallel is None:
            able = "|".join(f.name for f in FAMILIES.values() if f.sequence_parallel is not None)
            problems.append(f"parallel.sequence_parallel=true is implemented for model.family={able} only, not "
                            f"{family.name}; set parallel.sequence_parallel=false")
        elif m.seq_length % tp:
            problems.append(f"parallel.sequence_parallel=true splits the sequence over the tensor ranks: "
                            f"model.seq_length={m.seq_length} is not divisible by parallel.tensor_model_parallel_size={tp}")

    problems += moe_problems(m, tp=tp, pp=pp, sequence_parallel=bool(p.sequence_parallel), dp=dp,
                             ep=int(getattr(p, "expert_model_parallel_size", 1)), zero_stage=p.zero_stage,
                             offload=bool(getattr(p, "offload_optimizer", False)))
    problems += context_parallel_problems(family.name, cp=cp, tp=tp, pp=pp, heads=shape.heads, kv_heads=shape.kv_heads,
                                          seq_length=m.seq_length, sequence_parallel=bool(p.sequence_parallel),
                                          experts=int(getattr(m, "num_experts", 0) or 0), zero_stage=p.zero_stage)

    micro = t.micro_batch_size
    if micro < 1:
        problems.append(f"trainer.micro_batch_size={micro} must be >= 1")
        micro = 1
    gbs = t.global_batch_size if t.global_batch_size is not None else micro * dp
    if gbs % (micro * dp):
        problems.append(
            f"trainer.global_batch_size={gbs} is not divisible by trainer.micro_batch_size x data-parallel size = "
            f"{micro} x {dp} = {micro * dp} (data-parallel size = world {world_size} / (tp {tp} x pp {pp}"
            f"{f' x cp {cp}' if cp > 1 else ''})); choose a global batch that is a multiple of {micro * dp}"
        )
    if problems:
        raise ConfigError("invalid parallel layout: " + "; ".join(problems))
    return ParallelLayout(tp=tp, pp=pp, dp=dp, micro_batch_size=micro, global_batch_size=gbs, cp=cp)
