"""Data mixtures: validation per source (``data.valid_path`` or the split), scheduled weights (``data.schedule``)
that switch at the right token counts and give the scheduled fractions, the blend under a schedule (exact,
prefix-stable, nothing repeated or skipped, the unscheduled blend untouched), bad schedules refused before any
work, a changed schedule on resume refused or continued, and real one-process runs resumed at a phase boundary
and inside a phase, bitwise."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pretrain.core.errors import CheckpointError, ConfigError, DataError
from pretrain.core.manifest import write_manifest
from pretrain.data.blend import Blend, ScheduledBlend
from pretrain.data.dataset import build_datasets
from pretrain.data.schedule import Mixture, parse_phases, plan_mixture, resolve_phases
from tests.train.test_data_dataset import EOD, write_corpus

# ----------------------------------------------------------------------------------------- per-source validation


@pytest.fixture
def corpora(tmp_path):
    """Training corpora a, b (tokens 1.., 20000..) and a held-out folder with corpora a, d (30000.., 40000..)."""
    rng = np.random.RandomState(1)
    out = {}
    for folder, spec in (("train", (("a", 1), ("b", 20000))), ("held", (("a", 30000), ("d", 40000)))):
        root, entries, docs = tmp_path / folder, {}, {}
        for name, first in spec:
            docs[name], entries[name] = write_corpus(root, name, rng.randint(5, 60, 50).tolist(), first)
        write_manifest(root, tokenizer=None, vocab_size=65000, eod_id=EOD, dtype="uint16", corpora=entries)
        out[folder] = SimpleNamespace(root=root, docs=docs)
    out["cache"] = tmp_path / "cache"
    return SimpleNamespace(**out)


def data_cfg(path, **kw):
    return SimpleNamespace(path=str(path), weights=kw.pop("weights", None), split=kw.pop("split", "80,20"),
                           num_workers=0, **kw)


def tokens_of(ds, n) -> set[int]:
    return {t for i in range(n) for t in ds[i].tolist() if t != EOD}


def test_the_validation_split_is_kept_per_source(corpora):
    b = build_datasets(data_cfg(corpora.train.root, weights={"a": 3, "b": 1}), seq_length=8, seed=3,
                       num_train_samples=100, num_valid_samples=24, cache_dir=str(corpora.cache))
    assert list(b.valid_sources) == ["a", "b"] and b.valid_weights == pytest.approx({"a": 0.75, "b": 0.25})
    for name, first in (("a", 1), ("b", 20000)):
        ds = b.valid_sources[name]
        assert len(ds) == 24 and {ds.source(i)[0] for i in range(24)} == {name}
        got = tokens_of(ds, 24)
        held = {t for d in corpora.train.docs[name][40:] for t in d if t != EOD}  # the last 20% of the documents
        assert got <= held and min(got) >= first
    # the blended validation set is still there, unchanged in meaning
    assert {b.valid.source(i)[0] for i in range(24)} == {"a", "b"}


def test_valid_path_is_the_validation_set_and_every_training_document_trains(corpora):
    b = build_datasets(data_cfg(corpora.train.root, valid_path=str(corpora.held.root)), seq_length=8, seed=3,
                       num_train_samples=2000, num_valid_samples=16, cache_dir=str(corpora.cache))
    assert list(b.valid_sources) == ["a", "d"]  # the held-out folder's corpora, whatever the training mix
    held_tokens = {n: sum(map(len, corpora.held.docs[n])) for n in ("a", "d")}
    total = sum(held_tokens.values())
    assert b.valid_weights == pytest.approx({n: t / total for n, t in held_tokens.items()})
    for name in ("a", "d"):
        allowed = {t for d in corpora.held.docs[name] for t in d if t != EOD}
        assert tokens_of(b.valid_sources[name], 16) <= allowed
    assert all(p.doc_lo == 0 and p.doc_hi == 50 for p in b.train.parts)  # no split of data.path
    trained = tokens_of(b.train, 2000)
    assert trained <= {t for n in ("a", "b") for d in corpora.train.docs[n] for t in d}

    other = corpora.held.root.parent / "other"  # tokenized differently: refused, naming the folder
    write_manifest(other, tokenizer=None, vocab_size=50000, eod_id=EOD, dtype="uint16",
                   corpora={"a": {"prefixes": [str(corpora.held.root / "tokens/a/part-00000")], "documents": 50,
                                  "tokens": held_tokens["a"]}})
    with pytest.raises(DataError, match=r"data.valid_path: .*other/manifest.json has vocab_size 50000"):
        build_datasets(data_cfg(corpora.train.root, valid_path=str(other)), seq_length=8, seed=3,
                       num_train_samples=10, num_valid_samples=16, cache_dir=str(corpora.cache))


def test_valid_path_must_share_the_training_tokenizer_file(tmp_path):
    from pretrain.core.manifest import read_manifest
    from pretrain.data.dataset import check_same_tokenizer

    def folder(name, tokenizer_bytes):
        root = tmp_path / name
        (root / "tokenizer").mkdir(parents=True)
        (root / "tokenizer" / "tokenizer.json").write_bytes(tokenizer_bytes)
        _, entry = write_corpus(root, "a", [5, 6], 1)
        write_manifest(root, tokenizer=str(root / "tokenizer" / "tokenizer.json"), vocab_size=300, eod_id=0,
                       dtype="uint16", corpora={"a": entry})
        return read_manifest(root)

    train, same, other = folder("train", b'{"v": 1}'), folder("same", b'{"v": 1}'), folder("other", b'{"v": 2}')
    check_same_tokenizer(train, same)  # a copy of the file (the pipeline's tokenizer.path=...) is the same tokenizer
    with pytest.raises(DataError, match=r"the tokenizer of .*other/manifest.json .* differs from the training data's.*"
                                        r"tokenizer.path=.*train/tokenizer/tokenizer.json"):
        check_same_tokenizer(train, other)


# ----------------------------------------------------------------------------------------- the scheduled blend


def assert_exact_blend(blend, n: int, k: int) -> np.ndarray:
    """range() agrees with [i], counts() with the samples, and each corpus's samples are 0, 1, 2, ... in order
    (nothing repeated, nothing skipped); returns the corpus of every sample."""
    corpus, local = blend.range(0, n)
    assert [blend[i] for i in range(0, n, 97)] == list(zip(corpus[::97].tolist(), local[::97].tolist()))
    for c in range(k):
        assert local[corpus == c].tolist() == list(range(int((corpus == c).sum())))
    for m in (1, n // 3, n - 1, n):
        assert blend.counts(m).tolist() == np.bincount(corpus[:m], minlength=k).tolist()
    return corpus


def test_one_phase_schedule_is_the_fixed_blend_bit_for_bit():
    w = [0.5, 0.3, 0.2]
    fixed, sched = Blend(w, chunk=256), ScheduledBlend([(math.inf, w)], chunk=256)
    assert [tuple(a.tolist()) for a in sched.range(0, 3000)] == [tuple(a.tolist()) for a in fixed.range(0, 3000)]


def test_a_schedule_switches_weights_at_the_right_token_counts_and_gives_its_fractions():
    tps, gbs = 128, 8  # tokens per sample, global batch
    raw = [{"until_tokens": 1000 * tps, "weights": {"web": 3, "code": 1}},  # samples 0..999: 0.75 / 0.25
           {"until_step": 250, "weights": {"web": 1, "code": 1, "books": 2}},  # 1000..1999
           {"until_tokens": 3000 * tps, "weights": {"web": 0, "code": 1, "books": 1}, "interpolate": "linear"},
           {"weights": {"code": 1}}]  # 3000..: code only
    mix = Mixture(resolve_phases(raw, tps, gbs))
    names = ["web", "code", "books"]
    blend = mix.blend(names)
    blend.chunk = 512  # several windows, phases crossing them
    n = 4000
    corpus = assert_exact_blend(blend, n, 3)

    def counts(lo, hi):
        return np.bincount(corpus[lo:hi], minlength=3)

    # every prefix holds its integral of the weights up to about one sample per corpus: the switch is exact
    assert np.abs(counts(0, 1000) - [750, 250, 0]).max() <= 1
    assert np.abs(counts(1000, 2000) - [250, 250, 500]).max() <= 2
    # the linear ramp from (1/4, 1/4, 1/2) to (0, 1/2, 1/2): web's share over the ramp is 1/8, code's 3/8
    assert np.abs(counts(2000, 3000) - [125, 375, 500]).max() <= 2
    assert np.abs(counts(2000, 2500) - [500 * 0.1875, 500 * 0.3125, 250]).max() <= 2  # first half of the ramp
    assert counts(3001, 4000).tolist() == [0, 999, 0]
    assert mix.weights_at(500, names) == pytest.approx({"web": 0.75, "code": 0.25, "books": 0})
    assert mix.weights_at(2999.9, names)["web"] == pytest.approx(0, abs=1e-3)

    # the scheduled fractions hold within sampling error at every scale (a binomial 3-sigma bound)
    for lo, hi, w in ((0, 1000, [0.75, 0.25, 0]), (1000, 2000, [0.25, 0.25, 0.5])):
        for a in range(lo, hi, 100):
            got = counts(a, a + 100) / 100
            assert np.all(np.abs(got - w) <= 3 * np.sqrt(np.asarray(w) * (1 - np.asarray(w)) / 100) + 0.02)


def test_a_changed_schedule_continues_every_corpus_where_it_stopped():
    names = ["web", "code"]
    old = Mixture(resolve_phases([{"weights": {"web": 1, "code": 1}}], 1, 1))
    first = old.blend(names)
    start = 777
    offsets = dict(zip(names, first.counts(start).tolist()))
    new = Mixture(resolve_phases([{"weights": {"web": 1, "code": 3}}], 1, 1), start, offsets, old)
    blend = new.blend(names)
    corpus = assert_exact_blend(blend, 3000, 2)  # no sample of either corpus repeated or skipped
    assert [blend[i] for i in range(start)] == [first[i] for i in range(start)]  # the past is the old mixture's
    assert abs(int((corpus[start:] == 1).sum()) - 0.75 * (3000 - start)) <= 1


# ----------------------------------------------------------------------------------------- bad schedules


@pytest.mark.parametrize("schedule, message", [
    ([{"until_tokens": 100, "weights": {"web": 1}}], r"data.schedule\[0\].weights names corpus 'web'.*available: "
                                                     r"prose, code"),
    ([{"until_step": 10, "weights": {"code": 1}}, {"until_step": 10, "weights": {"prose": 1}}],
     r"data.schedule\[1\].until_step=10 is not after data.schedule\[0\].until_step=10"),
    ([{"until_step": 10, "weights": {"code": -1, "prose": 1}}], r"data.schedule\[0\].weights.code=-1 must be"),
    ([{"weights": {"code": 1}}, {"until_step": 5, "weights": {"prose": 1}}], r"data.schedule\[0\] has no boundary"),
    ([{"until_step": 2.5, "weights": {"code": 1}}], r"data.schedule\[0\].until_step=2.5 must be a whole number"),
    ([{"until_step": 5, "until_tokens": 9, "weights": {"code": 1}}], r"data.schedule\[0\] sets both"),
    ([{"until_step": 5, "weights": {"code": 1}, "interpolate": "linear"}], r"data.schedule\[0\].interpolate=linear"),
    ([{"until_step": 5, "weight": {"code": 1}}], r"data.schedule\[0\].weight: unknown key"),
    ([{"until_step": 5, "weights": {"code": 0}}], r"data.schedule\[0\].weights gives every corpus weight 0"),
])
def test_bad_schedules_are_refused_at_validation_naming_the_key(compose_cfg, schedule, message):
    from pretrain.validation import validate_values

    cfg = compose_cfg("experiment=gpt_tiny", "run_dir=/tmp/unused")
    cfg.data.schedule = schedule
    with pytest.raises(ConfigError, match=message):
        validate_values(cfg)


def test_mixed_units_that_do_not_increase_are_refused_once_converted():
    parse = [{"until_tokens": 4096, "weights": {"a": 1}}, {"until_step": 2, "weights": {"b": 1}}]
    assert parse_phases(parse)[1] == []  # each unit alone increases
    with pytest.raises(ConfigError, match=r"data.schedule\[1\] ends at sample 16 .*not after .*sample 32"):
        resolve_phases(parse, tokens_per_sample=128, global_batch_size=8)


def test_a_changed_schedule_on_resume_is_refused_or_continued_with_a_warning(caplog):
    names = ["prose", "code"]
    sched = [{"until_step": 4, "weights": {"prose": 1}}, {"weights": {"prose": 1, "code": 1}}]
    saved = Mixture(resolve_phases(sched, 64, 8))
    state = {"step": 6, "consumed_samples": 48, "callbacks": {"data_mixture": {
        "mixture": saved.to_json(), "consumed_samples": dict(zip(names, saved.blend(names).counts(48).tolist()))}}}
    cfg = SimpleNamespace(schedule=sched, schedule_changed="refuse")
    assert plan_mixture(cfg, state, 64, 8).same_schedule(saved)
    cfg.schedule = [{"until_step": 5, "weights": {"prose": 1}}, {"weights": {"prose": 1, "code": 1}}]
    with pytest.raises(CheckpointError, match=r"checkpoint at step 6 was trained with another data.schedule \(until "
                                              r"sample 32: prose=1; then: prose=0.5 code=0.5\); this run has "
                                              r"data.schedule until sample 40: .*data.schedule_changed=allow"):
        plan_mixture(cfg, state, 64, 8)
    with pytest.raises(CheckpointError, match="trained with another data.schedule"):
        plan_mixture(cfg, state, 64, 4)  # until_step under another global batch is another schedule too
    cfg.schedule_changed = "allow"
    with caplog.at_level("WARNING"):
        mix = plan_mixture(cfg, state, 64, 8)
    assert "data.schedule_changed=allow" in caplog.text and mix.start == 48 and mix.previous is not None
    fixed = SimpleNamespace(schedule=[], schedule_changed="refuse")
    with pytest.raises(CheckpointError, match="this run has fixed data.weights"):
        plan_mixture(fixed, state, 64, 8)
    assert plan_mixture(fixed, {"step": 3, "callbacks": {}}, 64, 8) is None  # fixed before and now: as always


def test_the_mixture_state_round_trips_through_json():
    sched = [{"until_tokens": 1e4, "weights": {"a": 2, "b": 1}}, {"until_step": 200, "weights": {"b": 1},
                                                                  "interpolate": "linear"}]
    mix = Mixture(resolve_phases(sched, 16, 4), 100, {"a": 60, "b": 40}, Mixture.fixed({"a": 1, "b": 1}))
    again = Mixture.from_json(json.loads(json.dumps(mix.to_json())))
    assert again.to_json() == mix.to_json()
    assert again.blend(["a", "b"]).range(0, 500)[0].tolist() == mix.blend(["a", "b"]).range(0, 500)[0].tolist()


REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------- real runs, resumed

# 8 steps of 8 samples: code-heavy for 3 steps, a linear ramp to prose-heavy until step 6, then prose only.
# The LR curve is fixed (decay over 8 steps) so that a run stopped and resumed follows the straight one.
SCHEDULE = ("data.schedule=[{until_step: 3, weights: {prose: 1, code: 3}}, "
            "{until_step: 6, weights: {prose: 3, code: 1}, interpolate: linear}, {weights: {prose: 1}}]")
RUN = ("trainer.global_batch_size=8", "optim.sched.decay_steps=8", "trainer.eval_interval=4", SCHEDULE,
       "checkpoint.universal=false")  # a same-layout resume: DeepSpeed's files suffice


@pytest.fixture(scope="module")
def scheduled_runs(tmp_path_factory, cache_dir):
    """One straight 8-step run and one stopped at step 3 (a phase boundary) and 5 (inside the ramp), resumed to 8;
    in-process one-process Trainer runs of the tiny GPT (dropout on: the RNG streams must resume too)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pretrain.config import register_configs
    from pretrain.trainer import Trainer
    from tests.conftest import TINY

    mp = pytest.MonkeyPatch()
    mp.setenv("PRETRAIN_CACHE", str(cache_dir))
    mp.setenv("WANDB_MODE", "disabled")
    root = tmp_path_factory.mktemp("mixture")
    register_configs()
    GlobalHydra.instance().clear()
    out = {}
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            for name, legs, save in (("straight", (8,), "false"), ("split", (3, 5, 8), "true")):
                for steps in legs:
                    cfg = compose("train", overrides=[*TINY, *RUN, f"trainer.max_steps={steps}",
                                                      f"checkpoint.save_at_end={save}", f"run_dir={root / name}"])
                    Trainer(cfg).fit()
                out[name] = root / name
            # validated on a held-out folder (here the sample data itself: any pipeline output of that tokenizer)
            from pretrain.data.sample import ensure_sample_data

            held = ensure_sample_data()
            cfg = compose("train", overrides=[*TINY, "trainer.max_steps=2", "trainer.eval_interval=2",
                                              f"data.valid_path={held}", f"run_dir={root / 'held'}"])
            Trainer(cfg).fit()
            out["held"], out["held_data"] = root / "held", held
            # configs of a resume with another schedule and with the same one (composed here: tests in between
            # may reset Hydra)
            other = "data.schedule=[{until_step: 4, weights: {prose: 1, code: 3}}, {weights: {prose: 1}}]"
            out["changed"] = compose("train", overrides=[*TINY, *RUN, "run_dir=/tmp/unused", other])
            out["same"] = compose("train", overrides=[*TINY, *RUN, "run_dir=/tmp/unused"])
            yield SimpleNamespace(**out)
    finally:
        GlobalHydra.instance().clear()
        mp.undo()


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_resume_at_a_phase_boundary_and_inside_a_phase_is_bitwise(scheduled_runs):
    straight = {r["step"]: r for r in records(scheduled_runs.straight) if "loss" in r}
    split = {r["step"]: r for r in records(scheduled_runs.split) if "loss" in r}
    assert sorted(straight) == sorted(split) == list(range(1, 9))
    for s in straight:  # the same batches and bit-for-bit the same losses, per-source token counts included
        for key in ("batch_checksum", "loss", "grad_norm", "consumed_tokens/prose", "consumed_tokens/code",
                    "data_weight/prose"):
            assert split[s][key] == straight[s][key], (s, key)
    # the schedule as run: code-heavy up to step 3, prose only after step 6
    t = lambda s, n: straight[s][f"consumed_tokens/{n}"]  # noqa: E731
    assert t(3, "prose") + t(3, "code") == straight[3]["consumed_tokens"]
    assert abs(t(3, "code") / 64 - 18) <= 1 and abs(t(3, "prose") / 64 - 6) <= 1
    assert t(8, "code") == t(6, "code") or t(8, "code") - t(6, "code") <= 64  # at most a sample at the boundary
    assert t(8, "prose") - t(6, "prose") >= 15 * 64
    assert straight[2]["data_weight/code"] == pytest.approx(0.75) and straight[8]["data_weight/prose"] == 1.0
    # checkpointed: the step-5 checkpoint's counts are the step-5 record's
    state = json.loads((scheduled_runs.split / "checkpoints" / "step_000005" / "trainer_state.json").read_text())
    mix = state["callbacks"]["data_mixture"]
    assert mix["consumed_tokens"] == {n: split[5][f"consumed_tokens/{n}"] for n in ("prose", "code")}
    assert [p["until_sample"] for p in mix["mixture"]["phases"]] == [24.0, 48.0, None]


