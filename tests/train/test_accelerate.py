"""The accelerate engine (docs/engines.md): its config group and refusals, the FSDP2 plan, DCP's metadata read
without running pickled code, and in-process one-process runs: exact resume, DeepSpeed -> accelerate, export.
The two-process runs against DeepSpeed are in test_accelerate_e2e.py."""

from __future__ import annotations

import json
import math
import pickle
import re

import pytest
import torch

from conftest import TINY, read_metrics, structured_cfg
from pretrain.core.errors import CheckpointError
from pretrain.engines import ENGINES
from pretrain.engines.accelerate import AccelerateEngine, fsdp_plugin, mesh_shape, safe_reader, transformer_layers
from pretrain.validation import engine_problems


# ------------------------------------------------------------------------------------------------- config
def test_the_engine_group_selects_the_engine_and_its_keys(compose_cfg):
    assert ENGINES["accelerate"] is AccelerateEngine
    assert compose_cfg("run_dir=/tmp/x").engine.name == "deepspeed"  # the default stays DeepSpeed
    cfg = compose_cfg("run_dir=/tmp/x", "engine=accelerate", "engine.accelerate.strategy=fsdp",
                      "engine.accelerate.sharding=hybrid")
    a = cfg.engine.accelerate
    assert (cfg.engine.name, a.strategy.value, a.sharding.value) == ("accelerate", "fsdp", "hybrid")
    assert engine_problems(cfg) == []
    short = compose_cfg("run_dir=/tmp/x", "engine=fsdp2").engine  # the shorthand the GPU benchmark uses
    assert (short.name, short.accelerate.strategy.value, short.accelerate.sharding.value) == (
        "accelerate", "fsdp", "full")
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="sharding"):  # typed: a wrong value fails at compose time
        compose_cfg("run_dir=/tmp/x", "engine=accelerate", "engine.accelerate.sharding=zero3")


@pytest.mark.parametrize("over, expected", [
    ({"parallel__tensor_model_parallel_size": 2}, "size=2: tensor parallelism needs engine=deepspeed"),
    ({"parallel__pipeline_model_parallel_size": 2}, "pipeline parallelism needs engine=deepspeed"),
    ({"parallel__expert_model_parallel_size": 2}, "expert parallelism needs engine=deepspeed"),
    ({"parallel__context_parallel_size": 2}, "context parallelism (Ulysses) needs engine=deepspeed"),
    ({"parallel__zero_stage": 3}, "parallel.zero_stage=3 is DeepSpeed's; under engine=accelerate shard with "
                                  "engine.accelerate.strategy=fsdp"),
    ({"parallel__zero_stage": 3, "parallel__offload_param": True},
     "CPU offload needs engine=deepspeed (parallel=zero3_offload)"),
    ({"deepspeed_extra": {"zero_optimization": {"stage": 2}}}, "deepspeed_extra is DeepSpeed's"),
    ({"engine__accelerate__sharding": "hybrid"}, "sharding=hybrid needs engine.accelerate.strategy=fsdp"),
    ({"engine__accelerate__strategy": "fsdp", "engine__accelerate__hybrid_shard_size": 2},
     "hybrid_shard_size=2 needs engine.accelerate.sharding=hybrid"),
    ({"engine__name": "megatron"}, "engine.name='megatron'; expected deepspeed or accelerate"),
])
def test_keys_the_accelerate_engine_does_not_support_are_refused_with_what_to_use(over, expected):
    cfg = structured_cfg(**{"engine__name": "accelerate", **over})
    problems = engine_problems(cfg)
    assert any(expected in p for p in problems), problems
    # and the validation that Trainer.plan runs reports it, naming the key
    from pretrain.core.errors import ConfigError
    from pretrain.validation import validate_values

    with pytest.raises(ConfigError, match="invalid config: .*" + re.escape(expected)):
        validate_values(cfg)


def test_accelerate_keys_are_refused_under_deepspeed_and_zero1_is_accepted_under_accelerate():
    problems = engine_problems(structured_cfg(engine__accelerate__strategy="fsdp"))
    assert problems == ["engine.accelerate.strategy applies to engine=accelerate only, this run uses engine=deepspeed "
                        "(ZeRO: parallel=zero0..zero3); add engine=accelerate or drop the key"]
    assert engine_problems(structured_cfg(engine__name="accelerate", parallel__zero_stage=1)) == []  # the default
    # ... and the set-up line says what runs instead of "ZeRO-1"
    ddp = AccelerateEngine.__new__(AccelerateEngine)
    ddp.mesh = None
    assert ddp.describe(None) == "accelerate DDP (replicated; parallel.zero_stage unused)"


