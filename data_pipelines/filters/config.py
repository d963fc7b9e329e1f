"""Filters from config: the schema of the group, parameter checking, and the per-source lookup.

Shape of the ``filters`` config group (``conf/filters/*.yaml``, schema :class:`FiltersConfig`)::

    web:  [{name: normalize}, {name: language, languages: [en], threshold: 0.65}, ...]
    wiki: [...]          # one list per source KIND (data_pipelines/sources/registry.py)
    by_source:           # optional, per source NAME; replaces the kind's list for that source
      enwiki: [{name: normalize}, {name: gopher_quality, min_doc_words: 20}]

Lookup for a source (:func:`filters_for_source`): ``by_source[<name>]`` if present, else ``<kind>``.
Each list item is ``{name: <block>, <parameter>: <value>, ...}``; the parameters are the keyword arguments of
the block's constructor, and an unknown block, unknown parameter or wrongly typed value is a
:class:`ConfigError` naming the config path, the block and the parameter, and listing what is accepted.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import field, make_dataclass
from typing import Any, Dict, List, Mapping, Sequence

from data_pipelines.blocks import Block
from data_pipelines.filters.registry import BLOCKS
from data_pipelines.sources.registry import SOURCE_KINDS
from pretrain.core.errors import ConfigError

# Schema of the ``filters`` group: one list of block specs per source kind (the kinds of the source registry,
# in its order), plus ``by_source`` (per-name overrides). Built from the registry, so a new source kind gets
# its list without an edit here.
FiltersConfig = make_dataclass(
    "FiltersConfig",
    [*((kind, List[Any], field(default_factory=list)) for kind in SOURCE_KINDS),
     ("by_source", Dict[str, List[Any]], field(default_factory=dict))],
)
FiltersConfig.__module__ = __name__
FiltersConfig.__doc__ = "Schema of the ``filters`` group: one list of block specs per source kind, plus per-name overrides."


def _plain(value: Any) -> Any:
    """OmegaConf containers to plain Python (resolving interpolations); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency; plain dicts work without it
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {_describe(typing.get_args(annotation)[0])}"
    if origin is dict:
        k, v = typing.get_args(annotation)
        return f"mapping of {_describe(k)} to {_describe(v)}"
    return getattr(annotation, "__name__", str(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a config value fits a constructor annotation (bool is not an int; an int is a float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(annotation)
        return isinstance(value, Mapping) and all(_matches(a, k) and _matches(b, v) for a, b in value.items())
    raise TypeError(f"unsupported parameter annotation {annotation!r}")


@functools.lru_cache(maxsize=None)
def parameters(cls: type) -> dict[str, tuple[Any, Any]]:
    """``{parameter: (annotation, default)}`` of a block's keyword-only constructor arguments."""
    hints = typing.get_type_hints(cls.__init__)
    return {
        p.name: (hints[p.name], p.default)
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def build_block(item: Any, where: str) -> Block:
    """One block from ``{name: ..., **params}``; ``where`` is its config path, e.g. ``filters.web[2]``."""
    item = _plain(item)
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a mapping like {{name: gopher_quality, ...}}, got {item!r}")
    params = dict(item)
    name = params.pop("name", None)
    if name not in BLOCKS:
        what = "missing 'name'" if name is None else f"unknown filter block {name!r}"
        raise ConfigError(f"{where}: {what}; accepted blocks: {', '.join(sorted(BLOCKS))}")
    cls = BLOCKS[name]
    accepted = parameters(cls)
    for key, value in params.items():
        if key not in accepted:
            raise ConfigError(
                f"{where} ({name}): unknown parameter {key!r}; accepted: {', '.join(sorted(accepted)) or 'none'}"
            )
        annotation = accepted[key][0]
        if not _matches(value, annotation):
            raise ConfigError(
                f"{where} ({name}): parameter {key!r} = {value!r} has the wrong type: expected {_describe(annotation)}"
            )
    try:
        return cls(**params)
    except ConfigError as e:
        raise ConfigError(f"{where} ({name}): {e}") from None


def build_blocks(spec: Sequence[Any] | None, where: str) -> list[Block]:
    """The blocks of one filter list, in order; ``where`` is the list's config path (e.g. ``filters.web``).

    Errors name the item as ``<where>[<index>]``.
    """
    spec = _plain(spec)
    if spec is None:
        return []
    if isinstance(spec, (str, bytes, Mapping)) or not isinstance(spec, Sequence):
        raise ConfigError(f"{where}: expected a list of filter blocks, got {spec!r}")
    return [build_block(item, f"{where}[{i}]") for i, item in enumerate(spec)]


def filter_spec_for_source(filters_cfg: Any, name: str, kind: str, prefix: str = "filters") -> tuple[list, str]:
    """``(spec, where)`` for a source: ``by_source[name]`` if configured, else the list of its ``kind``."""
    cfg = _plain(filters_cfg) or {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of source kinds to filter lists, got {cfg!r}")
    unknown = sorted(set(cfg) - set(SOURCE_KINDS) - {"by_source"})
    if unknown:
        raise ConfigError(f"{prefix}: unknown key(s) {unknown}; accepted: {', '.join(SOURCE_KINDS)}, by_source")
    by_source = cfg.get("by_source") or {}
    if name in by_source:
        return by_source[name], f"{prefix}.by_source.{name}"
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"source {name!r}: unknown kind {kind!r}; accepted: {', '.join(SOURCE_KINDS)}")
    return cfg.get(kind) or [], f"{prefix}.{kind}"


def filters_for_source(filters_cfg: Any, name: str, kind: str, prefix: str = "filters") -> list[Block]:
    """The filter blocks for source ``name`` of ``kind`` (see the module docstring for the lookup)."""
    spec, where = filter_spec_for_source(filters_cfg, name, kind, prefix)
    return build_blocks(spec, where)


def run_blocks(blocks: Sequence[Block], docs: typing.Iterable, stats_by_block: Sequence[Any]) -> typing.Iterator:
    """Chain ``blocks`` lazily over ``docs``, each with its own stats (one ``StageStats`` per block)."""
    if len(blocks) != len(stats_by_block):
        raise ValueError(f"{len(blocks)} blocks but {len(stats_by_block)} stats objects")
    for block, stats in zip(blocks, stats_by_block):
        docs = block(docs, stats)
    return iter(docs)
