"""The model-family example of docs/extending.md (``tests/extending/bow``), registered for the test only: it
trains and resumes through the Trainer, splits over two tensor ranks by its declared plan with the unsharded
model's loss and gradients, and what it leaves out (pipeline stages, sequence parallelism, a Hugging Face
adapter) is refused naming the key."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.core.errors import CheckpointError, ConfigError
from tests.conftest import TINY
from tests.extending.bow import FAMILY, BowArgs

REPO = Path(__file__).resolve().parents[2]
BOW = [*TINY, "model.family=bow", "model.name=bow-tiny"]


@pytest.fixture
def bow(monkeypatch):
    """The family registered as its line in FAMILY_PACKAGES would register it (the product's registry unchanged)."""
    import pretrain.models

    monkeypatch.setitem(pretrain.models.FAMILIES, FAMILY.name, FAMILY)
    return FAMILY


def test_the_family_trains_resumes_and_its_checkpoint_loads_back(bow, tmp_path, compose_cfg, monkeypatch, cache_dir):
    from pretrain import export
    from pretrain.trainer import Trainer

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_cfg(*BOW, "trainer.max_steps=3", f"run_dir={tmp_path}")
    summary = Trainer(cfg).fit()
    assert summary["steps"] == 3 and summary["stopped"] is None
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    state = json.loads((tmp_path / "checkpoints" / "step_000003" / "trainer_state.json").read_text())
    args = BowArgs(**state["model_args"])
    assert state["family"] == "bow" and args.hidden_size == 64 and args.vocab_size % 64 == 0
    assert len(losses) == 3 and abs(losses[0] - math.log(args.vocab_size)) < 0.1  # a fresh model guesses uniformly
    assert losses[-1] < losses[0]

    # resume: the checkpoint's shape is checked against the family's args, the run goes on from step 3
    summary = Trainer(compose_cfg(*BOW, "trainer.max_steps=4", f"run_dir={tmp_path}")).fit()
    assert summary["steps"] == 4 and summary["steps_this_run"] == 1

    # the family-agnostic checkpoint reader rebuilds a bow model with the saved weights; export is refused
    family, args, model = export.load_model(export.find_checkpoint(tmp_path))
    assert family is bow and type(model).__name__ == "BagOfWords"
    with pytest.raises(CheckpointError, match="model family 'bow' has no Hugging Face export; known: gpt"):
        export.export(tmp_path, tmp_path / "hf")


@pytest.mark.parametrize("override,message", [
    ("parallel.pipeline_model_parallel_size=2",
     r"parallel.pipeline_model_parallel_size=2 is not available for model.family=bow \(the bow example declares no "
     r"pipeline stages\)"),
    ("parallel.sequence_parallel=true",
     r"parallel.sequence_parallel=true is implemented for model.family=gpt only, not bow"),
])
def test_what_the_family_leaves_out_is_refused_before_any_process_group(bow, compose_cfg, override, message):
    from pretrain.parallel.validate import validate_parallel

    layout = validate_parallel(compose_cfg(*BOW, "parallel.tensor_model_parallel_size=2"), world_size=2)
    assert layout.tp == 2  # tensor parallelism: the family has a plan
    tp = [] if "pipeline" in override else ["parallel.tensor_model_parallel_size=2"]
    with pytest.raises(ConfigError, match=message):
        validate_parallel(compose_cfg(*BOW, *tp, override), world_size=2)


def test_a_setting_the_family_cannot_honour_is_refused_naming_the_key(bow, compose_cfg):
    from pretrain.models import TokenizerInfo, get_family

    cfg = compose_cfg(*BOW, "model.activation_checkpointing=true", "model.recompute_granularity=selective")
    with pytest.raises(ConfigError, match="model.recompute_granularity=selective recomputes attention"):
        get_family("bow").resolve_args(cfg.model, TokenizerInfo(None, 1000, 0))
    full = get_family("bow").build(get_family("bow").resolve_args(
        compose_cfg(*BOW, "model.activation_checkpointing=true").model, TokenizerInfo(None, 1000, 0)))
    assert type(vars(full.layers[0])["forward"]).__name__ == "Checkpointed"  # applied from outside the model


def _tensor_parallel(rank: int, world: int) -> dict:
    """On each of two ranks: the dense model and its tp=2 split, same seed, same batch."""
    import pretrain.models
    from pretrain.parallel.parallelize import parallelize
    from pretrain.parallel.tensor import gather_tensor_parallel, is_tensor_parallel

    pretrain.models.FAMILIES[FAMILY.name] = FAMILY  # a spawned process: the test's monkeypatch is not here
    group = torch.distributed.group.WORLD  # both ranks: one tensor-parallel group
    args = BowArgs(vocab_size=96, num_layers=2, hidden_size=32, ffn_hidden_size=64, seq_length=16)
    torch.manual_seed(0)
    dense = FAMILY.build(args)
    torch.manual_seed(0)
    split = parallelize(FAMILY.build(args), group)
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    loss_dense, loss_split = dense(ids, ids), split(ids, ids)
    loss_dense.backward()
    loss_split.backward()
    ref = dict(dense.named_parameters())
    grad_error = max(float((gather_tensor_parallel(p.grad, p.partition_dim, group) if is_tensor_parallel(p)
                            else p.grad).sub(ref[n].grad).abs().max()) for n, p in split.named_parameters())
    return {"loss": (float(loss_dense), float(loss_split)), "grad_error": grad_error,
            "local": sum(p.numel() for p in split.parameters()), "dense": sum(p.numel() for p in dense.parameters())}


def test_the_declared_plan_splits_the_model_over_two_tensor_ranks(bow):
    from tests.tp_harness import run_ranks

    for r in run_ranks(_tensor_parallel, 2):
        dense, split = r["loss"]
        assert abs(split - dense) < 1e-5 * dense and r["grad_error"] < 1e-6
        assert r["local"] < 0.6 * r["dense"]  # each rank holds about half


def test_the_family_module_imports_no_torch():
    code = "import sys, tests.extending.bow, pretrain.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_a_family_without_a_tensor_parallel_plan_is_refused_at_tp2_not_trained_with_a_wrong_loss(
        monkeypatch, compose_cfg):
    """Without a plan, parallelize would still swap in the vocabulary-parallel loss (off by ln(tp)): refused in
    the layout check before any process group, and by parallelize itself."""
    import pretrain.models
    from pretrain.parallel.parallelize import parallelize
    from pretrain.parallel.validate import validate_parallel

    planless = type("PlanlessBow", (type(FAMILY),), {"tp_plan": {}})()
    monkeypatch.setitem(pretrain.models.FAMILIES, FAMILY.name, planless)
    assert validate_parallel(compose_cfg(*BOW), world_size=2).dp == 2  # data parallelism stays available
    with pytest.raises(ConfigError, match=r"parallel.tensor_model_parallel_size=2 is not available for "
                                          r"model.family=bow \(it declares no tensor-parallel plan\)"):
        validate_parallel(compose_cfg(*BOW, "parallel.tensor_model_parallel_size=2"), world_size=2)
    with pytest.raises(ConfigError, match="use data parallelism for it"):
        validate_parallel(compose_cfg(*BOW, "parallel.pipeline_model_parallel_size=2"), world_size=2)

    class TwoRanks:  # parallelize asks the group's size first; it must refuse before any collective
        pass

    monkeypatch.setattr("pretrain.parallel.parallelize.world_size", lambda group: 2)
    from pretrain.models import TokenizerInfo

    args = planless.resolve_args(compose_cfg(*BOW).model, TokenizerInfo(None, 256, 0))
    with pytest.raises(ConfigError, match="declares no tensor-parallel plan"):
        parallelize(planless.build(args), TwoRanks())
