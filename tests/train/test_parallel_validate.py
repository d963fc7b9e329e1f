"""Layout validation before any process group: every invalid layout gives a message naming the key and what to
change; valid layouts of the real presets pass; grid coordinates match DeepSpeed's topology."""

from __future__ import annotations

import pytest

from conftest import structured_cfg as cfg
from pretrain.core.errors import ConfigError
from pretrain.parallel.topology import coord_of
from pretrain.parallel.validate import validate_parallel


def test_valid_3d_layout():
    c = cfg(parallel__tensor_model_parallel_size=2, parallel__pipeline_model_parallel_size=2, parallel__zero_stage=1,
            trainer__micro_batch_size=2, trainer__global_batch_size=16, model__num_layers=4, model__vocab_size=256)
    layout = validate_parallel(c, 8)
    assert (layout.tp, layout.pp, layout.dp, layout.world_size, layout.grad_accum_steps) == (2, 2, 2, 8, 4)


def test_global_batch_defaults_to_micro_times_dp():
    layout = validate_parallel(cfg(parallel__tensor_model_parallel_size=2, trainer__micro_batch_size=3), 4)
    assert (layout.dp, layout.global_batch_size, layout.grad_accum_steps) == (2, 6, 1)


@pytest.mark.parametrize("over, world, fragment", [
    ({"parallel__tensor_model_parallel_size": 3, "model__num_attention_heads": 6, "model__ffn_hidden_size": 96},
     4, "world size 4 is not divisible by parallel.tensor_model_parallel_size x parallel.pipeline_model_parallel_size"),
    ({"parallel__tensor_model_parallel_size": 8}, 8,
     "model.num_attention_heads=4 is not divisible by parallel.tensor_model_parallel_size=8"),
    ({"parallel__tensor_model_parallel_size": 4, "model__num_attention_heads": 8, "model__num_key_value_heads": 2},
     4, "model.num_key_value_heads=2 is not divisible by parallel.tensor_model_parallel_size=4"),
    ({"parallel__tensor_model_parallel_size": 2, "model__ffn_hidden_size": 97}, 2,
     "set model.ffn_hidden_size to a multiple of 2"),
    ({"parallel__pipeline_model_parallel_size": 3, "model__num_layers": 4, "parallel__zero_stage": 1}, 3,
     "model.num_layers=4 is not divisible by parallel.pipeline_model_parallel_size=3"),
    ({"parallel__pipeline_model_parallel_size": 2, "parallel__zero_stage": 2}, 2,
     "needs parallel.zero_stage <= 1"),
    ({"parallel__tensor_model_parallel_size": 2, "trainer__micro_batch_size": 4, "trainer__global_batch_size": 10}, 4,
     "trainer.global_batch_size=10 is not divisible by trainer.micro_batch_size x data-parallel size = 4 x 2 = 8"),
    ({"parallel__tensor_model_parallel_size": 2, "model__vocab_size": 101}, 2,
     "model.vocab_size=101 is not divisible by parallel.tensor_model_parallel_size=2; pad it to 102"),
    ({"parallel__tensor_model_parallel_size": 4, "model__make_vocab_size_divisible_by": 6,
      "model__num_attention_heads": 8}, 4, "model.make_vocab_size_divisible_by=6 is not a multiple of"),
    ({"parallel__tensor_model_parallel_size": 2, "parallel__sequence_parallel": True, "model__family": "bert"}, 2,
     "parallel.sequence_parallel=true is implemented for model.family=gpt only, not bert"),
    ({"parallel__tensor_model_parallel_size": 2, "parallel__sequence_parallel": True, "model__seq_length": 63}, 2,
     "model.seq_length=63 is not divisible by parallel.tensor_model_parallel_size=2"),
    ({"model__family": "t5", "model__num_layers": 4, "model__num_decoder_layers": 3,
      "parallel__pipeline_model_parallel_size": 2, "parallel__zero_stage": 0}, 2,
     "model.num_decoder_layers=3 is not divisible by parallel.pipeline_model_parallel_size=2"),
    ({"model__family": "t5", "model__num_layers": 4, "model__num_decoder_layers": 4,
      "parallel__pipeline_model_parallel_size": 2, "parallel__zero_stage": 0}, 2,
     "is not available for model.family=t5 (T5's relative-position bias table"),
    ({"parallel__pipeline_model_parallel_size": 2, "parallel__pipeline_partition": "by_flops"}, 2,
     "parallel.pipeline_partition='by_flops'; expected parameters, uniform or type:<layer class regex>"),
])
def test_invalid_layouts_say_what_to_change(over, world, fragment):
    with pytest.raises(ConfigError, match="invalid parallel layout") as e:
        validate_parallel(cfg(**over), world)
    assert fragment in str(e.value)


def test_every_problem_is_reported_at_once():
    c = cfg(parallel__tensor_model_parallel_size=8, parallel__pipeline_model_parallel_size=2, parallel__zero_stage=3,
            model__num_layers=3)
    with pytest.raises(ConfigError) as e:
        validate_parallel(c, 16)
    msg = str(e.value)
    for fragment in ("num_attention_heads=4", "num_layers=3", "zero_stage <= 1"):
        assert fragment in msg


def test_sizes_below_one_refused():
    with pytest.raises(ConfigError, match="must both be >= 1"):
        validate_parallel(cfg(parallel__tensor_model_parallel_size=0), 1)


def test_real_presets_split_as_published():
    # LLaMA-7B at tp 8 x pp 4 on 64 GPUs; the padded vocabulary (multiple of 128) splits over 8
    c = cfg(model__num_layers=32, model__hidden_size=4096, model__num_attention_heads=32, model__ffn_hidden_size=11008,
            model__activation="swiglu", parallel__tensor_model_parallel_size=8,
            parallel__pipeline_model_parallel_size=4, parallel__zero_stage=1, trainer__micro_batch_size=1,
            trainer__global_batch_size=1024)
    layout = validate_parallel(c, 64)
    assert (layout.dp, layout.grad_accum_steps) == (2, 512)


def test_grid_coordinates_follow_deepspeed_topology():
    # world 8 = tp 2 x pp 2 x dp 2: tensor ranks adjacent, pipeline stages farthest apart
    coords = [coord_of(r, tp=2, pp=2, world_size=8) for r in range(8)]
    assert [(c.pp, c.dp, c.tp) for c in coords] == [
        (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
