"""Apply tensor parallelism to a built model of any family, leaving the model files untouched in meaning.

The model is built whole on every rank from the same seed, then :func:`parallelize` replaces its linears and
embeddings by sharded ones sliced from those very weights: the initial weights of a tp-N run are exactly the
unsharded model's, and the module and parameter names do not change (a gathered state dict loads into the
unsharded model; see :func:`full_state_dict`). The family's plan (``ModelFamily.tp_plan``, in the styles of
:mod:`pretrain.parallel.plan`), torchtitan style, says what each module becomes:

* ``Region``: enter the TP region once at this module's input (several column layers reading the same input,
  q/k/v or MLP up/gate, then cost one all-reduce of the input gradient, as Megatron's fused QKV does); an
  attention module's core draws its dropout masks per tensor rank (its heads differ);
* ``Column`` / ``Row``: column-/row-parallel linears; ``VocabEmbedding`` / ``VocabOutput``: the token
  embedding and the output layer split over the vocabulary (logits left split, with
  :func:`~pretrain.parallel.tensor.vocab_parallel_cross_entropy` as the model's ``loss_fn``; a tied output
  layer shares the embedding's shard); ``HeadSplit``: a table indexed by heads (T5's position biases);
* everything not in the plan (norms, position and token-type embeddings...) stays replicated.

Works with activation checkpointing (applied before, by the family's build: the recomputed forward repeats its
all-reduces), and with sequence parallelism where the family declares it (``ModelFamily.sequence_parallel``).
"""

from __future__ import annotations

import fnmatch
import functools
import logging

import torch
from torch import nn

from pretrain.core.errors import ConfigError
from pretrain.parallel.plan import Column, HeadSplit, Region, Row, SequenceParallel, VocabEmbedding, VocabOutput
from pretrain.parallel.tensor import (
    ColumnParallelLinear,
    Group,
    RowParallelLinear,
    VocabParallelEmbedding,
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    gather_tensor_parallel,
    is_tensor_parallel,
    rank_in,
    scatter_to_sequence_parallel_region,
    set_tensor_model_parallel_attributes,
    shard,
    vocab_parallel_cross_entropy,
    world_size,
)
from pretrain.parallel.tensor.mappings import _all_reduce
from pretrain.parallel.validate import moe_sequence_parallel_problem, tensor_parallel_problems

log = logging.getLogger(__name__)


def _family(model: nn.Module):
    from pretrain.models import family_of

    return family_of(model.args)


def plan_for(model: nn.Module) -> dict[str, object]:
    """The tensor-parallel plan of ``model``'s family."""
    return dict(_family(model).tp_plan)


# ------------------------------------------------------------------------------------------------ apply


def _region_hook(group: Group, indices: tuple[int, ...], sequence_parallel: bool = False):
    enter = gather_from_sequence_parallel_region if sequence_parallel else copy_to_tensor_model_parallel_region

    def hook(module: nn.Module, args: tuple) -> tuple:
        out, entered = list(args), {}
        for i in indices:
            if i < len(out) and isinstance(out[i], torch.Tensor):
                key = id(args[i])
                if key not in entered:
                    entered[key] = enter(args[i], group)
                out[i] = entered[key]
        return tuple(out)

    return hook


def _rank_forked(fn, group: Group, active):
    """``fn`` drawing its dropout masks from a stream of its own on every tensor rank, where the ranks hold
    different data (heads split in an attention core; sequence chunks under sequence parallelism), while the
    dropout stream of replicated activations stays shared by the group. ``active(args)``: whether it draws.

    One number is drawn from the (group-shared) global generator and ``fn`` runs in a forked RNG seeded by it
    and the tensor rank: the masks are a function of the global stream, so activation checkpointing replays
    them exactly, whether its region encloses this call (full: it restores the global RNG before recomputing)
    or sits inside it (selective: it restores the forked RNG), and a resumed run continues them.
    """
    rank = rank_in(group)

    @functools.wraps(fn)
    def run(*args):
        if not active(args):
            return fn(*args)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        devices = [torch.cuda.current_device()] if args[0].is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + 1_000_003 * rank)
            return fn(*args)

    return run


