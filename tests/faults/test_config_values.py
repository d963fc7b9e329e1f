"""Bad config values, found before any expensive work, each naming its key; data.weights from the command line;
short runs with a recipe's warm-up; unknown keys with the closest known one; the CPU peak FLOP/s and MFU > 100%."""

from __future__ import annotations

import json
import math

import pytest
from hydra.errors import ConfigCompositionException

from pretrain import flops
from pretrain.config import validate_schema
from pretrain.core.errors import ConfigError, DataError
from pretrain.core.manifest import write_manifest
from pretrain.optim import lr_lambda
from pretrain.validation import (
    check_command_line,
    fit_schedule_to_run,
    report_user_error,
    validate_values,
)

# ------------------------------------------------------------------------------------------- data.weights


@pytest.mark.parametrize("overrides", [
    ["data.weights={web: 0.5, code: 0.5}"],  # the README's spelling
    ["data.weights.web=0.5", "data.weights.code=0.5"],
    ["+data.weights.web=0.5", "+data.weights.code=0.5"],
    ["++data.weights.web=0.5", "++data.weights.code=0.5"],
    ["data=pipeline", "data.weights={web: 0.5, code: 0.5}"],
    ["experiment=gpt_tiny", "data.weights={web: 0.5, code: 0.5}"],
])
def test_data_weights_can_be_set_from_the_command_line(compose_cfg, overrides):
    cfg = compose_cfg(*overrides)
    assert dict(cfg.data.weights) == {"web": 0.5, "code": 0.5}
    validate_schema(cfg)


def test_data_weights_stay_typed_and_default_to_an_empty_map(compose_cfg):
    assert dict(compose_cfg().data.weights) == {}
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg("data.weights.web=lots")
    assert "lots" in str(e.value.__cause__) and "Float" in str(e.value.__cause__)
    with pytest.raises(ConfigCompositionException):  # other maps stay closed: a typo in a key still fails
        compose_cfg("data.weigths.web=1")


def _manifest(root, names=("code", "prose")):
    corpora = {n: {"prefixes": [f"tokens/{n}/part-00000"], "documents": 1, "tokens": 10} for n in names}
    write_manifest(root, tokenizer=None, vocab_size=100, eod_id=0, dtype="uint16", corpora=corpora)
    return root


def test_an_unknown_source_in_data_weights_is_refused_listing_the_manifest(compose_cfg, tmp_path):
    root = _manifest(tmp_path)
    cfg = compose_cfg(f"data.path={root}", "data.weights={web: 0.5, code: 0.5}")
    with pytest.raises(ConfigError, match=r"names corpus 'web', which .*manifest.json does not have; "
                                          r"available corpora: code, prose"):
        validate_values(cfg)
    validate_values(compose_cfg(f"data.path={root}", "data.weights={prose: 0.5, code: 0.5}"))


# ------------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-0.001", "optim.lr=-0.001 must be >= 0"),
    ("optim.lr=nan", "optim.lr=nan must be a finite number"),
    ("optim.beta1=1.0", "optim.beta1=1.0 must be in [0, 1)"),
    ("optim.beta2=-0.5", "optim.beta2=-0.5 must be in [0, 1)"),
    ("optim.eps=-1e-8", "optim.eps=-1e-08 must be >= 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 must be >= 0"),
    ("optim.clip_grad=-1", "optim.clip_grad=-1.0 must be >= 0"),
    ("optim.name=sgd", "optim.name='sgd'; expected adamw"),
    ("optim.sched.warmup_steps=-2", "optim.sched.warmup_steps=-2 must be >= 0"),
    ("optim.sched.min_lr_ratio=1.5", "optim.sched.min_lr_ratio=1.5 must be between 0 and 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0 must be >= 1"),
    ("trainer.log_interval=0", "trainer.log_interval=0 must be >= 1"),
    ("trainer.eval_iters=-1", "trainer.eval_iters=-1 must be >= 0"),
    ("trainer.peak_flops_per_device=-5", "trainer.peak_flops_per_device=-5.0 must be > 0"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last=0 must be >= 1"),
    ("data.split=ninety", "data.split='ninety' is malformed"),
])
def test_a_bad_value_is_refused_naming_its_key(compose_cfg, override, message):
    with pytest.raises(ConfigError) as e:
        validate_values(compose_cfg(override))
    assert message in str(e.value)


