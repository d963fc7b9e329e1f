"""Training engines behind one interface (:class:`pretrain.engines.base.Engine`), chosen by name.

Adding an engine = one file here implementing ``Engine`` + one line in ``ENGINES``.
"""

from __future__ import annotations

from pretrain.core.errors import ConfigError
from pretrain.engines.accelerate import AccelerateEngine
from pretrain.engines.base import BatchPlan, Engine, batch_plan, check_precision
from pretrain.engines.deepspeed import DeepSpeedEngine

ENGINES: dict[str, type[Engine]] = {"deepspeed": DeepSpeedEngine, "accelerate": AccelerateEngine}


def get_engine(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise ConfigError(f"engine={name!r} is not known; expected one of {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


__all__ = ["ENGINES", "BatchPlan", "Engine", "batch_plan", "check_precision", "get_engine"]
