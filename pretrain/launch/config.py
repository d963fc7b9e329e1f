"""The ``slurm`` config group (``conf/slurm/*.yaml``) and composing it next to a training or pipeline config.

The helpers take one command line of Hydra overrides: ``slurm.*`` keys (and ``slurm=<preset>``) describe the
allocation, everything else is the job's own config. Both are composed with Hydra's compose API, so the usual
override syntax and error messages apply; the ``slurm`` node is then checked against :class:`SlurmConfig`
and removed before the job's config is validated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretrain.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"
SLURM_DIR = REPO / "slurm"
LAUNCHERS = ("torchrun", "srun")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclass
class SlurmConfig:
    nodes: int = 1
    gpus_per_node: int = 8
    procs_per_node: Optional[int] = None
    launcher: str = "torchrun"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    reservation: Optional[str] = None
    time: str = "24:00:00"
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None
    exclusive: bool = False
    job_name: Optional[str] = None
    signal_seconds: int = 120
    requeue: bool = True
    max_restarts: int = 0
    master_port: Optional[int] = None
    venv: Optional[str] = None
    setup: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    extra_sbatch: List[str] = field(default_factory=list)
    array: int = 4
    array_parallelism: Optional[int] = None
    # The GPU the pre-flight plan (python -m pretrain.plan) checks a training job's memory against; skip_plan:
    # submit without it.
    gpu: str = "h100"
    skip_plan: bool = False

    @property
    def procs(self) -> int:
        return self.procs_per_node or (self.gpus_per_node if self.gpus_per_node > 0 else 1)


def check(s: SlurmConfig) -> None:
    """Impossible allocations, named by key, before anything is rendered or submitted."""
    if s.nodes < 1:
        raise ConfigError(f"slurm.nodes={s.nodes}: must be >= 1")
    if s.gpus_per_node < 0:
        raise ConfigError(f"slurm.gpus_per_node={s.gpus_per_node}: must be >= 0 (0 = a CPU-only job)")
    if s.procs_per_node is not None and s.procs_per_node < 1:
        raise ConfigError(f"slurm.procs_per_node={s.procs_per_node}: must be >= 1 or null")
    if s.gpus_per_node > 0 and s.procs > s.gpus_per_node:
        raise ConfigError(f"slurm.procs_per_node={s.procs} exceeds slurm.gpus_per_node={s.gpus_per_node}: "
                          "one training process per GPU at most")
    if s.launcher not in LAUNCHERS:
        raise ConfigError(f"slurm.launcher={s.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if not _TIME.match(s.time):
        raise ConfigError(f"slurm.time={s.time!r}: expected SLURM's [days-]hours:minutes:seconds, e.g. 24:00:00 or 2-00:00:00")
    if s.signal_seconds < 0 or s.max_restarts < 0:
        raise ConfigError("slurm.signal_seconds and slurm.max_restarts must be >= 0")
    if s.array < 1 or (s.array_parallelism is not None and s.array_parallelism < 1):
        raise ConfigError(f"slurm.array={s.array} / slurm.array_parallelism={s.array_parallelism}: must be >= 1")
    from pretrain.planner.devices import DEVICES

    if s.gpu.lower() not in DEVICES:
        raise ConfigError(f"slurm.gpu={s.gpu!r}: expected one of {', '.join(DEVICES)}")
    for line in s.extra_sbatch:
        if not line.startswith("--"):
            raise ConfigError(f"slurm.extra_sbatch: {line!r} is not an sbatch option (expected '--name=value')")


def split_overrides(args: list[str]) -> tuple[str, list[str], list[str]]:
    """(slurm preset, ``slurm.*`` overrides without the prefix, the job's own overrides)."""
    preset, slurm, rest = "default", [], []
    for a in args:
        key, _, value = a.partition("=")
        bare = key.lstrip("+~")
        if bare == "slurm":
            preset = value
        elif bare.startswith("slurm."):
            slurm.append(a)
        else:
            rest.append(a)
    return preset, slurm, rest


def _first_lines(e: Exception) -> str:
    """Hydra says what failed on line 1 and why on line 2 ("Could not override 'x'." / "Key 'x' is not in struct")."""
    return " ".join(line.strip() for line in str(e).splitlines()[:2] if line.strip())


def compose(config_name: str, args: list[str]) -> tuple[DictConfig, SlurmConfig]:
    """(the job's config, the checked SLURM settings of ``conf/slurm/<preset>.yaml`` plus ``slurm.*``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    if config_name == "train":
        from pretrain.config import register_configs

        register_configs()
    # any other root config (the data pipeline's) is registered by its caller: pretrain never imports it
    preset, slurm_args, job_args = split_overrides(args)
    if not (CONF_DIR / "slurm" / f"{preset}.yaml").is_file():
        names = sorted(p.stem for p in (CONF_DIR / "slurm").glob("*.yaml"))
        raise ConfigError(f"slurm={preset}: no conf/slurm/{preset}.yaml; expected one of {', '.join(names)}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=job_args)
            try:
                raw = hydra_compose(config_name=f"slurm/{preset}", overrides=slurm_args)
            except (HydraException, OmegaConfBaseException) as e:
                raise ConfigError(_first_lines(e)) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_first_lines(e)) from None
    finally:
        GlobalHydra.instance().clear()
    raw = OmegaConf.to_container(raw, resolve=True).get("slurm", {})
    try:
        s = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SlurmConfig), raw))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"config key 'slurm.{key}': {str(e).splitlines()[0]}") from None
    check(s)
    return cfg, s
