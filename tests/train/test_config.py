"""Config composition, schema errors, batch arithmetic and the generated DeepSpeed JSON."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException

from pretrain.config import register_configs, validate_schema
from pretrain.core.errors import ConfigError
from pretrain.engines import batch_plan, check_precision
from pretrain.engines.deepspeed import deepspeed_config
from pretrain.models import TokenizerInfo, get_family, resolve_args
from pretrain.models.gpt import count_parameters
from pretrain.optim import lr_lambda

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_is_consistent(compose_cfg, name):
    cfg = compose_cfg(f"experiment={name}", "run_dir=/tmp/x")
    assert cfg.name == name
    family = get_family(cfg.model.family)
    args = family.resolve_args(cfg.model, TokenizerInfo(None, 50257, 0))
    assert family.num_parameters(args) > 0
    # the recipes are meant for one node of 8 GPUs: their batch arithmetic must hold there
    plan = batch_plan(cfg, 8)
    assert plan.global_batch_size == plan.micro_batch_size * plan.data_parallel_size * plan.grad_accum_steps


def test_presets_match_the_published_sizes(compose_cfg):
    expected = {"125m": 0.125e9, "350m": 0.355e9, "1.3b": 1.3e9, "2.7b": 2.65e9, "6.7b": 6.65e9, "13b": 12.85e9}
    for size, n in expected.items():
        cfg = compose_cfg(f"model=gpt/{size}")
        total = count_parameters(resolve_args(cfg.model, 50257))["total"]
        assert abs(total - n) / n < 0.03, (size, total)
    llama7 = count_parameters(resolve_args(compose_cfg("model=gpt/llama_7b").model, 32000))["total"]
    assert abs(llama7 - 6.74e9) / 6.74e9 < 0.01
    llama1 = count_parameters(resolve_args(compose_cfg("model=gpt/llama_1b").model, 32000))["total"]
    assert abs(llama1 - 1.1e9) / 1.1e9 < 0.01


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.max_stepz=3", "max_stepz"),          # misspelt key
        ("trainer.max_steps=many", "max_steps"),        # wrong type
        ("model.activation=tanh", "activation"),        # value outside the enum
    ],
)
def test_schema_rejects_bad_keys_at_compose_time(compose_cfg, override, fragment):
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg(override)
    text = str(e.value) + str(e.value.__cause__)
    assert fragment in text


def test_misspelt_key_in_an_experiment_file_fails(tmp_path):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\ntrainer:\n  max_stepz: 3\n")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises(ConfigCompositionException) as e:
            compose("train", overrides=["experiment=typo"])
    GlobalHydra.instance().clear()
    assert "max_stepz" in str(e.value) and "TrainerConfig" in str(e.value)


def test_appended_unknown_key_is_caught_by_validation(compose_cfg):
    cfg = compose_cfg("+model.hiden_size=3")  # Hydra lets '+' append to typed nodes...
    with pytest.raises(ConfigError, match="model.hiden_size"):
        validate_schema(cfg)  # ...the trainer re-checks before doing anything
    validate_schema(compose_cfg("experiment=llama_7b"))


def test_batch_arithmetic(compose_cfg):
    cfg = compose_cfg("trainer.micro_batch_size=4", "trainer.global_batch_size=32")
    plan = batch_plan(cfg, 2)
    assert (plan.data_parallel_size, plan.grad_accum_steps, plan.zero_stage) == (2, 4, 1)
    # one data-parallel rank has nothing to partition: stage 0, unless offload needs the ZeRO optimizer
    assert batch_plan(compose_cfg("parallel=zero3"), 1).zero_stage == 0
    assert batch_plan(compose_cfg("parallel=zero3_offload"), 1).zero_stage == 3
    cfg = compose_cfg("trainer.micro_batch_size=4", "trainer.global_batch_size=30")
    with pytest.raises(ConfigError, match=r"trainer.global_batch_size=30 .* 4 x 2 = 8"):
        batch_plan(cfg, 2)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["parallel.pipeline_model_parallel_size=2", "parallel.zero_stage=2"],
         "pipeline_model_parallel_size=2 needs parallel.zero_stage <= 1"),
        (["parallel.tensor_model_parallel_size=3"], "parallel.tensor_model_parallel_size=3"),
        (["parallel.zero_stage=4"], "parallel.zero_stage=4"),
        (["parallel.offload_param=true", "parallel.zero_stage=2"], "offload_param=true needs parallel.zero_stage=3"),
        (["parallel.offload_optimizer=true", "parallel.zero_stage=0"], "offload_optimizer=true needs"),
        (["trainer.micro_batch_size=0"], "micro_batch_size=0"),
    ],
)
def test_invalid_layouts_name_the_key(compose_cfg, overrides, fragment):
    with pytest.raises(ConfigError) as e:
        batch_plan(compose_cfg(*overrides), 2)
    assert fragment in str(e.value)


def test_fp16_on_cpu_is_refused_with_advice():
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        check_precision("fp16", torch.device("cpu"))


def test_model_shape_errors(compose_cfg):
    with pytest.raises(ConfigError, match="num_attention_heads=4 is not a multiple of model.num_key_value_heads=3"):
        resolve_args(compose_cfg("model.num_key_value_heads=3").model, 100)
    with pytest.raises(ConfigError, match="hidden_size=66 is not divisible"):
        resolve_args(compose_cfg("model.hidden_size=66").model, 100)


def test_vocab_is_padded_from_the_tokenizer(compose_cfg):
    cfg = compose_cfg("model.make_vocab_size_divisible_by=128")
    assert resolve_args(cfg.model, 50257).vocab_size == 50304
    assert resolve_args(compose_cfg("model.vocab_size=1000").model, 50257).vocab_size == 1000


def test_deepspeed_json_is_derived_from_the_typed_config(compose_cfg):
    cfg = compose_cfg(
        "trainer.micro_batch_size=2", "trainer.global_batch_size=16", "parallel=zero3_offload",
        "trainer.precision=bf16", "optim.clip_grad=0.5",
        "+deepspeed_extra={zero_optimization: {reduce_bucket_size: 1000}, flops_profiler: {enabled: false}}",
    )
    plan = batch_plan(cfg, 4)
    ds = deepspeed_config(cfg, plan, torch.device("cpu"))
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 4
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["zero_optimization"]["reduce_bucket_size"] == 1000  # passthrough wins
    assert ds["zero_optimization"]["contiguous_gradients"] is True  # ...and keeps the rest
    assert ds["flops_profiler"] == {"enabled": False}
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5


def test_lr_schedule(compose_cfg):
    cfg = compose_cfg("optim.sched.warmup_steps=10", "optim.sched.min_lr_ratio=0.1")
    fn = lr_lambda(cfg.optim.sched, max_steps=110)
    assert fn(0) == pytest.approx(0.1) and fn(9) == pytest.approx(1.0)
    assert fn(10) == pytest.approx(1.0)
    assert fn(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert fn(110) == pytest.approx(0.1) and fn(500) == pytest.approx(0.1)
    # decay_steps decouples the curve from max_steps (a run stopped at 10 and resumed to 20 follows one curve)
    cfg = compose_cfg("optim.sched.warmup_steps=0", "optim.sched.decay_steps=20", "optim.sched.name=linear")
    short, long = lr_lambda(cfg.optim.sched, 10), lr_lambda(cfg.optim.sched, 20)
    assert [short(i) for i in range(10)] == [long(i) for i in range(10)]
    assert long(20) == pytest.approx(0.1)
    cfg = compose_cfg("optim.sched.name=constant", "optim.sched.warmup_steps=2")
    assert lr_lambda(cfg.optim.sched, 100)(50) == 1.0


def test_pipeline_sends_whole_activations_under_sequence_parallelism(compose_cfg):
    """DeepSpeed's pipe_partitioned sends 1/tp of a stage output assuming tensor ranks hold the same tensor;
    sequence-parallel ranks hold different sequence chunks (a tp2 x pp2 run diverged by 0.5% with it)."""
    layout = ("parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2")
    cfg = compose_cfg(*layout, "parallel.sequence_parallel=true")
    ds = deepspeed_config(cfg, batch_plan(cfg, 4), torch.device("cpu"))
    assert ds["pipeline"] == {"pipe_partitioned": False, "grad_partitioned": False}
    cfg = compose_cfg(*layout)
    assert "pipeline" not in deepspeed_config(cfg, batch_plan(cfg, 4), torch.device("cpu"))
