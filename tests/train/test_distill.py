"""Knowledge distillation (objective=distill, pretrain/distill.py): the soft loss is the formula, the hooked student's
loss is alpha * hard + (1 - alpha) * soft (+ the cosine part for BERT), the teacher gets no gradient, teachers load
from a Hugging Face directory and from our checkpoints, mismatched tokenizers are refused before any step, and a
tiny GPT distilled from a larger one ends below the same student trained alone (the e2e runs gpt_kd_teacher,
gpt_kd_student and gpt_one_process of tests/e2e.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import read_metrics
from pretrain.core.errors import CheckpointError, ConfigError, DataError
from pretrain.distill import Distiller, cosine_loss, plan_distill, soft_loss
from pretrain.distill_teacher import TeacherSource, check_tokenizers, find_teacher, load_teacher
from pretrain.models import get_family
from pretrain.models.bert.config import BERTArgs
from pretrain.models.gpt.config import GPTArgs


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny models' ops are microseconds: a second intra-op thread only waits for the other (on 2 busy cores a
    tiny BERT forward takes 0.9 s with 2 threads, 1 ms with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gpt(hidden: int = 32, layers: int = 2, vocab: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    args = GPTArgs(vocab_size=vocab, num_layers=layers, hidden_size=hidden, num_attention_heads=4,
                   num_key_value_heads=4, ffn_hidden_size=4 * hidden, seq_length=16)
    return args, get_family("gpt").build(args)


def _source(family: str, args) -> TeacherSource:
    return TeacherSource("checkpoint", Path("/teacher"), family, args, None)


def test_soft_loss_is_t_squared_times_the_kl_of_the_softened_distributions():
    """By hand, in float64 loops: T^2 * mean_i sum_v p_t(v) * (log p_t(v) - log p_s(v)), p = softmax(z / T)."""
    torch.manual_seed(0)
    s, t = torch.randn(5, 7, dtype=torch.float64), 3 * torch.randn(5, 7, dtype=torch.float64)
    for temp in (1.0, 2.0, 4.0):
        total = 0.0
        for i in range(5):
            zs = [math.exp(x / temp) for x in s[i].tolist()]
            zt = [math.exp(x / temp) for x in t[i].tolist()]
            ps, pt = [z / sum(zs) for z in zs], [z / sum(zt) for z in zt]
            total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
        assert soft_loss(s, t, temp).item() == pytest.approx(temp**2 * total / 5, rel=1e-6)
    assert soft_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # a student that is its teacher
    assert soft_loss(s[:0], t[:0], 2.0).item() == 0.0  # a micro-batch without a labelled position


def test_gpt_student_loss_is_alpha_hard_plus_soft_and_the_teacher_gets_no_gradient():
    t_args, teacher = _gpt(hidden=48, layers=3, seed=1)
    args, student = _gpt(seed=2)
    reference = _gpt(seed=2)[1]  # the same student, not hooked
    teacher.eval().requires_grad_(False)
    d = Distiller(_source("gpt", t_args), temperature=2.0, alpha=0.3)
    d.attach(student, "cpu", teacher=teacher)
    ids = torch.randint(0, 64, (2, 16))
    labels = torch.randint(0, 64, (2, 16))
    labels[0, :3] = -100  # ignored positions count in neither part
    student.train()
    loss = student(input_ids=ids, labels=labels)
    hard = reference(input_ids=ids, labels=labels)
    keep = labels.reshape(-1) != -100
    soft = soft_loss(reference(input_ids=ids).reshape(-1, 64)[keep], teacher(input_ids=ids).reshape(-1, 64)[keep], 2.0)
    assert loss.item() == pytest.approx(0.3 * hard.item() + 0.7 * soft.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    (soft_sum, hard_sum, cos_sum), n = d.take_parts()
    assert n == 1 and soft_sum == pytest.approx(soft.item(), rel=1e-6) and hard_sum == pytest.approx(hard.item())
    assert d.take_parts()[1] == 0  # reset
    # eval mode (the Evaluator): the plain hard loss, and the teacher does not run
    student.eval()
    assert student(input_ids=ids, labels=labels).item() == pytest.approx(hard.item(), rel=1e-6)
    assert d.take_parts()[1] == 0
    assert [n for n, _ in student.named_parameters()] == [n for n, _ in reference.named_parameters()]


def test_bert_student_with_the_cosine_loss_trains_in_process():
    """DistilBERT's three parts: the MLM hard loss, the soft loss on the masked positions, the cosine loss of the
    last hidden states on the non-padding positions; a few optimizer steps lower the distillation loss."""
    torch.manual_seed(0)
    family = get_family("bert")
    t_args = BERTArgs(vocab_size=64, num_layers=3, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                      seq_length=16, hidden_dropout=0.0, attention_dropout=0.0)
    args = BERTArgs(vocab_size=64, num_layers=1, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                    seq_length=16, hidden_dropout=0.0, attention_dropout=0.0)
    teacher, student = family.build(t_args).eval().requires_grad_(False), family.build(args)
    reference = family.build(args)
    reference.load_state_dict(student.state_dict())
    d = Distiller(_source("bert", t_args), temperature=2.0, alpha=0.5, cosine_weight=1.0)
    d.attach(student, "cpu", teacher=teacher)
    ids = torch.randint(5, 64, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0  # padding
    labels = torch.full((2, 16), -100)
    labels[0, [1, 4]], labels[1, [2, 7, 9]] = ids[0, [1, 4]], ids[1, [2, 7, 9]]
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), labels=labels)
    student.train()
    loss = student(**batch)

    hard = reference(**batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    keep = labels.reshape(-1) != -100
    soft = soft_loss(reference(**inputs).reshape(-1, 64)[keep], teacher(**inputs).reshape(-1, 64)[keep], 2.0)
    h_s, h_t = reference.encode(ids, mask), teacher.encode(ids, mask)
    real = mask.reshape(-1).bool()
    cos = (1 - F.cosine_similarity(h_s.reshape(-1, 32)[real], h_t.reshape(-1, 32)[real], dim=-1)).mean()
    assert cosine_loss(h_s, h_t, mask).item() == pytest.approx(cos.item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * hard.item() + 0.5 * soft.item() + cos.item(), rel=1e-5)
    assert d.take_parts()[0][2] == pytest.approx(cos.item(), rel=1e-5)

    first = None
    for _ in range(3):  # plain gradient steps (torch.optim's first use imports torch._dynamo: seconds)
        student.zero_grad()
        loss = student(**batch)
        first = first if first is not None else loss.item()
        loss.backward()
        with torch.no_grad():
            for p in student.parameters():
                p -= 0.5 * p.grad
    assert student(**batch).item() < first


def _tokenizer(path: Path, vocab: dict[str, int], special: dict[str, int]) -> Path:
    tokens = [{"id": i, "content": c, "special": True} for c, i in special.items()]
    path.write_text(json.dumps({"added_tokens": tokens, "model": {"type": "BPE", "vocab": vocab}}))
    return path


def _hf_gpt_dir(out: Path, args: GPTArgs, model: torch.nn.Module, tokenizer: Path) -> Path:
    """A GPT2LMHeadModel directory as export writes it, without importing transformers: config.json by hand,
    the weights through our adapter's names."""
    from safetensors.torch import save_file

    from pretrain import hf

    out.mkdir()
    (out / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": args.vocab_size,
        "n_layer": args.num_layers, "n_embd": args.hidden_size, "n_head": args.num_attention_heads,
        "n_positions": args.seq_length, "activation_function": "gelu_new"}))
    sd = hf.to_hf("GPT2LMHeadModel", args, model.state_dict())
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"))
    shutil.copy(tokenizer, out / "tokenizer.json")
    return out