def _sequence_parallel(model: nn.Module, group: Group, plan: SequenceParallel) -> int:
    """Sequence parallelism around the TP regions: the activations are split along the sequence at the input of
    ``plan.scatter_at`` (GPT: the embedding dropout), norms, dropout and residual adds then run on this rank's
    chunk, and every replicated parameter under ``plan.params`` (GPT: the layers and the final norm) sees only
    that chunk, so its gradient is summed over the tensor ranks by a hook (Megatron's ``sequence_parallel``
    parameters). Returns how many it hooked."""
    model.get_submodule(plan.scatter_at).register_forward_pre_hook(
        lambda module, args: (scatter_to_sequence_parallel_region(args[0], group), *args[1:]))
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and name.startswith(plan.dropouts):
            module.forward = _rank_forked(module.forward, group, lambda args, m=module: m.training and m.p > 0)
    hooked = 0
    for name, p in model.named_parameters():
        if (name.startswith(plan.params) and not is_tensor_parallel(p)) and p.requires_grad:
            p.sequence_parallel = True
            p.register_hook(lambda g: _all_reduce(g, group))
            hooked += 1
    return hooked


def _sp_families() -> str:
    from pretrain.models import FAMILIES

    return ", ".join(f.name.upper() for f in FAMILIES.values() if f.sequence_parallel is not None)


def _pattern_of(name: str, plan: dict[str, object]) -> str | None:
    for pattern in plan:
        if fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _tied_groups(model: nn.Module) -> list[list[tuple[str, str]]]:
    """(module name, parameter attribute) sets that share one Parameter object."""
    owners: dict[int, list[tuple[str, str]]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), [])
            if (mname, pname) not in owners[id(p)]:
                owners[id(p)].append((mname, pname))
    return [o for o in owners.values() if len(o) > 1]