def test_a_schedule_saved_with_other_groups_fits_the_accelerate_optimizer(tmp_path):
    """The layout-free copy's schedule holds one entry per optimizer group of the run that saved it (DeepSpeed's
    MoE runs split the experts into groups of their own); loaded into accelerate's optimizer, every group of
    ours follows it, none is left at its initial LR (a plain load would leave the groups past the saved count)."""
    from pretrain.parallel import reshard

    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    for saved_groups, our_groups in (([params], [params[:1], params[1:]]), ([params[:1], params[1:]], [params])):
        saved_opt = torch.optim.AdamW([{"params": g} for g in saved_groups], lr=1e-3)
        saved = torch.optim.lr_scheduler.LambdaLR(saved_opt, lambda s: 0.5 ** s)
        for _ in range(3):
            saved_opt.step()
            saved.step()
        e = AccelerateEngine.__new__(AccelerateEngine)
        e.optimizer = torch.optim.AdamW([{"params": g} for g in our_groups], lr=1e-3)
        e.scheduler = torch.optim.lr_scheduler.LambdaLR(e.optimizer, lambda s: 0.5 ** s)
        e._restore_schedule(reshard._fit_groups(saved.state_dict(), len(e.optimizer.param_groups), tmp_path))
        e.optimizer.step()
        e.scheduler.step()
        assert e.scheduler.last_epoch == 4
        assert [g["lr"] for g in e.optimizer.param_groups] == [pytest.approx(1e-3 / 16)] * len(our_groups)


def test_fsdp2_meshes_and_units(monkeypatch):
    def cfg(sharding, size=None):
        return structured_cfg(engine__name="accelerate", engine__accelerate__strategy="fsdp",
                              engine__accelerate__sharding=sharding, engine__accelerate__hybrid_shard_size=size)

    assert mesh_shape(cfg("full"), 8) == ((8,), ("dp_shard",))
    assert mesh_shape(cfg("none"), 8) == ((8, 1), ("dp_replicate", "dp_shard"))
    assert mesh_shape(cfg("hybrid", 4), 8) == ((2, 4), ("dp_replicate", "dp_shard"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # hybrid by default: shard within a node, replicate across nodes
    assert mesh_shape(cfg("hybrid"), 8) == ((4, 2), ("dp_replicate", "dp_shard"))
    plugin = fsdp_plugin(structured_cfg(engine__name="accelerate", engine__accelerate__strategy="fsdp",
                                        trainer__precision="bf16", engine__accelerate__reshard_after_forward=False))
    assert (plugin.fsdp_version, plugin.reshard_after_forward) == (2, False)
    policy = plugin.mixed_precision_policy  # compute in bf16, reduce gradients in fp32
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    monkeypatch.setenv("WORLD_SIZE", "6")
    assert any("hybrid_shard_size=4 must divide the 6 processes" in p for p in engine_problems(cfg("hybrid", 4)))

    from pretrain.models.bert.model import BERT, BERTArgs
    from pretrain.models.gpt.model import GPT, GPTArgs
    from pretrain.models.t5.model import T5, T5Args

    small = dict(vocab_size=64, num_layers=2, hidden_size=16, num_attention_heads=2, ffn_hidden_size=32, seq_length=8)
    assert len(transformer_layers(GPT(GPTArgs(**small, num_key_value_heads=2)))) == 2
    assert len(transformer_layers(BERT(BERTArgs(**small)))) == 2
    t5 = T5(T5Args(**small, num_decoder_layers=3, kv_channels=8, target_length=4))
    assert len(transformer_layers(t5)) == 5  # encoder and decoder layers, each its own unit


def test_dcp_metadata_with_pickled_code_is_refused_unrun(tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "pwned"),))

    (tmp_path / "dcp").mkdir()
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match=r"refusing to load .*\.metadata.*it would import builtins\.exec"):
        safe_reader(tmp_path / "dcp").read_metadata()
    assert not (tmp_path / "pwned").exists()
    # nor through DCP's own modules: a function of theirs, or a global they import, named by a dotted path
    for module, name in [("torch.distributed.checkpoint.filesystem", "os.system"),
                         ("torch.distributed.checkpoint.format_utils", "torch_save_to_dcp")]:
        payload = (b"\x80\x04c" + module.encode() + b"\n" + name.encode() + b"\n" + b"X\x04\x00\x00\x00true\x85R.")
        (tmp_path / "dcp" / ".metadata").write_bytes(payload)
        with pytest.raises(CheckpointError, match=r"refusing to load .*\.metadata.*it would import"):
            safe_reader(tmp_path / "dcp").read_metadata()


