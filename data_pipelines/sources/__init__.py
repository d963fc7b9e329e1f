"""Source readers: raw corpora on disk -> streams of :class:`~data_pipelines.document.Document`.

A source is a named config entry ``{kind, paths, options}`` (:class:`SourceConfig`). ``kind`` picks a
reader from :data:`READERS` (``registry.py``: one reader file per kind plus a registry entry), ``paths`` are files, globs or directories (:func:`expand_paths`), and
``options`` go to the reader's constructor (unknown ones are a ConfigError). Importing this package also
registers the OmegaConf resolver ``${pkg:data_pipelines/samples/web}``, which turns a path inside an
installed package into an absolute path, so presets work from any working directory.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from omegaconf import OmegaConf

from data_pipelines.blocks import Reader
from data_pipelines.sources.base import SourceReader
from data_pipelines.sources.registry import READERS, SOURCE_KINDS
from pretrain.core.errors import ConfigError


@dataclass
class SourceConfig:
    """One named input corpus (the schema of each entry under ``sources:``)."""

    kind: str = "???"
    paths: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def package_path(spec: str) -> str:
    """``data_pipelines/samples/web`` -> the absolute path of that folder inside the installed package."""
    top, _, rest = spec.strip().strip("/").partition("/")
    found = importlib.util.find_spec(top)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"${{pkg:{spec}}}: no installed package named {top!r}")
    base = list(found.submodule_search_locations)[0]
    return os.path.normpath(os.path.join(base, rest)) if rest else base


if not OmegaConf.has_resolver("pkg"):
    OmegaConf.register_new_resolver("pkg", package_path)


def _matches(name: str, extensions: tuple[str, ...]) -> bool:
    return not extensions or name.lower().endswith(extensions)


def expand_paths(
    paths: list[str] | tuple[str, ...] | str,
    source: str = "?",
    extensions: tuple[str, ...] = (),
    directory_units: bool = False,
) -> list[str]:
    """Files (and, with ``directory_units``, repository directories) named by ``paths``.

    Each entry is a file, a glob (``**`` recursive) or a directory. A directory expands to the files below
    it whose names end with one of ``extensions`` (all files when empty; hidden files never), or stays one
    unit with ``directory_units`` (a code repository). The result is sorted, de-duplicated and absolute,
    so the same config always gives the same work list. A path that matches nothing is a ConfigError
    naming the source and the path.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ConfigError(f"source {source!r}: 'paths' is empty; give files, globs or directories")
    out: set[str] = set()
    for entry in paths:
        entry = os.path.expanduser(str(entry))
        if glob.has_magic(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                raise ConfigError(f"source {source!r}: glob {entry!r} matches no file")
        elif os.path.exists(entry):
            matches = [entry]
        else:
            raise ConfigError(f"source {source!r}: path {entry!r} does not exist")
        found = 0
        for match in matches:
            if os.path.isdir(match):
                if directory_units:
                    out.add(os.path.abspath(match))
                    found += 1
                    continue
                for dirpath, dirnames, filenames in os.walk(match):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for name in filenames:
                        if not name.startswith(".") and _matches(name, extensions):
                            out.add(os.path.abspath(os.path.join(dirpath, name)))
                            found += 1
            elif os.path.isfile(match):
                out.add(os.path.abspath(match))
                found += 1
        if not found:
            wanted = f" ending with {list(extensions)}" if extensions else ""
            raise ConfigError(f"source {source!r}: path {entry!r} contains no input files{wanted}")
    return sorted(out)


def source_config(name: str, cfg: SourceConfig | Mapping[str, Any]) -> SourceConfig:
    """Validate one ``sources.<name>`` entry against :class:`SourceConfig` (unknown keys, wrong types).

    The pipeline schema types ``sources`` as ``dict[str, Any]``, not ``dict[str, SourceConfig]``: with the
    latter OmegaConf refuses the documented command-line form ``+sources.enwiki='{kind: wiki, ...}'``
    (a plain dict is "not a subclass of SourceConfig"). Each entry is checked here instead, with
    OmegaConf's own messages, prefixed by the source name.
    """
    if isinstance(cfg, SourceConfig):
        conf = cfg
    else:
        if not (OmegaConf.is_config(cfg) or isinstance(cfg, Mapping)):
            raise ConfigError(f"source {name!r}: expected a mapping with kind/paths/options, got {cfg!r}")
        try:
            raw = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
            if isinstance(raw.get("paths"), str):  # type: ignore[union-attr]
                raw["paths"] = [raw["paths"]]  # type: ignore[index]  # one path needs no list
            merged = OmegaConf.merge(OmegaConf.structured(SourceConfig), raw)
            conf = OmegaConf.to_object(merged)  # type: ignore[assignment]
        except Exception as exc:  # omegaconf raises several error types; all mean a bad entry
            raise ConfigError(f"source {name!r}: {str(exc).splitlines()[0]} (a source has kind, paths, options)") from exc
    if conf.kind in ("", "???"):
        raise ConfigError(f"source {name!r}: 'kind' is missing; expected one of {sorted(READERS)}")
    return conf


def reader_class(name: str, kind: str) -> type[Reader]:
    """The reader class for ``kind``; a ConfigError listing the kinds otherwise."""
    if kind not in READERS:
        raise ConfigError(f"source {name!r}: unknown kind {kind!r}; expected one of {sorted(READERS)}")
    return READERS[kind]


def make_reader(name: str, cfg: SourceConfig | Mapping[str, Any]) -> Reader:
    """Build the reader of source ``name`` from its config (dataclass, dict or OmegaConf node)."""
    conf = source_config(name, cfg)
    return reader_class(name, conf.kind)(name, **conf.options)


def source_inputs(name: str, cfg: SourceConfig | Mapping[str, Any]) -> list[str]:
    """The sorted work list of source ``name``: its paths expanded with its kind's conventions."""
    conf = source_config(name, cfg)
    cls = reader_class(name, conf.kind)
    extensions = getattr(cls, "extensions", ())
    units = bool(getattr(cls, "directory_units", False))
    return expand_paths(conf.paths, source=name, extensions=extensions, directory_units=units)


__all__ = [
    "READERS", "SOURCE_KINDS", "SourceConfig", "SourceReader", "expand_paths", "make_reader", "package_path",
    "reader_class", "source_config", "source_inputs",
]
