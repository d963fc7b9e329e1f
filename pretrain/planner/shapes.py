"""What the planner needs of a model: its resolved shape, and every parameter with the share one rank holds.

The model is built on torch's ``meta`` device (shapes, no storage: a 7B model in milliseconds) by the family's
own ``make_model``, so the parameter list is exactly what the trainer builds, for any family. The
tensor-parallel share of each parameter follows the family's plan (``ModelFamily.tp_plan``, the styles of
:mod:`pretrain.parallel.plan`) as :func:`pretrain.parallel.parallelize.parallelize` applies it; the pipeline stage
of each parameter follows the stage cut of :mod:`pretrain.parallel.pipeline` (embedding and input on the first
stage, ``num_layers / pp`` layers per stage, final norm and output layer on the last, a tied embedding on both).
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pretrain.core.errors import ConfigError
from pretrain.models import TokenizerInfo, get_family
from pretrain.parallel.plan import Column, HeadSplit, Row, VocabEmbedding, VocabOutput

# The stacked expert weights of a mixture-of-experts layer (``layers.N.mlp.experts.gate_up_proj`` ...); the router
# (``mlp.gate``) is a dense weight.
EXPERT_PARAM = re.compile(r"(^|\.)mlp\.experts\.")
# Whether expert parallelism splits the expert weights over the ep ranks: it does (the trainer's
# ``pretrain.parallel.expert.expert_parallelize``): a rank holds 1/ep of them, and ZeRO partitions them, their
# gradients, master copy and Adam moments over the dp/ep ranks holding the same experts.
EXPERTS_SHARDED = True


class UnknownVocabulary(ConfigError):
    """The vocabulary size comes from a tokenizer the planner cannot read here."""


@dataclass(frozen=True)
class Param:
    name: str
    numel: int
    dim: int  # number of dimensions (the optimizer's weight-decay groups split on dim >= 2)
    split: int  # the dimension tensor parallelism splits, or -1 (replicated)
    stages: tuple[str, ...]  # "first", "last", or "layer:<i>"
    expert: bool = False  # a mixture of experts' stacked expert weights
    ep_split: bool = False  # ... split over the expert-parallel ranks (EXPERTS_SHARDED), 1/ep of them per rank

    def per_rank(self, tp: int, ep: int = 1) -> int:
        n = self.numel // tp if self.split >= 0 else self.numel
        return n // ep if self.ep_split else n


@dataclass
class ModelFacts:
    family: Any
    args: Any
    params: list[Param]
    layer_keys: tuple[str, ...]  # ModuleList paths of the transformer layers
    num_layers: int
    vocab_note: str = ""
    flops: dict[str, float] = field(default_factory=dict)
    # activation weight of a layer relative to a decoder-only block: T5's decoder layers add cross-attention
    layer_weight: float = 1.0
    _stage_cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_parameters(self) -> int:
        seen: set[str] = set()
        return sum(p.numel for p in self.params if not (p.name in seen or seen.add(p.name)))

    @property
    def num_experts(self) -> int:
        return int(getattr(self.args, "num_experts", 0) or 0)

    def stage_params(self, tp: int, pp: int, stage: int, ep: int = 1) -> list[tuple[Param, int]]:
        """(parameter, elements this rank holds) of pipeline stage ``stage`` at tensor-parallel size ``tp`` and
        expert-parallel size ``ep``."""
        key = (tp, pp, stage, ep)
        if key not in self._stage_cache:
            self._stage_cache[key] = self._stage_params(tp, pp, stage, ep)
        return self._stage_cache[key]

    def _stage_params(self, tp: int, pp: int, stage: int, ep: int = 1) -> list[tuple[Param, int]]:
        per_stage = self.num_layers // pp
        out = []
        for p in self.params:
            mine = False
            for where in p.stages:
                if where == "first":
                    mine |= stage == 0
                elif where == "last":
                    mine |= stage == pp - 1
                else:
                    mine |= int(where.split(":")[1]) // per_stage == stage
            if mine:
                out.append((p, p.per_rank(tp, ep)))
        return out


@contextlib.contextmanager
def _no_init():
    """``torch.nn.init``'s initializers as no-ops while a model is built on the meta device: they would fill
    nothing, and their meta kernels cost seconds for a large model."""
    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def resolve_vocab(cfg: DictConfig, vocab_size: int | None = None) -> tuple[int | None, str]:
    """The tokenizer's vocabulary size (before the model pads it), as the trainer reads it, and where it came from;
    (None, "") when ``model.vocab_size`` is set (the family uses that)."""
    if cfg.model.vocab_size is not None:
        return None, ""
    if vocab_size is not None:
        return vocab_size, f"vocabulary {vocab_size} (--vocab-size)"
    from pretrain.core.manifest import read_manifest
    from pretrain.data.dataset import tokenizer_vocab_size

    if cfg.data.path is None:
        from pretrain.data.sample import ensure_sample_data

        folder = ensure_sample_data(kind=cfg.data.sample_tokenizer)
    else:
        folder = Path(str(cfg.data.path)).expanduser()
        if not (folder / "manifest.json").is_file():
            raise UnknownVocabulary(
                f"model.vocab_size=null takes the vocabulary from the tokenizer of data.path={cfg.data.path}, which "
                f"has no manifest.json here; set model.vocab_size=<padded vocabulary> or pass --vocab-size N")
    manifest = read_manifest(folder)
    size = tokenizer_vocab_size(manifest.tokenizer) if manifest.tokenizer else manifest.vocab_size
    return size, f"vocabulary {size} from {manifest.tokenizer or folder}"


def model_facts(cfg: DictConfig, vocab_size: int | None = None) -> ModelFacts:
    """The resolved model of ``cfg`` and its parameters (built on the meta device)."""
    import torch

    family = get_family(str(cfg.model.family))
    tok_vocab, note = resolve_vocab(cfg, vocab_size)
    args = family.resolve_args(cfg.model, TokenizerInfo(None, tok_vocab, 0))
    with torch.device("meta"), _no_init():
        model = family.make_model(args)
    layer_keys = tuple(family.recompute.layers)
    plan = dict(family.tp_plan)
    split_of: dict[str, int] = {}
    for mname, module in model.named_modules():
        style = next((plan[pat] for pat in plan if fnmatch.fnmatchcase(mname, pat)), None)
        if style is None:
            continue
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(style, (Column, VocabOutput)):
                split_of[full] = 0
            elif isinstance(style, Row):
                split_of[full] = 1 if pname == "weight" else -1
            elif isinstance(style, VocabEmbedding):
                split_of[full] = 0
            elif isinstance(style, HeadSplit):
                split_of[full] = style.dim
    layer_re = re.compile(r"^(" + "|".join(re.escape(k) for k in layer_keys) + r")\.(\d+)\.")
    offsets, total = {}, 0
    for key in layer_keys:
        offsets[key] = total
        total += len(model.get_submodule(key))
    # every name of every parameter (a tied weight has two), in module order: what comes before the first layer
    # is the pipeline's first stage, what comes after the last is its last stage
    names: dict[int, list[str]] = {}
    tensors: dict[int, Any] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        tensors[id(p)] = p
    seen_layer = False
    stage_of: dict[str, str] = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        m = layer_re.match(name)
        if m:
            seen_layer = True
            stage_of[name] = f"layer:{offsets[m.group(1)] + int(m.group(2))}"
        else:
            stage_of[name] = "last" if seen_layer else "first"
    params = []
    for pid, nlist in names.items():
        p = tensors[pid]
        split = next((split_of[n] for n in nlist if n in split_of), -1)
        params.append(Param(nlist[0], p.numel(), p.dim(), split, tuple(dict.fromkeys(stage_of[n] for n in nlist)),
                            expert=(expert := any(EXPERT_PARAM.search(n) for n in nlist)),
                            ep_split=expert and EXPERTS_SHARDED))
    weight = 1.0
    if len(layer_keys) == 2:  # an encoder-decoder: the second stack's layers have a cross-attention block too
        enc, dec = (len(model.get_submodule(k)) for k in layer_keys)
        weight = (enc + 1.5 * dec) / max(enc + dec, 1)
    return ModelFacts(family, args, params, layer_keys, total, note, family.flops_per_token(args), weight)