def test_every_bad_value_is_reported_at_once(compose_cfg):
    with pytest.raises(ConfigError) as e:
        validate_values(compose_cfg("optim.lr=-1", "optim.beta2=2", "checkpoint.keep_last=-1"))
    assert all(k in str(e.value) for k in ("optim.lr=", "optim.beta2=", "checkpoint.keep_last="))


@pytest.mark.parametrize("name", ["gpt_tiny", "llama_tiny", "bert_tiny", "t5_tiny", "gpt_125m", "llama_7b"])
def test_the_shipped_configs_pass(compose_cfg, name):
    cfg = compose_cfg(f"experiment={name}", "data.path=null")  # the big recipes read data/pipeline, not built here
    assert fit_schedule_to_run(cfg) is None
    validate_values(cfg)


def test_a_missing_data_path_is_said_to_be_missing(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"data.path=.*nowhere: no such folder"):
        validate_values(compose_cfg(f"data.path={tmp_path / 'nowhere'}"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"data.path=.*file is a file, not a folder"):
        validate_values(compose_cfg(f"data.path={tmp_path / 'file'}"))
    with pytest.raises(ConfigError, match=r"no token-shard manifest at .*empty"):
        (tmp_path / "empty").mkdir()
        validate_values(compose_cfg(f"data.path={tmp_path / 'empty'}"))


# ------------------------------------------------------------------------------------------------ schedule


def test_a_short_run_of_a_recipe_with_warmup_just_works(compose_cfg):
    cfg = compose_cfg("experiment=gpt_tiny", "trainer.max_steps=4")  # the recipe warms up over 5 steps
    with pytest.raises(ConfigError, match="optim.sched.warmup_steps=5 is longer than the schedule"):
        validate_values(cfg)  # as it stands...
    note = fit_schedule_to_run(cfg)  # ...the trainer fits the warm-up to the run first
    assert "warming up over its 4 steps" in note and cfg.optim.sched.warmup_steps == 4
    validate_values(cfg)
    fn = lr_lambda(cfg.optim.sched, cfg.trainer.max_steps)
    assert [fn(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_valid_schedules_keep_their_curve_bit_for_bit(compose_cfg):
    for overrides in (["experiment=gpt_tiny"], ["experiment=gpt_tiny", "trainer.max_steps=5"],
                      ["optim.sched.warmup_steps=10", "trainer.max_steps=50", "optim.sched.name=linear"]):
        cfg = compose_cfg(*overrides)
        before = [lr_lambda(cfg.optim.sched, cfg.trainer.max_steps)(s) for s in range(cfg.trainer.max_steps + 2)]
        assert fit_schedule_to_run(cfg) is None
        assert [lr_lambda(cfg.optim.sched, cfg.trainer.max_steps)(s) for s in range(len(before))] == before


def test_an_explicit_decay_shorter_than_the_warmup_is_refused_before_any_build(compose_cfg):
    cfg = compose_cfg("experiment=gpt_tiny", "optim.sched.decay_steps=3")
    assert fit_schedule_to_run(cfg) is None  # an explicit schedule length is never changed
    with pytest.raises(ConfigError, match="optim.sched.decay_steps=3 is shorter than optim.sched.warmup_steps=5"):
        validate_values(cfg)


# ----------------------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("arg, guess", [
    ("trainer.max_step=4", "trainer.max_steps"),
    ("trainr.max_steps=4", "trainer.max_steps"),
    ("optim.sched.warmup=3", "optim.sched.warmup_steps"),
    ("checkpoint.keeplast=3", "checkpoint.keep_last"),
    ("experimnt=gpt_tiny", "experiment"),
])
def test_an_unknown_key_on_the_command_line_gets_the_closest_known_key(arg, guess):
    with pytest.raises(ConfigError, match=rf"unknown config key '{arg.split('=')[0]}' \(did you mean {guess}\?\)"):
        check_command_line([arg])


def test_known_keys_groups_and_hydra_flags_pass_the_command_line_check():
    check_command_line(["experiment=gpt_tiny", "model=gpt/tiny", "data.weights.web=1", "deepspeed_extra.a.b=1",
                        "hydra.run.dir=x", "--multirun", "-c", "job", "+anything=1", "trainer.max_steps=3",
                        "hydra/launcher=basic", "not an override"])


def test_an_appended_unknown_key_gets_the_closest_known_key(compose_cfg):
    with pytest.raises(ConfigError, match=r"'trainer.max_step'.*\(did you mean trainer.max_steps\?\)"):
        validate_schema(compose_cfg("+trainer.max_step=3"))


# ---------------------------------------------------------------------------------------------- reporting


def test_a_config_error_is_printed_by_rank_0_only_and_named_in_torchruns_summary(capsys, tmp_path, monkeypatch):
    err_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(err_file))
    monkeypatch.setenv("WORLD_SIZE", "2")
    e = ConfigError("parallel.tensor_model_parallel_size=3 does not divide 2 ranks")
    assert report_user_error(e, rank=1) == 2
    assert capsys.readouterr().err == ""
    assert json.loads(err_file.read_text())["message"] == f"ConfigError: {e}"
    assert report_user_error(e, rank=0) == 2
    assert capsys.readouterr().err == f"error: {e}\n"
    # an error that may differ per rank (a file one node cannot read) is printed by every rank, with its rank
    report_user_error(DataError("/data/x.bin: unreadable"), rank=1)
    assert capsys.readouterr().err == "error: rank 1: /data/x.bin: unreadable\n"


