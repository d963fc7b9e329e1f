"""Typed schema of the data pipeline's root config (``conf/pipeline.yaml``), registered in Hydra's ConfigStore.

``conf/pipeline.yaml`` starts its defaults list with ``pipeline_schema`` (:class:`PipelineConfig`), so every
group file (``sources``, ``filters``, ``dedup``, ``tokenizer``, ``executor``) merges into a typed node: a
misspelt key or a value of the wrong type fails at compose time with Hydra's own message naming the key.
The group schemas of sources, filters and dedup live with their code; this module owns the root, the
tokenizer and the executor.

Hydra's ``++key=value`` forces a key into a typed node anyway; :func:`validate_schema` re-checks the composed
config against the schema (as the trainer does), so such a key is refused too. What Hydra cannot check (a
source kind that does not exist, a path that matches no file, shard >= num_shards, an unknown stage) is
checked by :func:`validate` before any work starts.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from data_pipelines.decontam.config import DecontaminationConfig
from data_pipelines.dedup import DedupConfig
from data_pipelines.filters import FiltersConfig
from data_pipelines.sources.registry import SOURCE_KINDS
from data_pipelines.stages import STAGE_NAMES, STAGES, Stage
from pretrain.core.errors import ConfigError

START_METHODS = ("auto", "spawn", "fork", "forkserver")


@dataclass
class TokenizerConfig:
    """The ``tokenizer`` group: train one (``kind``) on the cleaned corpus, or use ``path``."""

    kind: str = "bpe"  # bpe (GPT, byte-level) | wordpiece (BERT) | unigram (T5)
    # A Hugging Face tokenizer.json to use as it is instead of training one (copied to tokenizer/).
    path: Optional[str] = None
    vocab_size: int = 32768
    min_frequency: int = 2
    # null: the kind's defaults (bpe: <|endoftext|>; wordpiece: [PAD] [UNK] [CLS] [SEP] [MASK]; unigram: <pad> </s> <unk>)
    special_tokens: Optional[List[str]] = None
    # Appended after every document in the token shards; null: <|endoftext|> / [SEP] / </s> by kind.
    eod_token: Optional[str] = None
    unk_token: Optional[str] = None
    # T5-style sentinels <extra_id_0..N-1> at the top of the vocabulary (unigram only).
    sentinel_tokens: int = 0
    lowercase: bool = False
    # Train on a deterministic sample of at most this many bytes of cleaned text (uniform over sources).
    max_train_bytes: int = 1 << 30
    # Documents per encode_batch call in the tokenize stage.
    batch_size: int = 1000


@dataclass
class ExecutorConfig:
    """The ``executor`` group: how the work is split and run."""

    # Worker processes on this machine (1 = run in this process).
    workers: int = 1
    # auto: fork on Linux where safe (workers inherit the loaded language model), else spawn
    start_method: str = "auto"  # auto | spawn | fork | forkserver
    # Run only the parts of per-part stages with index % num_shards == shard (a SLURM array task);
    # null runs every part. Global stages (cluster, tokenizer, report) run only in runs with shard=null.
    shard: Optional[int] = None
    num_shards: int = 1
    # Default: every stage of data_pipelines.stages.STAGES, in that order.
    stages: List[str] = field(default_factory=lambda: list(STAGE_NAMES))
    # Input files of a source are grouped into parts of about this size; a larger file that can be cut
    # (wiki multistream with its index, JSON Lines: plain, gzip members, bz2 streams, zstd frames) is split.
    part_size_mb: float = 256.0
    # Files are split only into pieces of at least this size (each piece is a task of its own).
    split_min_mb: float = 1.0
    progress: bool = True
    # Keep work/ (intermediate documents and dedup signatures) after the report is written.
    keep_intermediate: bool = True
    # Documents per written row group / batch.
    batch_size: int = 1000
    # local: worker processes on this machine; ray: tasks on a Ray cluster (conf/executor/ray.yaml).
    backend: str = "local"
    # ray: the cluster to join ("auto": the one RAY_ADDRESS or `ray start` on this machine names, else a
    # local one of `workers` CPUs started for this run; "local": always a new local one; or "host:6379").
    address: str = "auto"
    # ray: times a task is retried after its worker died (or an I/O error); 0 = never.
    max_retries: int = 3
    # ray: CPUs each task asks for.
    cpus_per_task: float = 1.0


@dataclass
class PipelineConfig:
    output_dir: str = MISSING
    # name -> {kind, paths, options} (data_pipelines.sources.SourceConfig). Typed as Any because OmegaConf
    # cannot merge a command-line mapping (+sources.x='{kind: wiki, ...}') into a Dict of dataclasses;
    # validate() checks every entry (unknown key, unknown kind, missing path) before any work.
    sources: Dict[str, Any] = field(default_factory=dict)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    # Off unless eval_paths names eval sets (data_pipelines/decontam/config.py, the decontaminate stage).
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="pipeline_schema", node=PipelineConfig)


register()


def plain(cfg: Any) -> Any:
    """OmegaConf node -> plain Python containers (interpolations resolved); anything else unchanged."""
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _close_keys(key: str) -> list[str]:
    """The schema key closest to the unknown ``key`` (``executor.wokers`` -> ``executor.workers``), if any."""
    *parents, leaf = key.split(".")
    node: Any = PipelineConfig
    for name in parents:
        node = typing.get_type_hints(node).get(name) if is_dataclass(node) else None
    if not is_dataclass(node):
        return []
    prefix = "".join(f"{p}." for p in parents)
    return [prefix + n for n in difflib.get_close_matches(leaf, [f.name for f in fields(node)], n=1)]


def validate_schema(cfg: DictConfig) -> None:
    """Re-check the composed config against :class:`PipelineConfig`. Hydra's ``++key=value`` adds keys even to
    typed nodes; this refuses those (and any other unknown key or wrong type) with a message naming the key."""
    try:
        # through a plain container: merging the typed node itself would carry the forced key along
        OmegaConf.merge(OmegaConf.structured(PipelineConfig), OmegaConf.create(OmegaConf.to_container(cfg)))
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", None) or "?")
        hint = "".join(f"; did you mean '{k}'?" for k in _close_keys(key)) if isinstance(e, ConfigKeyError) else ""
        raise ConfigError(f"config key '{key}': {str(e).splitlines()[0]}{hint}") from None


def validate(cfg: DictConfig, stages: Sequence[Stage] = STAGES) -> None:
    """Checks Hydra cannot do, run before any work: each raises :class:`ConfigError` naming the key."""
    from data_pipelines.dedup.config import as_dedup_config
    from data_pipelines.filters import filters_for_source
    from data_pipelines.sources import make_reader, source_inputs
    from pretrain.core.tokenizer import TokenizerSpec

    validate_schema(cfg)
    if OmegaConf.is_missing(cfg, "output_dir") or not str(cfg.output_dir).strip():
        raise ConfigError("output_dir: missing; run `python -m data_pipelines.run output_dir=<dir>`")
    ex = cfg.executor
    if ex.workers < 1:
        raise ConfigError(f"executor.workers: must be >= 1, got {ex.workers}")
    backend = ex.get("backend", "local")  # the keys of the Ray executor and of file splitting (schema defaults)
    if backend not in ("local", "ray"):
        raise ConfigError(f"executor.backend: '{backend}' is not one of local, ray")
    for key, ok, want in (("max_retries", lambda v: v >= 0, ">= 0"), ("cpus_per_task", lambda v: v > 0, "> 0"),
                          ("split_min_mb", lambda v: v >= 0, ">= 0")):
        if key in ex and not ok(ex[key]):
            raise ConfigError(f"executor.{key}: must be {want}, got {ex[key]}")
    if backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError("executor=ray: the ray package is not installed; pip install 'ray>=2.40'")
    if ex.start_method not in START_METHODS:
        raise ConfigError(f"executor.start_method: '{ex.start_method}' is not one of {', '.join(START_METHODS)}")
    if ex.num_shards < 1:
        raise ConfigError(f"executor.num_shards: must be >= 1, got {ex.num_shards}")
    if ex.shard is not None and not 0 <= ex.shard < ex.num_shards:
        raise ConfigError(f"executor.shard: {ex.shard} is outside [0, executor.num_shards={ex.num_shards})")
    names = [s.name for s in stages]
    for s in ex.stages:
        if s not in names:
            raise ConfigError(f"executor.stages: unknown stage '{s}'; expected some of {', '.join(names)}")
    if ex.part_size_mb <= 0:
        raise ConfigError(f"executor.part_size_mb: must be > 0, got {ex.part_size_mb}")
    if ex.batch_size < 1:
        raise ConfigError(f"executor.batch_size: must be >= 1, got {ex.batch_size}")
    if not cfg.sources:
        raise ConfigError(
            "sources: no source configured; pick a preset (sources=samples) or add one, e.g. "
            "+sources.enwiki='{kind: wiki, paths: [/data/enwiki.xml.bz2]}'"
        )
    for name in cfg.sources:
        src = cfg.sources[name]
        if not isinstance(src, DictConfig):
            raise ConfigError(f"sources.{name}: expected a mapping {{kind: ..., paths: [...]}}, got {src!r}")
        if "kind" not in src or OmegaConf.is_missing(src, "kind"):
            raise ConfigError(f"sources.{name}.kind: missing; expected one of {', '.join(SOURCE_KINDS)}")
        make_reader(name, src)  # unknown kind / unknown option
        source_inputs(name, src)  # missing path / glob matching nothing
        filters_for_source(cfg.filters, name, src.kind)  # unknown block / parameter
    as_dedup_config(plain(cfg.dedup)).validate()
    _validate_decontamination(cfg)
    TokenizerSpec.from_config(cfg.tokenizer)
    if cfg.tokenizer.batch_size < 1:
        raise ConfigError(f"tokenizer.batch_size: must be >= 1, got {cfg.tokenizer.batch_size}")


def _validate_decontamination(cfg: DictConfig) -> None:
    """The decontamination keys, and every eval file read once: a missing or unusable file names itself here."""
    from data_pipelines.decontam import as_decontamination_config, check_config, read_eval_sets

    decon = as_decontamination_config(plain(cfg.decontamination))
    check_config(decon)
    if decon.eval_paths:
        read_eval_sets(list(decon.eval_paths), decon.fields)
