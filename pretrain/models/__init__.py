"""The model zoo: one :class:`~pretrain.models.family.ModelFamily` per architecture, chosen by ``model.family``.

Each family is a folder (``pretrain/models/<family>/``: config schema, model, objective, tensor-parallel plan,
pipeline stages, Hugging Face adapter; see :mod:`pretrain.models.family` for the interface) and one line in
:data:`FAMILY_PACKAGES`. Everything else (the ``model`` config group's schema, the layout checks, parallelism,
export and import) asks the family, so adding one touches nothing outside its folder but that line.

Importing this package imports no torch: ``pretrain.config`` reads the families' schemas through it.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

from pretrain.core.errors import ConfigError
from pretrain.models.family import (  # noqa: F401  (the family interface, re-exported)
    COMMON_NON_SHAPE_FIELDS,
    HFAdapter,
    ModelFamily,
    RecomputePlan,
    ShapeFacts,
    TokenizerInfo,
    Transform,
    check_heads,
    enum_value,
    padded_vocab_size,
    resolve_vocab,
)
from pretrain.models.schema import union_schema

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import nn

# The registry: one line per family, the package whose FAMILY is its ModelFamily.
FAMILY_PACKAGES = (
    "pretrain.models.gpt",
    "pretrain.models.bert",
    "pretrain.models.t5",
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (importlib.import_module(p).FAMILY for p in FAMILY_PACKAGES)}

#: the ``model`` group's schema: every family's keys (pretrain.config types ``TrainConfig.model`` with it)
ModelConfig = union_schema({name: f.config_schema for name, f in FAMILIES.items()})

#: args fields that do not change the shape of the parameters, in any family (a checkpoint of any value of these
#: resumes into any other)
NON_SHAPE_FIELDS = frozenset().union(*(f.non_shape_fields for f in FAMILIES.values()))


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ConfigError(f"model.family={name!r} is not known; expected one of {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def owner_of(key: str) -> str:
    """The families whose schema has ``key`` ("gpt", "bert or t5")."""
    return " or ".join(n for n, f in FAMILIES.items() if key in f.config_schema.__dataclass_fields__)


def family_of(args: Any) -> ModelFamily:
    for family in FAMILIES.values():
        if type(args) is family.args_type:
            return family
    raise TypeError(f"no model family takes {type(args).__name__}")


def shape_of(args: Any) -> dict[str, Any]:
    """The fields of ``args`` that fix the parameter shapes. A field marked ``dense_default`` (the MoE fields)
    is left out while at its default, so a dense model's shape reads as it did before the field existed."""
    dense = {f.name: f.default for f in fields(args) if f.metadata.get("dense_default")}
    return {k: v for k, v in asdict(args).items()
            if k not in NON_SHAPE_FIELDS and not (k in dense and v == dense[k])}


def resolve_args(model_cfg: DictConfig, tokenizer_vocab_size: int | None) -> Any:
    """The args of ``model_cfg``'s family from a vocabulary size (kept for callers that have no tokenizer file:
    the benchmark and config tests)."""
    family = get_family(model_cfg.family)
    return family.resolve_args(model_cfg, TokenizerInfo(None, tokenizer_vocab_size, 0))


def build_model(args: Any) -> nn.Module:
    """The model of ``args``' family, activation checkpointing applied (``ModelFamily.build``)."""
    return family_of(args).build(args)