def parallelize(model: nn.Module, group: Group, sequence_parallel: bool = False) -> nn.Module:
    """Shard ``model`` (of any family, freshly built or loaded, on every rank the same) over the tensor-parallel
    ``group`` in place, and return it. A group of one rank leaves the model as it is.

    After it, ``model(**batch)`` returns the same loss as before on every rank of the group, each rank holding
    1/tp of the attention, MLP and vocabulary weights; without labels the models return logits of this rank's
    vocabulary slice (``[..., vocab/tp]``, ids ``[rank*vocab/tp, (rank+1)*vocab/tp)``). ``sequence_parallel``
    (families that declare it) splits the activations outside the TP regions along the sequence (see
    :func:`_sequence_parallel`).
    """
    tp = world_size(group)
    if tp == 1:
        return model
    family = _family(model)
    plan = family.tp_plan
    sp = sequence_parallel
    facts = family.shape_facts(model.args)
    problems = tensor_parallel_problems(tp=tp, heads=facts.heads, kv_heads=facts.kv_heads, ffn=facts.ffn,
                                        vocab=model.args.vocab_size)
    if not plan:  # the vocab-parallel loss below would read whole-vocabulary logits: a wrong loss, not an error
        problems.append(f"model family {family.name!r} declares no tensor-parallel plan")
    if sp and family.sequence_parallel is None:
        problems.append(f"sequence parallelism is implemented for {_sp_families()} only, not {type(model).__name__}")
    if sp and getattr(model.args, "is_moe", False):
        problems.append(moe_sequence_parallel_problem(tp))
    if sp and model.args.seq_length % tp:
        problems.append(f"model.seq_length={model.args.seq_length} is not divisible by the tensor-parallel size {tp}")
    if problems:
        raise ConfigError(f"cannot split {type(model).__name__} over {tp} tensor-parallel ranks: " + "; ".join(problems))
    if any(is_tensor_parallel(p) for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} is tensor-parallel already; parallelize() takes the unsharded model")
    ties = _tied_groups(model)
    targets = [(name, module, _pattern_of(name, plan)) for name, module in model.named_modules()]
    # a module marked tensor_parallel_replicated (the MoE block: whole experts on every tensor rank) and what is
    # under it stay replicated, though its name matches the dense MLP's entries
    kept = tuple(name for name, module in model.named_modules() if getattr(module, "tensor_parallel_replicated", False))
    targets = [(name, module, pattern) for name, module, pattern in targets if pattern is not None
               and not any(name == k or name.startswith(k + ".") for k in kept)]
    # the vocabulary pieces must be found, or the vocab-parallel loss would read whole-vocabulary logits
    unmatched = [p for p, style in plan.items() if isinstance(style, (VocabEmbedding, VocabOutput, Row))
                 and not any(pattern == p for _, _, pattern in targets)
                 and not (kept and isinstance(style, Row) and ".mlp." in p)]
    if unmatched:
        raise TypeError(f"the tensor-parallel plan of {type(model).__name__} found no module for {unmatched}")
    for name, module, pattern in targets:  # check everything before changing anything
        style = plan[pattern]
        expected = nn.Module if isinstance(style, Region) else (
            nn.Embedding if isinstance(style, (VocabEmbedding, HeadSplit)) else nn.Linear)
        if not isinstance(module, expected):
            raise TypeError(f"plan entry for {name} expects {expected.__name__}, found {type(module).__name__}")
    for name, module, pattern in targets:
        style = plan[pattern]
        if isinstance(style, Region):
            module.register_forward_pre_hook(_region_hook(group, style.args, sp))
            if hasattr(module, "core"):  # an attention module: its heads are split, so are its dropout masks
                module.core = _rank_forked(module.core, group, lambda args: bool(args[-1]))  # args[-1]: dropout_p
            continue
        if isinstance(style, Column):
            new = ColumnParallelLinear.from_dense(module, group, copy_input=style.copy_input, sequence_parallel=sp)
        elif isinstance(style, Row):
            new = RowParallelLinear.from_dense(module, group, sequence_parallel=sp)
        elif isinstance(style, VocabOutput):
            new = ColumnParallelLinear.from_dense(module, group, copy_input=True, gather_output=False,
                                                  sequence_parallel=sp)
        elif isinstance(style, VocabEmbedding):
            new = VocabParallelEmbedding.from_dense(module, group)
        elif isinstance(style, HeadSplit):
            weight = nn.Parameter(shard(module.weight, style.dim, group))
            set_tensor_model_parallel_attributes(weight, style.dim)
            module.weight = weight
            if isinstance(module, nn.Embedding):
                module.embedding_dim = weight.shape[1]
            continue
        else:  # a plan entry of a kind this function does not know is a programming error
            raise TypeError(f"unknown plan style {style!r} for {name}")
        _set_submodule(model, name, new)
    for tie in ties:  # re-tie shared weights (tied embeddings) to the first owner's shard
        (m0, p0), *rest = tie
        shared = getattr(model.get_submodule(m0), p0)
        for mname, pname in rest:
            mod = model.get_submodule(mname)
            if getattr(mod, pname).shape != shared.shape:
                raise ValueError(f"tied parameters {m0}.{p0} and {mname}.{pname} were sharded differently")
            setattr(mod, pname, shared)
    model.loss_fn = functools.partial(vocab_parallel_cross_entropy, group=group)
    model.sequence_parallel = sp
    if sp:
        log.info("sequence parallel: activations outside the tensor-parallel regions split over %d ranks; "
                 "%d replicated parameters all-reduce their gradients", tp,
                 _sequence_parallel(model, group, family.sequence_parallel))
    log.info("tensor parallel: %s split over %d ranks (%d modules sharded); rank %d holds %d of its parameters",
             type(model).__name__, tp, len(targets), rank_in(group), sum(p.numel() for p in model.parameters()))
    return model


# ------------------------------------------------------------------------------------------------ state dicts


def full_state_dict(model: nn.Module, group: Group) -> dict[str, torch.Tensor]:
    """The unsharded model's state dict (same keys) from every rank's shards: collective over ``group``, every
    rank gets the full tensors. For checkpoint consolidation, export and tests."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if is_tensor_parallel(t):
            out[name] = gather_tensor_parallel(t, t.partition_dim, group)
        else:
            out[name] = t.detach().clone()
    return out


@torch.no_grad()
def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor], group: Group) -> None:
    """Load an unsharded state dict into a parallelized model: each rank copies its slice of every sharded
    tensor (the resharding step of a tp-changing resume or of ``model.init_from``)."""
    own = model.state_dict(keep_vars=True)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"state dict does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, t in own.items():
        src = state[name]
        if is_tensor_parallel(t):
            src = shard(src, t.partition_dim, group)
        if src.shape != t.shape:
            raise ValueError(f"{name}: shape {tuple(src.shape)} does not match the model's {tuple(t.shape)}")
        t.copy_(src)
