"""Training engines behind one interface (:class:`pretrain.engines.base.Engine`), chosen by name.

Adding an engine = one file here implementing ``Engine`` + one line in ``_ENGINE_CLASSES``. The engines (and torch)
are imported when first asked for, so that what only checks a configuration (the SLURM helper, the planner) starts
in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import Any

from pretrain.core.errors import ConfigError
from pretrain.engines.batching import BatchPlan, batch_plan

_ENGINE_CLASSES = {"deepspeed": "pretrain.engines.deepspeed:DeepSpeedEngine",
                   "accelerate": "pretrain.engines.accelerate:AccelerateEngine"}


def get_engine(name: str) -> type:
    if name not in _ENGINE_CLASSES:
        raise ConfigError(f"engine={name!r} is not known; expected one of {', '.join(sorted(_ENGINE_CLASSES))}")
    module, cls = _ENGINE_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def __getattr__(name: str) -> Any:
    """``ENGINES`` (name -> engine class), ``Engine`` and ``check_precision``, imported on first use."""
    if name == "ENGINES":
        return {key: get_engine(key) for key in _ENGINE_CLASSES}
    if name in ("Engine", "check_precision"):
        from pretrain.engines import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ENGINES", "BatchPlan", "Engine", "batch_plan", "check_precision", "get_engine"]
