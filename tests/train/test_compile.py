"""``trainer.compile=true`` (pretrain/models/compile.py): the transformer blocks of the default presets trace into
one graph each (``torch._dynamo.explain``: no graph break), with and without activation checkpointing; a
compiled run gives the per-step losses of the eager one (the e2e table's one-process runs) within 1e-4 over 10
steps for GPT (inductor), BERT and T5 (aot_eager: dynamo + AOT autograd with eager kernels; inductor's C++
compile costs ~20 s per graph on a cold cache), and logs its first step's time; pipeline parallelism and an
unknown backend are refused at validation."""

from __future__ import annotations

import pytest
import torch

from conftest import losses_by_step, read_metrics
from e2e import GPT_COMMON, ZOO_EQUAL
from pretrain.core.errors import ConfigError
from pretrain.models import TokenizerInfo, get_family
from pretrain.models.compile import compile_blocks, compile_problem, transformer_blocks

PRESETS = {"gpt": "gpt/tiny", "llama": "gpt/llama_tiny", "bert": "bert/tiny", "t5": "t5/tiny"}
MODES = {"none": [], "full": ["model.activation_checkpointing=true"],
         "selective": ["model.activation_checkpointing=true", "model.recompute_granularity=selective"]}


def _block_inputs(model, family) -> list[tuple]:
    """(block, its positional inputs) for the first block of each block list, from one eager forward."""
    seen = []
    for path in family.recompute.layers:
        block = model.get_submodule(path)[0]
        block.register_forward_pre_hook(lambda m, args, seen=seen: seen.append((m, args)) if len(seen) < 9 else None)
    x = torch.randint(5, 900, (2, 16))
    if family.name == "t5":
        model(input_ids=x, labels=x[:, :8], attention_mask=torch.ones_like(x))
    elif family.name == "bert":
        model(input_ids=x, attention_mask=torch.ones_like(x), labels=x)
    else:
        model(input_ids=x, labels=x)
    return [(m, args) for m, args in seen if any(m is model.get_submodule(p)[0] for p in family.recompute.layers)]


# every preset without recomputation; with recomputation (one checkpoint region traced into the block's graph) the
# LLaMA block (rotary, GQA) under full, the T5 blocks (cross-attention, position bias) under selective
CASES = [*((p, "none") for p in PRESETS), ("llama", "full"), ("t5", "selective")]


@pytest.mark.parametrize("preset,mode", CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_the_blocks_of_the_default_presets_have_no_graph_break(compose_cfg, preset, mode):
    cfg = compose_cfg(f"model={PRESETS[preset]}", *MODES[mode])
    family = get_family(cfg.model.family)
    args = family.resolve_args(cfg.model, TokenizerInfo(None, 1000, 0))
    torch.manual_seed(0)
    model = family.build(args).train()
    inputs = _block_inputs(model, family)
    assert len(inputs) == len(family.recompute.layers)  # T5: an encoder and a decoder block
    for block, block_args in inputs:
        torch._dynamo.reset()
        explained = torch._dynamo.explain(block)(*block_args)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


def test_compile_blocks_compiles_each_block_in_place_keeping_names(compose_cfg):
    cfg = compose_cfg("model=t5/tiny", "trainer.compile=true", "trainer.compile_backend=eager")
    family = get_family("t5")
    args = family.resolve_args(cfg.model, TokenizerInfo(None, 1000, 0))
    model = family.build(args)
    names = list(model.state_dict())
    assert compile_blocks(model, cfg) == args.num_layers + args.num_decoder_layers
    assert all(b._compiled_call_impl is not None for b in transformer_blocks(model, family))
    assert list(model.state_dict()) == names  # checkpoints and export see the same names
    assert compile_blocks(model, compose_cfg("model=t5/tiny")) == 0  # trainer.compile=false: nothing


def test_pipeline_parallelism_and_an_unknown_backend_are_refused(compose_cfg):
    from pretrain.validation import validate_values

    with pytest.raises(ConfigError, match="trainer.compile=true is not supported with pipeline parallelism"):
        validate_values(compose_cfg("trainer.compile=true", "parallel.pipeline_model_parallel_size=2"))
    assert "expected one of inductor, aot_eager, eager" in compile_problem(
        compose_cfg("trainer.compile=true", "trainer.compile_backend=tvm"))
    assert compile_problem(compose_cfg("trainer.compile_backend=tvm")) is None  # only read with compile on


# The eager references: the e2e table's one-process runs (30 steps). The compiled runs stop at step 10 on the same
# 30-step LR curve (optim.sched.decay_steps=30), so their steps are the references' first 10.
COMPILED = {
    "gpt_one_process": (*GPT_COMMON, "parallel=zero0", "trainer.compile_backend=inductor"),
    "bert_one_process": ("experiment=bert_tiny", *ZOO_EQUAL, "parallel=zero0", "trainer.compile_backend=aot_eager"),
    "t5_one_process": ("experiment=t5_tiny", *ZOO_EQUAL, "parallel=zero0", "trainer.compile_backend=aot_eager"),
}


@pytest.mark.parametrize("reference", COMPILED)
def test_compiled_losses_follow_eager_for_10_steps(reference, e2e_run, compose_cfg, tmp_path, monkeypatch,
                                                   cache_dir):
    from pretrain.trainer import Trainer

    eager = losses_by_step(e2e_run(reference).dir)
    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_cfg(*COMPILED[reference], "trainer.compile=true", "trainer.max_steps=10",
                      "optim.sched.decay_steps=30", "trainer.eval_interval=0", "checkpoint.save_at_end=false",
                      f"run_dir={tmp_path}")
    Trainer(cfg).fit()
    records = read_metrics(tmp_path)
    compiled = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(compiled) == list(range(1, 11))
    for step, loss in compiled.items():
        assert loss == pytest.approx(eager[step], abs=1e-4), (step, loss, eager[step])
    first = [r for r in records if "compile_first_step_s" in r]
    assert [r["step"] for r in first] == [1] and first[0]["compile_first_step_s"] > 0
    log = (tmp_path / "train.log").read_text()
    assert "torch.compile: the first step took" in log and "transformer blocks" in log


def test_the_gpu_benchmark_composes_every_configuration_on_cpu(capsys):
    from pretrain.bench import gpu

    res = gpu.main(["--dry-run"])
    assert list(res) == list(gpu.configurations()) and len(res) == 8  # 2 models x 2 engines x compile off/on
    assert gpu.accelerate_missing() is None  # the accelerate engine is in the tree: nothing is skipped
    for name, r in res.items():
        model, engine, mode = name.split("/")
        assert r["engine"] == engine.split("_")[0] and r["compile"] is (mode == "compiled")
        assert r["precision"] == "bf16" and r["micro_batch"] == 4 and r["tokens_per_step"] == 4 * 2048
    out = capsys.readouterr().out
    assert "peak for NVIDIA H200: 989 TFLOP/s (H200 dense bf16, pretrain.planner.devices['h200'])" in out