def test_val_loss_per_source_and_the_weighted_total(scheduled_runs):
    evals = [r for r in records(scheduled_runs.straight) if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    for r in evals:
        per = {n: r[f"val_loss/{n}"] for n in ("prose", "code")}
        assert all(math.isfinite(v) for v in per.values()) and per["prose"] != per["code"]
        assert r["val_ppl/code"] == pytest.approx(math.exp(per["code"]), rel=1e-5)
        # the total is weighted by the schedule's last phase: prose only
        assert r["val_loss"] == pytest.approx(1.0 * per["prose"] + 0.0 * per["code"], rel=1e-12)
    split = {r["step"]: r for r in records(scheduled_runs.split) if "val_loss" in r}
    assert split[8]["val_loss/code"] == evals[-1]["val_loss/code"]  # the same held-out samples after a resume


def test_a_run_validated_on_valid_path_weights_its_total_by_the_held_out_tokens(scheduled_runs):
    from pretrain.core.manifest import read_manifest

    tokens = {n: c.tokens for n, c in read_manifest(scheduled_runs.held_data).corpora.items()}
    (r,) = [r for r in records(scheduled_runs.held) if "val_loss" in r]
    total = sum(tokens[n] / sum(tokens.values()) * r[f"val_loss/{n}"] for n in tokens)
    assert r["val_loss"] == pytest.approx(total, rel=1e-12) and r["step"] == 2


def test_a_missing_valid_path_is_refused_at_validation(compose_cfg, tmp_path):
    from pretrain.validation import validate_values

    cfg = compose_cfg("experiment=gpt_tiny", "run_dir=/tmp/unused", f"data.valid_path={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match=r"data.valid_path=.*nowhere: no manifest.json"):
        validate_values(cfg)


def test_a_changed_schedule_is_refused_by_the_resumed_run_before_any_work(scheduled_runs):
    from pretrain.checkpoint import read_state
    from pretrain.data.schedule import plan_mixture

    state = read_state(scheduled_runs.split / "checkpoints" / "step_000008")
    with pytest.raises(CheckpointError, match="checkpoint at step 8 was trained with another data.schedule"):
        plan_mixture(scheduled_runs.changed.data, state, 64, 8)
    assert plan_mixture(scheduled_runs.same.data, state, 64, 8).same_schedule(Mixture.from_json(
        state["callbacks"]["data_mixture"]["mixture"]))


def test_inspect_follows_the_schedule(scheduled_runs):
    from pretrain.data.inspect import inspect_step

    logged = {r["step"]: r for r in records(scheduled_runs.split) if "loss" in r}
    for step in (3, 4, 7):  # the last step of a phase, the first after it (resumed there), inside the ramp
        info = inspect_step(scheduled_runs.split, step)
        assert info.checksum == info.logged_checksum == logged[step]["batch_checksum"]
    assert {s.source for s in inspect_step(scheduled_runs.split, 8).samples} == {"prose"}


def test_the_anneal_example_config_is_a_valid_schedule(compose_cfg):
    cfg = compose_cfg("data=anneal", "run_dir=/tmp/unused")
    phases, problems = parse_phases(cfg.data.schedule, ["web", "wiki", "books", "code"])
    assert problems == [] and len(phases) == 2
    mix = Mixture(resolve_phases(cfg.data.schedule, 1024, 512))
    names = ["web", "wiki", "books", "code"]
    assert mix.weights_at(0, names) == pytest.approx({"web": 0.55, "wiki": 0.25, "books": 0.1, "code": 0.1})
    assert mix.weights_at(1e9 / 1024, names) == pytest.approx({"web": 0.35, "wiki": 0.2, "books": 0.2, "code": 0.25})


def test_per_source_validation_reaches_metrics_and_wandb_on_two_ranks(e2e_run, cache_dir, monkeypatch):
    """The shared 2-process resume run (fixed weights: by tokens) logs each source's validation loss, and their
    total weighted by the mixture, to metrics.jsonl and to its offline W&B run."""
    from pretrain.core.manifest import read_manifest
    from pretrain.data.sample import ensure_sample_data
    from tests.conftest import read_wandb_offline_run

    run = e2e_run("gpt_resume_split").dir
    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    manifest = read_manifest(ensure_sample_data())
    tokens = {n: c.tokens for n, c in manifest.corpora.items()}
    weights = {n: t / sum(tokens.values()) for n, t in tokens.items()}
    evals = [r for r in records(run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [5, 10, 15, 20]
    for r in evals:
        assert r["val_loss"] == pytest.approx(sum(weights[n] * r[f"val_loss/{n}"] for n in weights), rel=1e-12)
    logged = [h for h in read_wandb_offline_run(run)["history"] if h.get("val_loss") is not None]
    assert logged and all({"val_loss/prose", "val_ppl/prose", "val_loss/code", "val_ppl/code"} <= set(h)
                          for h in logged)
    by_step = {r["step"]: r for r in evals}
    assert all(h["val_loss/code"] == pytest.approx(by_step[h["step"]]["val_loss/code"]) for h in logged)