# --------------------------------------------------------------------------------------------------- MFU


def test_mfu_above_100_percent_warns():
    assert flops.check_mfu(0.45) is None and flops.check_mfu(1.0) is None and flops.check_mfu(math.nan) is None
    warning = flops.check_mfu(1.7, "measured on this CPU")
    assert "MFU 170% is above 100%" in warning and "trainer.peak_flops_per_device" in warning


def test_cpu_peak_is_the_best_of_several_runs_measured_once_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAIN_CACHE", str(tmp_path))
    runs = iter([4e9, 9e9, 2e9, 8e9, 7e9])  # a busy machine: one 0.5 s sample could read any of these
    monkeypatch.setattr(flops, "measure_cpu_peak_flops", lambda precision, seconds: next(runs))
    peak, source = flops.cpu_peak_flops("fp32")
    assert peak == 9e9 and "best of 5" in source
    cache = json.loads((tmp_path / "cpu_peak_flops.json").read_text())
    (entry,) = cache.values()
    assert entry["peak"] == 9e9 and entry["median"] == 7e9 and entry["runs"] == 5

    def no_measuring(precision, seconds):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(flops, "measure_cpu_peak_flops", no_measuring)
    assert flops.cpu_peak_flops("fp32")[0] == 9e9  # cached
    assert flops.peak_flops_per_device(__import__("torch").device("cpu"), "fp32", None)[0] == 9e9
    assert flops.peak_flops_per_device(__import__("torch").device("cpu"), "fp32", 1e12) == (1e12, "configured")
    # another machine (CPU model, cores, torch version) or precision measures anew
    monkeypatch.setattr(flops, "cpu_fingerprint", lambda: "another CPU | 64 cores")
    monkeypatch.setattr(flops, "measure_cpu_peak_flops", lambda precision, seconds: 3e10)
    assert flops.cpu_peak_flops("fp32")[0] == 3e10
    assert len(json.loads((tmp_path / "cpu_peak_flops.json").read_text())) == 2
    # an MFU above 100% against a cached peak drops it (the run logs that): the next run measures again
    assert flops.forget_cpu_peak("fp32") is True and flops.forget_cpu_peak("fp32") is False
    monkeypatch.setattr(flops, "measure_cpu_peak_flops", lambda precision, seconds: 4e10)
    assert flops.cpu_peak_flops("fp32")[0] == 4e10


def test_a_damaged_peak_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAIN_CACHE", str(tmp_path))
    (tmp_path / "cpu_peak_flops.json").write_bytes(b"\x00garbage")
    monkeypatch.setattr(flops, "measure_cpu_peak_flops", lambda precision, seconds: 5e9)
    assert flops.cpu_peak_flops("bf16")[0] == 5e9