def test_check_layout_sends_another_engines_checkpoint_through_the_layout_free_copy(tmp_path):
    from pretrain import checkpoint as ckpt

    state = {"engine": "accelerate", "world_size": 2, "zero_stage": None}
    with pytest.raises(CheckpointError, match="written by engine=accelerate, this run uses engine=deepspeed"):
        ckpt.check_layout(tmp_path, state, 2, 1)
    (tmp_path / "universal").mkdir()
    (tmp_path / "universal" / "pp00_tp00.pt").write_bytes(b"x")
    assert ckpt.check_layout(tmp_path, state, 2, 1) is False
    assert ckpt.check_layout(tmp_path, state, 4, 1, engine="accelerate") is True  # DCP reshards by itself
    assert ckpt.check_layout(tmp_path, {"world_size": 2, "zero_stage": 1}, 2, 1, engine="accelerate") is False


# ---------------------------------------------------------------------------------- in-process, one process
def _fit(compose_cfg, run_dir, *overrides):
    from pretrain.trainer import Trainer

    return Trainer(compose_cfg(*TINY, "trainer.global_batch_size=8", f"run_dir={run_dir}", *overrides)).fit()


def _steps(run_dir):
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["batch_checksum"]) for r in read_metrics(run_dir)
            if "loss" in r]


