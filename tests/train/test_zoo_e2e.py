"""BERT and T5 end to end, as users run them: ``torchrun`` with 2 CPU processes on the built-in sample data
(WordPiece / Unigram variants), every ZeRO stage across the tests, loss clearly falling, exact resume, export
of the checkpoint to a Hugging Face directory that computes our logits, and ``model.init_from`` of it. The
data-parallel runs match one process step for step (the runs are in the table of tests/e2e.py; the one-process
references are shared with test_parallel_equality.py, which compares tensor parallelism with them)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import losses_by_step, read_metrics, run_train
from e2e import GRAD_NORM_REL, ZOO_COMMON, ZOO_RESUME, ZOO_STEPS, assert_same_steps, train_records

pytestmark = pytest.mark.slow


def exported_logits_match(run_dir, out) -> None:
    """Export the run's latest checkpoint; the transformers model must compute our model's logits."""
    import transformers

    from pretrain import export

    export.export(run_dir, out)
    source = export.find_checkpoint(run_dir)
    family, args, ours = export.load_model(source)
    arch = {"bert": "BertForMaskedLM", "t5": "T5ForConditionalGeneration"}[family.name]
    theirs = getattr(transformers, arch).from_pretrained(out, local_files_only=True).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (2, args.seq_length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, args.seq_length // 2 :] = 0
    with torch.no_grad():
        if family.name == "bert":
            a, b = ours(ids, attention_mask=mask), theirs(input_ids=ids, attention_mask=mask).logits
        else:
            dec = torch.randint(10, 1000, (2, args.target_length), generator=g)
            a = ours(ids, attention_mask=mask, decoder_input_ids=dec)
            b = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()


@pytest.mark.parametrize("experiment,zero", [("bert_tiny", 2), ("t5_tiny", 3)])
def test_trains_with_torchrun_exports_and_reimports(tmp_path, train_env, e2e_run, experiment, zero):
    """2 data-parallel ranks (ZeRO-2 / ZeRO-3) train as one process accumulating the same 2 micro-batches does:
    every step's loss within 1e-5 relative, on the same batches."""
    family = experiment.split("_")[0]
    run_dir = e2e_run(f"{family}_dp2_zero{zero}").dir
    # BERT saves DeepSpeed's files only (export consolidates its ZeRO-2 shards with zero_to_fp32), T5 also the
    # layout-free copy (export reads that)
    universal = "false" if experiment == "bert_tiny" else "true"
    losses = losses_by_step(run_dir)
    assert sorted(losses) == list(range(1, ZOO_STEPS + 1))
    first, last = losses[1], sum(losses[s] for s in range(26, 31)) / 5
    assert last < first - 1.0, (first, last)  # ~ln(4096) (+ ln 2 for SOP) at the start
    ref = train_records(e2e_run(f"{family}_one_process").dir)
    worst = assert_same_steps(ref, train_records(run_dir), 1e-5, GRAD_NORM_REL)
    print(f"{experiment} dp2 ZeRO-{zero}: max relative loss difference to one process {worst:.3g}")
    rec = read_metrics(run_dir)[-1]
    seq = 64 if experiment == "bert_tiny" else 64 + 14  # T5: inputs + targets (14 for 64 inputs)
    assert rec["consumed_tokens"] == 30 * 8 * seq and rec["mfu"] > 0
    assert json.loads((run_dir / "deepspeed.json").read_text())["gradient_accumulation_steps"] == 1
    out = tmp_path / "hf"
    assert (run_dir / "checkpoints" / f"step_{ZOO_STEPS:06d}" / "universal").is_dir() == (universal == "true")
    exported_logits_match(run_dir, out)  # consolidated from the ZeRO-2 shards / the layout-free copy

    if experiment == "bert_tiny":  # continue pretraining from the exported directory (one process)
        again = tmp_path / "again"
        run_train([f"experiment={experiment}", *ZOO_COMMON, f"run_dir={again}", "trainer.max_steps=1",
                   f"model.init_from={out}", "optim.sched.warmup_steps=0"], train_env)
        assert losses_by_step(again)[1] < first - 0.8  # starts where the trained model was, not from scratch


@pytest.mark.parametrize("experiment,zero", list(ZOO_RESUME.items()))  # (bert_tiny, 1), (t5_tiny, 0)
def test_resume_is_exact_and_exports(tmp_path, e2e_run, experiment, zero):
    """6 steps straight vs 3, stop, resume to 6 (tests/e2e.py ``ZOO_RESUME``: dropout on, so the RNG streams must
    resume too): the same losses bitwise, on the same batches."""
    family = experiment.split("_")[0]
    straight, resumed = e2e_run(f"{family}_resume_straight").dir, e2e_run(f"{family}_resume_split")
    split, out = resumed.dir, resumed.outputs[-1]
    assert yaml.safe_load((split / "config.yaml").read_text())["parallel"]["zero_stage"] == zero
    assert "resumed from" in out.stdout and "at step 3" in out.stdout
    key = lambda d, k: [(r["step"], r[k]) for r in read_metrics(d) if k in r]  # noqa: E731
    assert key(straight, "loss") == key(split, "loss")  # bitwise, every step
    assert key(straight, "batch_checksum") == key(split, "batch_checksum")
    exported_logits_match(split, tmp_path / "hf")  # from a ZeRO-1 / ZeRO-0 checkpoint