def test_a_hugging_face_teacher_loads_through_our_import_in_fp32_or_bf16(tmp_path):
    args, model = _gpt(hidden=32, layers=2)
    tok = _tokenizer(tmp_path / "tok.json", {"a": 0, "b": 1}, {"<|endoftext|>": 2})
    source = find_teacher(str(_hf_gpt_dir(tmp_path / "hf", args, model.eval(), tok)))
    assert (source.kind, source.family, source.args.hidden_size, source.args.num_layers) == ("hf", "gpt", 32, 2)
    check_tokenizers(tok, source)  # the same tokenizer: accepted
    ids = torch.randint(0, 64, (2, 16))
    teacher = load_teacher(source, "fp32", torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        assert torch.equal(teacher(input_ids=ids), model(input_ids=ids))
    half = load_teacher(source, "bf16", torch.device("cpu"))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_mismatched_tokenizers_are_refused_naming_both(tmp_path):
    args, model = _gpt()
    student_tok = _tokenizer(tmp_path / "student.json", {"a": 0, "b": 1, "c": 2}, {"<|endoftext|>": 3})
    other = _tokenizer(tmp_path / "other.json", {"a": 0, "b": 1, "d": 2}, {"<|endoftext|>": 3})
    source = find_teacher(str(_hf_gpt_dir(tmp_path / "hf", args, model, other)))
    with pytest.raises(DataError, match=r"teacher's tokenizer .*hf/tokenizer.json does not match the student's .*"
                                        r"student.json: vocabularies differ .*first: 'c'"):
        check_tokenizers(student_tok, source)
    specials = _tokenizer(tmp_path / "specials.json", {"a": 0, "b": 1, "c": 2}, {"[PAD]": 3})
    with pytest.raises(DataError, match=r"special tokens differ"):
        check_tokenizers(specials, source)
    (tmp_path / "hf" / "tokenizer.json").unlink()
    with pytest.raises(DataError, match=r"teacher \(distill.teacher=.*\) has no tokenizer.json"):
        check_tokenizers(student_tok, find_teacher(str(tmp_path / "hf")))


def test_distill_settings_are_checked_before_anything_is_built(tmp_path):
    from types import SimpleNamespace

    from conftest import structured_cfg

    gpt, plan = get_family("gpt"), SimpleNamespace(tensor_parallel_size=1, pipeline_parallel_size=1)
    args, _ = _gpt()
    tok = SimpleNamespace(path=None, vocab_size=60)
    assert plan_distill(structured_cfg(), gpt, args, tok, plan) is None  # objective=family: nothing to do
    with pytest.raises(ConfigError, match="distill.teacher=x is set but objective=family"):
        plan_distill(structured_cfg(distill__teacher="x"), gpt, args, tok, plan)
    cfg = structured_cfg(objective="distill", distill__temperature=0.0, distill__alpha=1.5)
    with pytest.raises(ConfigError, match=r"distill.temperature=0.0 must be > 0; distill.alpha=1.5 must be between "
                                          r"0 and 1; objective=distill needs distill.teacher"):
        plan_distill(cfg, gpt, args, tok, plan)
    tp2 = SimpleNamespace(tensor_parallel_size=2, pipeline_parallel_size=1)
    with pytest.raises(ConfigError, match=r"parallel.tensor_model_parallel_size=2 .*set both to 1"):
        plan_distill(structured_cfg(objective="distill", distill__teacher="x"), gpt, args, tok, tp2)
    cp2 = SimpleNamespace(tensor_parallel_size=1, pipeline_parallel_size=1, context_parallel_size=2)
    with pytest.raises(ConfigError, match=r"whole sequences, not parallel.context_parallel_size=2"):
        plan_distill(structured_cfg(objective="distill", distill__teacher="x"), gpt, args, tok, cp2)
    with pytest.raises(ConfigError, match=r"distill.teacher=.*nowhere: no such directory"):
        plan_distill(structured_cfg(objective="distill", distill__teacher=str(tmp_path / "nowhere")), gpt, args, tok,
                     plan)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"distill.teacher=.*empty \(no config.json, so not a Hugging Face "
                                              r"directory; read as one of our checkpoints\): .*no complete checkpoint"):
        plan_distill(structured_cfg(objective="distill", distill__teacher=str(tmp_path / "empty")), gpt, args, tok,
                     plan)
    t5 = get_family("t5")
    with pytest.raises(ConfigError, match="trains GPT or BERT students .*not model.family=t5"):
        plan_distill(structured_cfg(objective="distill", distill__teacher="x"), t5, args, tok, plan)
    # a teacher of another family, or of another width with the cosine loss (its config.json is all plan reads)
    t_args, teacher = _gpt(hidden=48)
    tok_file = _tokenizer(tmp_path / "tok.json", {"a": 0}, {})
    hf_dir = str(_hf_gpt_dir(tmp_path / "hf", t_args, teacher, tok_file))
    tok = SimpleNamespace(path=tok_file, vocab_size=60)
    b_args = BERTArgs(vocab_size=64, num_layers=1, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                      seq_length=16)
    with pytest.raises(ConfigError, match=r"a gpt model with 2 layers, hidden 48\) cannot teach a model.family=bert"):
        plan_distill(structured_cfg(objective="distill", distill__teacher=hf_dir), get_family("bert"), b_args, tok,
                     plan)
    with pytest.raises(ConfigError, match=r"distill.cosine_weight=1.0 .*model.hidden_size=32 to equal the teacher's "
                                          r"\(48"):
        plan_distill(structured_cfg(objective="distill", distill__teacher=hf_dir, distill__cosine_weight=1.0), gpt,
                     args, tok, plan)
    d = plan_distill(structured_cfg(objective="distill", distill__teacher=hf_dir, distill__alpha=0.25), gpt, args, tok,
                     plan)
    assert (d.alpha, d.temperature, d.cosine_weight, d.teacher_dtype, d.teacher) == (0.25, 1.0, 0.0, "fp32", None)