@pytest.fixture
def in_process(monkeypatch, cache_dir):
    """A one-process run in this process, on one thread as the suite's training subprocesses (OMP_NUM_THREADS=1):
    on two shared cores, more threads make a tiny model's steps several times slower."""
    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fsdp2_resume_is_exact_through_a_guard_skip_and_exports_from_its_dcp_shards(tmp_path, compose_cfg,
                                                                                    in_process):
    """FSDP2 in one process, accumulating 2 micro-batches, dropout on, step 4's loss made NaN: 5 steps straight and
    2 + resumed to 5 give bitwise the same losses, gradient norms, LRs and batches (model, Adam state, schedule and
    RNG from the DCP checkpoint). The guard's gate skips step 4 inside the optimizer step: neither Adam nor the LR
    schedule advance. Without the layout-free copy, export reads the DCP shards; the HF model computes our loss."""
    common = ("engine=fsdp2", "model.hidden_dropout=0.1", "model.attention_dropout=0.1", "optim.sched.decay_steps=6",
              "checkpoint.universal=false", "trainer.guard.inject={nan_at: [4]}")
    _fit(compose_cfg, tmp_path / "straight", *common, "trainer.max_steps=5")
    _fit(compose_cfg, tmp_path / "split", *common, "trainer.max_steps=2")
    _fit(compose_cfg, tmp_path / "split", *common, "trainer.max_steps=5")
    straight = _steps(tmp_path / "straight")
    assert [s[0] for s in straight] == [1, 2, 3, 4, 5]
    assert "x dp 1, accelerate FSDP2 sharding=full (parallel.zero_stage unused) |" in (
        tmp_path / "straight" / "train.log").read_text()
    assert _steps(tmp_path / "split") == straight  # exact equality
    by_step = {r["step"]: r for r in read_metrics(tmp_path / "split") if "loss" in r}
    assert by_step[4]["guard_action"] == "skip" and by_step[4]["loss"] is None
    assert by_step[5]["lr"] == by_step[4]["lr"] != by_step[3]["lr"]  # the schedule held at the skip
    tag = tmp_path / "split" / "checkpoints" / "step_000005"
    assert json.loads((tag / "accelerate_state.json").read_text())["scheduler"]["last_epoch"] == 4
    assert (tag / "COMPLETE").exists() and not (tag / "universal").exists()
    listed = json.loads((tag / "files.json").read_text())["files"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "accelerate_state.json", "rng_state_rank0.pt"} <= set(listed)
    state = json.loads((tag / "trainer_state.json").read_text())
    assert (state["engine"], state["accelerate"]["strategy"], state["zero_stage"]) == ("accelerate", "fsdp", None)

    import transformers

    from pretrain import export

    out = export.export(tag, tmp_path / "hf")
    _, args, ours = export.load_model(export.find_checkpoint(tag))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    seq = torch.randint(0, args.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    x, y = seq[:, :-1], seq[:, 1:]
    with torch.no_grad():
        logits = theirs(x).logits
        loss_ours = ours(x, y).item()
    loss_hf = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()
    assert loss_hf == pytest.approx(loss_ours, rel=1e-4)


def test_a_run_continues_from_deepspeed_to_accelerate_and_back(tmp_path, compose_cfg, in_process, e2e_run):
    """DeepSpeed trains 2 steps; accelerate (DDP, here one process) resumes its checkpoint through the layout-free
    copy to step 4; DeepSpeed resumes that one to 6: every step is one process's uninterrupted reference run
    (gpt_one_process) within 1e-5, on its batches. Both export sources of the accelerate checkpoint (its layout-free
    copy, its DCP shards) hold the same weights."""
    from e2e import GPT_COMMON, GPT_STEPS, assert_same_steps, train_records
    from pretrain import export
    from pretrain.engines.accelerate import dcp_model_weights
    from pretrain.parallel import reshard

    common = (*GPT_COMMON[len(TINY):], f"optim.sched.decay_steps={GPT_STEPS}", "parallel=zero0")
    _fit(compose_cfg, tmp_path, *common, "trainer.max_steps=2")
    _fit(compose_cfg, tmp_path, *common, "engine=accelerate", "trainer.max_steps=4")
    _fit(compose_cfg, tmp_path, *common, "trainer.max_steps=6")
    ref = train_records(e2e_run("gpt_one_process").dir)[:6]
    worst = assert_same_steps(ref, [r for r in read_metrics(tmp_path) if "loss" in r], 1e-5, 1e-3)
    print(f"deepspeed -> accelerate -> deepspeed vs one process: max relative loss difference {worst:.3g}")
    log = (tmp_path / "train.log").read_text()
    assert "written by engine=deepspeed, this run uses engine=accelerate" in log
    assert "written by engine=accelerate, this run uses engine=deepspeed" in log
    tag = tmp_path / "checkpoints" / "step_000004"
    universal = export.consolidated_state_dict(export.find_checkpoint(tag))  # what export reads: universal/
    assert universal.keys() == reshard.full_state_dict(tag).keys()
    from_dcp = dcp_model_weights(tag, universal)
    assert universal.keys() == from_dcp.keys() and all(torch.equal(universal[k], from_dcp[k]) for k in universal)


def test_fp16_loss_scaler_skips_overflow_steps_on_every_rank_alike_and_the_gate_decides_the_others():
    """The optimizer step of the engine with a GradScaler (fp16 runs on CUDA; the scaler's logic is the same on
    CPU): an overflow (a non-finite global norm) skips the update and halves the scale without asking the gate,
    as DeepSpeed's own overflow skip does; a finite step asks the gate, and a gate veto holds Adam and the LR."""
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    e = AccelerateEngine.__new__(AccelerateEngine)
    e.optimizer, e.params, e.clip, e.pending_loss = opt, list(model.parameters()), 1.0, None
    e.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    e.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1000)
    asked = []
    e._gate, e._skip = (lambda loss, norm: asked.append(norm) or veto[0]), None
    veto = [False]

    def step(grad_value: float) -> None:
        e.begin_step()
        loss = e.scaler.scale(model(torch.ones(1, 4)).sum())
        loss.backward()
        model.weight.grad.fill_(grad_value)
        e._optimizer_step()

    before = model.weight.detach().clone()
    step(float("inf"))
    assert not e.update_applied() and not e.gate_consulted() and asked == []
    assert e.scaler.get_scale() == 2.0**15 and e.scheduler.last_epoch == 0 and torch.equal(model.weight, before)
    veto[0] = True
    step(1.0)
    assert e.gate_consulted() and not e.update_applied() and len(asked) == 1 and math.isfinite(asked[0])
    assert e.scheduler.last_epoch == 0 and torch.equal(model.weight, before) and not opt.state
    veto[0] = False
    step(1.0)
    assert e.update_applied() and e.scheduler.last_epoch == 1 and not torch.equal(model.weight, before)
    assert e.loss_scale() == 2.0**15 and e.grad_norm() == pytest.approx(asked[-1])
