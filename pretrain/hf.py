"""Hugging Face layouts of our models, family-agnostic: which ``transformers`` class a model fits, parameter
names both ways, configs, and import of a local directory. The family-specific part (classes, renames,
configs, tokenizer special tokens) is each family's adapter (``ModelFamily.hf``, e.g.
:mod:`pretrain.models.gpt.hf`); :data:`ARCHITECTURES` collects their classes:

=====================  =========================================================================
``GPT2LMHeadModel``    gpt, GPT-2 style (learned positions, LayerNorm, tanh GELU, biases, tied, MHA)
``LlamaForCausalLM``   gpt, LLaMA style (RoPE, RMSNorm, SwiGLU, no biases, GQA)
``MixtralForCausalLM`` gpt, LLaMA style with SwiGLU experts in every layer (top-2, renormalised, no dropping)
``MistralForCausalLM`` gpt, LLaMA style with a sliding window on every layer (``model.sliding_window``)
``BloomForCausalLM``   gpt, ALiBi, embedding LayerNorm, LayerNorm, tanh GELU, biases, tied, MHA (``gpt/bloom_*``)
``BertForMaskedLM``    bert (the SOP pooler/head has no place in it and is not exported)
``T5ForConditionalGeneration``  t5 (v1.0: relu + tied; v1.1: gated-gelu + untied)
=====================  =========================================================================

Each mapping is a rename (GPT-2 also concatenates q/k/v into ``c_attn`` and transposes for its ``Conv1D``;
Mixtral cuts our stacked experts into one ``w1``/``w3``/``w2`` per expert),
so export and import are exact: import -> export gives identical tensors. Nothing here needs
``transformers`` except building a config object (:func:`hf_config`), which export does lazily; import reads
``config.json`` and ``*.safetensors`` directly, so the trainer does not depend on ``transformers``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pretrain.core.errors import CheckpointError
from pretrain.models import FAMILIES, HFAdapter

log = logging.getLogger(__name__)

#: every class some family exports to -> that family's name, in the registry's order
ARCHITECTURES: dict[str, str] = {arch: name for name, f in FAMILIES.items() if f.hf is not None
                                 for arch in f.hf.architectures}


def adapter(arch: str) -> HFAdapter:
    """The adapter of the family that holds ``arch``; CheckpointError for a class no family has."""
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{arch} is not a supported class (supported: {', '.join(ARCHITECTURES)})")
    return FAMILIES[ARCHITECTURES[arch]].hf


# ----------------------------------------------------------------------------------------------- fit


def architecture_for(family: str, args: Any) -> str:
    """The Hugging Face class of a model of ``family`` with ``args``: the first of the family's classes it
    fits; CheckpointError when none fits."""
    f = FAMILIES.get(family)
    if f is None or f.hf is None:
        known = ", ".join(n for n, fam in FAMILIES.items() if fam.hf is not None)
        raise CheckpointError(f"model family {family!r} has no Hugging Face export; known: {known}")
    archs = f.hf.architectures
    for arch in archs:
        if not misfit(arch, family, args):
            return arch
    raise CheckpointError(f"this {family} model ({describe(args)}) fits neither " + " nor ".join(
        f"{arch} ({'; '.join(misfit(arch, family, args))})" for arch in archs))


def describe(args: Any) -> str:
    keys = ("position_embedding", "normalization", "activation", "bias", "tie_word_embeddings")
    d = asdict(args)
    return ", ".join(f"{k}={d[k]}" for k in keys if k in d)


def misfit(arch: str, family: str, args: Any) -> list[str]:
    """Why a ``family`` model with ``args`` cannot be exported as ``arch`` (empty = it can)."""
    if arch not in ARCHITECTURES:
        return [f"{arch} is not a supported class (supported: {', '.join(ARCHITECTURES)})"]
    if ARCHITECTURES[arch] != family:
        return [f"{arch} holds a {ARCHITECTURES[arch]} model, the checkpoint a {family} model"]
    return adapter(arch).misfit(arch, args)


# ----------------------------------------------------------------------------------------------- names


def to_hf(arch: str, args: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the ``arch`` state dict (tied copies left out: Hugging Face re-ties them on load)."""
    return adapter(arch).to_hf(arch, args, sd)


