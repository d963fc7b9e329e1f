"""The table of end-to-end runs (tests/e2e.py): every launch of every run composes, and the session runner trains
each run once, resolves folder placeholders, runs dependencies first and remembers failures."""

from __future__ import annotations

import subprocess

import pytest

import e2e


@pytest.mark.parametrize("name", sorted(e2e.RUNS))
def test_every_launch_of_every_run_composes(compose_cfg, name):
    """A typo in the table fails here in a second, not after the slow tests have trained the runs before it."""
    spec = e2e.RUNS[name]
    for leg in spec.legs:
        overrides = [e2e._PLACEHOLDER.sub("/tmp/x", o) for o in (*spec.overrides, *leg.overrides)]
        cfg = compose_cfg(*overrides, "run_dir=/tmp/x")
        assert cfg.trainer.max_steps > 0
        assert (leg.nproc or spec.nproc) in (1, 2, 4)


def test_runner_trains_each_run_once_dependencies_first(tmp_path, monkeypatch):
    calls = []

    def fake_run_train(overrides, env, nproc=1, **kw):
        calls.append((overrides, env.get("X"), nproc))
        return subprocess.CompletedProcess(overrides, 0, stdout=f"leg {len(calls)}", stderr="")

    monkeypatch.setattr(e2e, "run_train", fake_run_train)
    runs = {
        "base": e2e.run("a=1", nproc=2, legs=[e2e.leg("s=3"), e2e.leg("s=6", nproc=1)]),
        "child": e2e.run("resume={run:base}/ckpt", "dir={dir}/c", env={"X": "y"}),
    }
    runner = e2e.Runner(tmp_path, {"X": "default"}, runs)
    child = runner("child")
    assert child.dir == tmp_path / "child" and [o.stdout for o in child.outputs] == ["leg 3"]
    assert calls == [
        (["a=1", "s=3", f"run_dir={tmp_path / 'base'}"], "default", 2),
        (["a=1", "s=6", f"run_dir={tmp_path / 'base'}"], "default", 1),
        ([f"resume={tmp_path / 'base'}/ckpt", f"dir={tmp_path / 'child'}/c", f"run_dir={tmp_path / 'child'}"], "y", 1),
    ]
    assert runner("base").outputs[-1].stdout == "leg 2" and runner("child") is child
    assert len(calls) == 3  # nothing trained twice


def test_a_failed_run_fails_every_test_that_needs_it_without_training_again(tmp_path, monkeypatch):
    calls = []

    def failing(overrides, env, nproc=1, **kw):
        calls.append(overrides)
        raise AssertionError("training failed (1): boom")

    monkeypatch.setattr(e2e, "run_train", failing)
    runner = e2e.Runner(tmp_path, {}, {"bad": e2e.run("a=1")})
    for _ in range(2):
        with pytest.raises(pytest.fail.Exception, match="end-to-end run 'bad' failed:\ntraining failed"):
            runner("bad")
    assert len(calls) == 1
    with pytest.raises(KeyError, match="no end-to-end run 'nope' in tests/e2e.py RUNS"):
        runner("nope")


def test_runs_live_in_the_session_folder(e2e_run):
    """The fixture: one runner for the session, its runs under one temporary folder."""
    assert isinstance(e2e_run, e2e.Runner) and e2e_run.runs is e2e.RUNS
    assert e2e_run.root.is_dir() and e2e_run.root.name.startswith("e2e")


def test_launch_ports_of_two_xdist_workers_are_apart_and_outside_the_ephemeral_range(monkeypatch):
    import ports

    slices = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        slices.append(set(ports._slice()))
    assert slices[0] and slices[1] and not slices[0] & slices[1]
    assert max(slices[0] | slices[1]) < ports._ephemeral_start()
    port = ports.free_port()
    assert port in ports._SLICE


def test_workers_sharing_a_root_train_each_run_once_and_share_failures(tmp_path, monkeypatch):
    """Under pytest-xdist every worker has its own Runner over the same root: the first to need a run trains it,
    the others read its outputs (or its failure) from the outcome record."""
    calls = []

    def fake_run_train(overrides, env, nproc=1, **kw):
        calls.append(overrides)
        if "bad=1" in overrides:
            raise AssertionError("training failed (1): boom")
        return subprocess.CompletedProcess(overrides, 0, stdout="trained", stderr="warn")

    monkeypatch.setattr(e2e, "run_train", fake_run_train)
    runs = {"good": e2e.run("a=1"), "bad": e2e.run("bad=1")}
    first, second = (e2e.Runner(tmp_path, {}, runs, shared=True) for _ in range(2))
    assert first("good").outputs[0].stdout == "trained"
    got = second("good")
    assert got.dir == tmp_path / "good" and (got.outputs[0].stdout, got.outputs[0].stderr) == ("trained", "warn")
    for runner in (first, second):
        with pytest.raises(pytest.fail.Exception, match="end-to-end run 'bad' failed:\ntraining failed"):
            runner("bad")
    assert len(calls) == 2  # each run trained by one worker only