def test_a_distilled_gpt_ends_below_the_same_student_trained_alone(e2e_run, compose_cfg, monkeypatch, cache_dir,
                                                                   tmp_path):
    """The student (gpt_one_process's settings: 30 steps, validation at 15 and 30) distilled from a GPT of 4x its
    width and twice its depth (60 steps) ends with a lower validation loss than gpt_one_process, on the same data
    in the same order; the records carry the loss parts and the teacher's validation loss, computed once."""
    student, alone = e2e_run("gpt_kd_student"), e2e_run("gpt_one_process")
    records, baseline = read_metrics(student.dir), read_metrics(alone.dir)
    train = [r for r in records if "loss" in r]
    assert [r["batch_checksum"] for r in train] == [r["batch_checksum"] for r in baseline if "loss" in r]
    for r in train:  # the logged loss is the distillation loss: 0.2 * hard + 0.8 * soft
        assert r["loss"] == pytest.approx(0.2 * r["distill_hard_loss"] + 0.8 * r["distill_soft_loss"], rel=1e-5)
    val = [r for r in records if "val_loss" in r]
    base_val = [r["val_loss"] for r in baseline if "val_loss" in r]
    assert [r["step"] for r in val] == [15, 30] and len(base_val) == 2
    teacher_val = val[0]["teacher_val_loss"]
    assert all(r["teacher_val_loss"] == teacher_val for r in val)  # once: the teacher does not change
    assert teacher_val < val[-1]["val_loss"] < base_val[-1], (teacher_val, val[-1]["val_loss"], base_val[-1])
    assert "teacher_val_loss=" in student.outputs[-1].stdout  # in the summary line

    # a teacher on another tokenizer is refused in plan(), before a process group or a model exists
    from pretrain.trainer import Trainer

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    state = json.loads((e2e_run("gpt_kd_teacher").dir / "checkpoints" / "step_000060" / "trainer_state.json")
                       .read_text())
    tok = json.loads(Path(state["tokenizer"]).read_text())
    first = next(iter(tok["model"]["vocab"]))
    tok["model"]["vocab"]["renamed"] = tok["model"]["vocab"].pop(first)
    args = GPTArgs(**state["model_args"])
    (tmp_path / "renamed.json").write_text(json.dumps(tok))
    _hf_gpt_dir(tmp_path / "hf", args, get_family("gpt").make_model(args), tmp_path / "renamed.json")
    cfg = compose_cfg(*alone_overrides(), "objective=distill", f"distill.teacher={tmp_path / 'hf'}",
                      f"run_dir={tmp_path / 'run'}")
    trainer = Trainer(cfg)
    try:
        with pytest.raises(DataError, match=rf"does not match the student's {state['tokenizer']}: vocabularies differ"):
            trainer.plan()
    finally:
        trainer.stop_request.close()  # plan() installed the signal handlers before it refused


def alone_overrides() -> list[str]:
    from e2e import RUNS

    return list(RUNS["gpt_one_process"].overrides)