def from_hf(arch: str, args: Any, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``arch`` state dict -> ours (the inverse of :func:`to_hf`). Keys our model has and the Hugging Face
    class does not (BERT's SOP head) are left out; the caller keeps their fresh init."""
    def get(key: str) -> torch.Tensor:
        if key not in hf:
            raise CheckpointError(f"the {arch} weights have no tensor {key!r}")
        return hf[key]

    return adapter(arch).from_hf(arch, args, get)


# ----------------------------------------------------------------------------------------------- configs


def hf_config(arch: str, args: Any, special: dict[str, int]):
    """The ``transformers`` config object of ``arch`` for our ``args``; ``special`` = token text -> id."""
    cfg = adapter(arch).hf_config(arch, args, special)
    cfg.architectures = [arch]
    return cfg


def args_from_hf_config(arch: str, c: dict[str, Any], where: Path) -> dict[str, Any]:
    """The shape fields of our args that a Hugging Face ``config.json`` (as a dict) implies."""
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{where}: unsupported architecture {arch}")
    return adapter(arch).args_from_hf_config(arch, c, where)


# ----------------------------------------------------------------------------------------------- import


def read_hf_config(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(architecture, config dict) of a local Hugging Face model directory; CheckpointError when it is not one
    or holds an architecture we cannot import."""
    d = Path(path)
    cfg_file = d / "config.json"
    try:
        c = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"model.init_from={path}: not a Hugging Face model directory ({cfg_file}: {e})") from None
    archs = c.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"model.init_from={path}: architecture {arch or '(none named in config.json)'} (model_type "
            f"{c.get('model_type')!r}) cannot be imported; supported: {', '.join(ARCHITECTURES)}"
        )
    return arch, c


def check_compatible(path: str | Path, family: str, args: Any) -> str:
    """Refuse, naming both sides, a Hugging Face directory whose family or shape differs from the config.
    Cheap (reads ``config.json`` only), so the trainer calls it before building anything. Returns the arch."""
    arch, c = read_hf_config(path)
    if ARCHITECTURES[arch] != family:
        raise CheckpointError(
            f"model.init_from={path} holds a {arch} ({ARCHITECTURES[arch]} family), the config asks for "
            f"model.family={family}; choose a {ARCHITECTURES[arch]} model config"
        )
    ours = asdict(args)
    diffs = [f"model.{k}: config {ours[k]!r}, {arch} {v!r}"
             for k, v in args_from_hf_config(arch, c, Path(path)).items() if k in ours and ours[k] != v]
    if diffs:
        raise CheckpointError(
            f"model.init_from={path}: the {arch} there does not fit the model config ({'; '.join(diffs)})"
        )
    return arch


def load_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    d = Path(path)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{d}: no *.safetensors weights (only safetensors directories are imported)")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def load_into(model: torch.nn.Module, path: str | Path, family: str, args: Any) -> None:
    """Initialise ``model`` (ours, freshly built) from the Hugging Face directory ``path`` in place."""
    arch = check_compatible(path, family, args)
    ours = from_hf(arch, args, {k: v.float() for k, v in load_hf_weights(path).items()})
    try:
        missing, unexpected = model.load_state_dict(ours, strict=False)
    except RuntimeError as e:  # a tensor of another shape than config.json promised
        raise CheckpointError(f"model.init_from={path}: {str(e).splitlines()[-1].strip()}") from None
    fresh = adapter(arch).kept_fresh  # ours, with no place in the Hugging Face class: keep their fresh init
    kept = [k for k in missing if fresh and k.startswith(fresh)]
    if unexpected or set(missing) - set(kept):
        raise CheckpointError(f"{path}: weights do not fit the model (missing {sorted(set(missing) - set(kept))}, "
                              f"unexpected {sorted(unexpected)})")
    log.info("initialised the model from %s (%s)%s", path, arch,
             f"; kept the fresh init of {', '.join(sorted({k.split('.')[0] for k in kept}))}" if kept else "")
