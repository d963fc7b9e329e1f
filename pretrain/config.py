"""Typed schema of the training config, registered in Hydra's ConfigStore.

``conf/train.yaml`` starts its defaults list with ``train_schema`` (the :class:`TrainConfig` below), so every
group file merges into a typed node: a misspelt key or a value of the wrong type fails at compose time with
Hydra's own message (naming the key), before anything is built.

Names follow Megatron/NeMo where users know them (``micro_batch_size``, ``global_batch_size``,
``tensor_model_parallel_size``...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# The model group's schema is the families': each declares its own keys (pretrain/models/<family>/config.py)
# and ModelConfig is their union (pretrain/models/schema.py), so a new family adds its keys without an edit here.
from pretrain.models import ModelConfig  # noqa: E402
from pretrain.models.schema import Activation, Normalization, PositionEmbedding, RecomputeGranularity  # noqa: E402,F401


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Schedule(str, Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class VerifyMode(str, Enum):
    checksum = "checksum"
    size = "size"


class SpikeMethod(str, Enum):
    zscore = "zscore"
    ratio = "ratio"
    off = "off"


class Objective(str, Enum):
    family = "family"  # the model family's own objective: causal LM (GPT), masked LM (+SOP, BERT), span corruption (T5)
    distill = "distill"  # knowledge distillation from distill.teacher (pretrain/distill.py, docs/distillation.md)


class TeacherDtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class WandbMode(str, Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class DataConfig:
    # Folder holding manifest.json + token shards (written by the data pipeline); null = built-in sample data.
    path: Optional[str] = None
    # Mixture weights by corpus name (see the manifest); empty = proportional to each corpus's tokens. A typed map
    # with an empty default (not null) so that the command line can set it: data.weights='{web: 0.5, code: 0.5}'
    # or data.weights.web=0.5 (Hydra cannot descend into a null node).
    weights: Dict[str, float] = field(default_factory=dict)
    # Train/validation[/test] split of each corpus's documents, Megatron style ("98,2"; on a command line 98/2).
    split: str = "98,2"
    num_workers: int = 0
    # Where the shuffled sample indices are cached; null = <run_dir>/data_index.
    index_cache_dir: Optional[str] = None
    # Tokenizer of the built-in sample data (data.path=null): bpe (GPT), wordpiece (BERT), unigram (T5).
    sample_tokenizer: str = "bpe"
    # A second pipeline output (manifest.json + shards, the same tokenizer) used only for validation, per source,
    # instead of data.split (every document of data.path then trains): held-out data shared by several runs.
    valid_path: Optional[str] = None
    # A mixture that changes during the run, instead of data.weights: phases {until_tokens|until_step: X,
    # weights: {corpus: w}[, interpolate: linear]}; the last phase's boundary may be left out (it holds to the end).
    schedule: List[Any] = field(default_factory=list)
    # A checkpoint trained with another schedule: refuse (the default) or allow (continue with this one, warned).
    schedule_changed: str = "refuse"
    # Packed sequences: tokens attend only within their own document (EOD-delimited) and positions restart per
    # document (gpt and bert; docs/attention.md).
    document_mask: bool = False


@dataclass
class ParallelConfig:
    zero_stage: int = 1
    offload_optimizer: bool = False
    offload_param: bool = False
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    # How DeepSpeed cuts the layers into stages: type:<class regex> (as many matching layers per stage),
    # parameters (balanced parameter counts) or uniform (layer count).
    pipeline_partition: str = "type:TransformerLayer"
    sequence_parallel: bool = False
    # Spread each MoE layer's experts' computation over this many data-parallel ranks, tokens sent by all-to-all
    # (docs/moe.md); 1 = every rank runs every expert. Needs model.num_experts divisible by it and dividing dp.
    expert_model_parallel_size: int = 1
    # Split each sequence over this many ranks (DeepSpeed-Ulysses: an all-to-all over the heads around attention;
    # docs/context_parallel.md). GPT only; needs heads (and key/value heads) divisible by tp x it, and
    # model.seq_length divisible by it. The ranks of a context group read the same samples.
    context_parallel_size: int = 1
    # null: nccl on CUDA, gloo on CPU.
    backend: Optional[str] = None
    # Seconds a collective may wait before the job fails instead of hanging.
    timeout_s: int = 1800


@dataclass
class SchedConfig:
    name: Schedule = Schedule.cosine
    warmup_steps: int = 0
    # Length of the schedule; null = trainer.max_steps. Set it to resume a run to a larger max_steps on the
    # same curve.
    decay_steps: Optional[int] = None
    min_lr_ratio: float = 0.1


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    sched: SchedConfig = field(default_factory=SchedConfig)


@dataclass
class GuardInjectConfig:
    # Fault injection, for tests: the batch of each listed step (numbered in global batches of the data from its
    # start, so a rollback that continues past it does not meet it again) gets its loss multiplied by NaN
    # (nan_at) or by spike_factor (spike_at), on the micro-batch holding the step's first sample.
    nan_at: List[int] = field(default_factory=list)
    spike_at: List[int] = field(default_factory=list)
    spike_factor: float = 10.0


@dataclass
class GuardConfig:
    """Training health (pretrain/guard.py): detect a non-finite loss or gradient norm and loss spikes, then skip
    the step, lower the LR, roll back. The defaults fire on nothing a healthy run does."""

    # false: no skipping, no rollback; a non-finite loss then stops the run with an error naming the step.
    enabled: bool = True
    # Loss spikes: zscore (loss above the window's mean by `zscore` standard deviations), ratio (loss above
    # `ratio` x the window's median) or off (non-finite values only).
    spike: SpikeMethod = SpikeMethod.zscore
    window: int = 100  # recent healthy losses the spike test compares with
    warmup_steps: int = 100  # healthy steps seen before spike detection starts
    zscore: float = 6.0
    ratio: float = 2.0
    # Escalation within one episode (anomalies no more than `patience` steps apart): the first `max_skips`
    # anomalies skip their step; the next also lowers the LR by `lr_factor` for `lr_steps` steps; the next rolls
    # back to the last good checkpoint and continues past the offending samples, at most `max_rollbacks` times.
    max_skips: int = 1
    lr_factor: float = 0.1
    lr_steps: int = 20
    patience: int = 50  # healthy steps that close an episode (and release the protected checkpoint)
    max_rollbacks: int = 3
    inject: GuardInjectConfig = field(default_factory=GuardInjectConfig)


@dataclass
class TrainerConfig:
    max_steps: int = 100
    micro_batch_size: int = 4
    # null = micro_batch_size * data-parallel size (no accumulation).
    global_batch_size: Optional[int] = None
    precision: Precision = Precision.fp32
    # auto: cuda when available, else cpu.
    device: str = "auto"
    eval_interval: int = 50
    eval_iters: int = 4
    log_interval: int = 1
    # Peak dense FLOP/s of one device for MFU; null = from the table of known GPUs, or measured on CPU.
    peak_flops_per_device: Optional[float] = None
    deterministic: bool = False
    # torch.compile each transformer block (pretrain/models/compile.py, docs/compile.md), with this backend:
    # inductor (generated kernels), aot_eager (traced, eager kernels: checks tracing, no speed-up) or eager.
    compile: bool = False
    compile_backend: str = "inductor"
    # Seconds of training after which the run saves a checkpoint and stops (then requeues under SLURM), as
    # SIGUSR1/SIGTERM do; null = no budget. Set it to the job's time limit minus the time a save takes.
    max_wall_time_s: Optional[float] = None
    # After a stop by signal or budget, rank 0 runs `scontrol requeue $SLURM_JOB_ID` (only inside a SLURM job).
    requeue: bool = True
    guard: GuardConfig = field(default_factory=GuardConfig)


@dataclass
class CheckpointConfig:
    # Save every N steps (0 = only at the end).
    interval: int = 0
    keep_last: int = 2
    # null = <run_dir>/checkpoints
    dir: Optional[str] = None
    # auto: resume from the latest complete checkpoint in dir if there is one; never: start fresh
    # (refuses a dir that already has checkpoints); or a path to a checkpoint tag directory.
    resume: str = "auto"
    save_at_end: bool = True
    # Also write the layout-free copy (universal/: weights and Adam moments by parameter name), which lets a
    # run resume at another tp x pp x dp layout or ZeRO stage and export from tensor/pipeline-parallel
    # checkpoints. Costs one more copy of the fp32 weights and moments on disk.
    universal: bool = True
    # What resume checks of a checkpoint before trusting it: "checksum" (every file's size and xxh3 against
    # files.json; each rank reads the checkpoint once more, ~3 GB/s per core) or "size" (sizes and the pickle
    # allow-list only: for checkpoints so large, or file systems so shared, that re-reading them is too costly).
    verify: VerifyMode = VerifyMode.checksum


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline
    project: str = "pretrain"
    entity: Optional[str] = None
    name: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    console: bool = True


class AccelerateStrategy(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"


class FsdpSharding(str, Enum):
    full = "full"
    hybrid = "hybrid"
    none = "none"


@dataclass
class AccelerateConfig:
    """``engine=accelerate`` (pretrain/engines/accelerate.py, docs/engines.md)."""

    # ddp: every rank holds the whole model, gradients all-reduced (DistributedDataParallel through accelerate).
    # fsdp: FSDP2 (torch's fully_shard, one unit per transformer layer plus the root).
    strategy: AccelerateStrategy = AccelerateStrategy.ddp
    # Under fsdp: full (parameters, gradients, optimizer states sharded over every data-parallel rank), hybrid
    # (sharded within groups of hybrid_shard_size ranks, replicated across them) or none (replicated: DDP numerics).
    sharding: FsdpSharding = FsdpSharding.full
    # Ranks per shard group under sharding=hybrid; null = the processes of one node (LOCAL_WORLD_SIZE).
    hybrid_shard_size: Optional[int] = None
    # Free each layer's gathered parameters after its forward (less memory, one more all-gather in backward).
    reshard_after_forward: bool = True


@dataclass
class EngineConfig:
    # deepspeed (the default: ZeRO, pipeline and tensor parallelism) or accelerate (DDP / FSDP2).
    name: str = "deepspeed"
    accelerate: AccelerateConfig = field(default_factory=AccelerateConfig)


@dataclass
class DistillConfig:
    """objective=distill (docs/distillation.md): loss = alpha * hard + (1 - alpha) * T^2 * KL(teacher_T || student_T)
    + cosine_weight * (1 - cos(hidden_student, hidden_teacher)), the KL between temperature-T softened distributions."""

    # A local Hugging Face model directory (config.json + *.safetensors + tokenizer.json, as `python -m
    # pretrain.export` writes) or one of our checkpoints (a run directory, its checkpoints/ folder or a tag folder).
    teacher: Optional[str] = None
    # Softens both distributions (T^2 rescales the soft loss): 1.0, the usual for LLM pretraining; DistilBERT used 2.0.
    temperature: float = 1.0
    # Weight of the hard loss (the family's own objective on the data's labels); 1 - alpha weighs the soft loss.
    alpha: float = 0.5
    # DistilBERT's cosine loss between the last layer's hidden states (student hidden size = teacher's); 0 = off.
    cosine_weight: float = 0.0
    # The teacher's weights and forward: fp32 or bf16 (half the memory; the soft loss is computed in fp32).
    teacher_dtype: TeacherDtype = TeacherDtype.fp32


@dataclass
class TrainConfig:
    name: str = "default"
    run_dir: str = MISSING
    seed: int = 1234
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # What the model learns from: family (its own objective) or distill (from the teacher of `distill`).
    objective: Objective = Objective.family
    distill: DistillConfig = field(default_factory=DistillConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    # Rare DeepSpeed keys merged last into the generated JSON (e.g. {"zero_optimization": {"reduce_bucket_size": 5e8}}).
    deepspeed_extra: Dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    schema = OmegaConf.structured(TrainConfig)
    # Hydra closes every map (struct mode) before it applies the command line, so `data.weights={web: 0.5}` and
    # `data.weights.web=0.5` would need a `+`. The weights map is open by nature (its keys are the manifest's
    # corpus names, checked against the manifest when the data is built); its values stay typed as floats.
    OmegaConf.set_struct(schema.data.weights, False)
    cs.store(name="train_schema", node=schema)


def validate_schema(cfg) -> None:
    """Re-check a composed config against the schema. Hydra's ``+key=value`` appends keys even to typed
    nodes; this catches those (and any other unknown key) with a message naming it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from pretrain.core.errors import ConfigError

    try:
        # through a plain container: merging the typed node itself would carry the appended key along
        OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(OmegaConf.to_container(cfg)))
    except OmegaConfBaseException as e:
        from omegaconf.errors import ConfigAttributeError, ConfigKeyError

        from pretrain.validation import closest_key

        key = getattr(e, "full_key", None)
        guess = closest_key(key) if key and isinstance(e, (ConfigKeyError, ConfigAttributeError)) else None
        hint = f" (did you mean {guess}?)" if guess and guess != key else ""
        raise ConfigError(f"config key '{key}': {str(e).splitlines()[0]}{hint}") from None
