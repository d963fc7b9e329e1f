"""``python -m pretrain.ablate``: two pipeline variants of the bundled samples (with and without dedup), one
tokenizer, one held-out validation folder, two tiny proxies of a few steps, one table and one plot.

(The test builds the validation folder with the pipeline in-process; ``pretrain`` itself never imports
``data_pipelines``, the command runs the pipeline as a subprocess.)"""

from __future__ import annotations

import json
import re

from hydra import compose, initialize_config_dir

from conftest import REPO, TINY, read_metrics
from data_pipelines.run import run_pipeline


def test_an_ablation_of_two_variants_runs_end_to_end(tmp_path, monkeypatch, cache_dir, capsys):
    from pretrain import ablate

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # the held-out folder (here: the samples without filters) and its tokenizer, given to the command; the two
    # variants are built by it, in parallel, with that tokenizer
    valid = tmp_path / "valid"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("pipeline", overrides=[f"output_dir={valid}", "filters=none", "tokenizer.vocab_size=1000",
                                             "executor.progress=false"])
    assert run_pipeline(cfg).complete
    tokenizer = valid / "tokenizer" / "tokenizer.json"
    out = tmp_path / "ablation"
    argv = ["--out", str(out), "--variant", "dedup=", "--variant", "no_dedup=dedup=none", "--jobs", "2",
            "--tokenizer", str(tokenizer), "--valid", str(valid), *TINY, "trainer.max_steps=3"]
    assert ablate.main(argv) == 0
    captured = capsys.readouterr()
    sources = ["books", "code", "web", "wiki"]
    header = re.search(r"^\| variant +\|(.*)\|$", captured.out, re.M)
    assert header and [c.strip() for c in header.group(1).split("|")] == [*sources, "total", "tokens"]
    assert re.search(r"^\| dedup +\|( +\d+\.\d{4} \|){5} +[\d,]+ \|$", captured.out, re.M), captured.out
    assert re.search(r"^\| no_dedup +\|( +\d+\.\d{4} \|){5} +[\d,]+ \|$", captured.out, re.M), captured.out
    assert "variant 1/2 'dedup'" in captured.err and "variant 2/2 'no_dedup'" in captured.err  # progress
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG" and "| no_dedup |" in (out / "ablation.md").read_text()

    results = {r["variant"]: r for r in json.loads((out / "ablation.json").read_text())["results"]}
    assert len({r["consumed_tokens"] for r in results.values()}) == 1  # one token budget
    for name, r in results.items():  # the table is the last evaluation of each run, against the same validation set
        last = [m for m in read_metrics(out / "runs" / name) if "val_loss" in m][-1]
        assert last["step"] == 3 and r["val_loss"] == last["val_loss"]
        assert r["val_loss_per_source"] == {s: last[f"val_loss/{s}"] for s in sources}
    # the variants differ in their data only: one tokenizer file, dedup on in one, off in the other
    toks = {(out / "data" / n / "tokenizer" / "tokenizer.json").read_bytes() for n in ("dedup", "no_dedup")}
    assert toks == {tokenizer.read_bytes()}
    stages = {n: {s["stage"] for s in json.loads((out / "data" / n / "report.json").read_text())["sources"]["web"]
                  ["stages"]} for n in ("dedup", "no_dedup")}
    assert "dedup" in stages["dedup"] and "dedup" not in stages["no_dedup"]
    assert results["dedup"]["val_loss"] != results["no_dedup"]["val_loss"]
    # the second proxy is the run a plain training of its data gives: nothing leaks from the first one
    from pretrain.trainer import Trainer

    alone = tmp_path / "alone"
    Trainer(ablate.compose_train([*TINY, "trainer.max_steps=3", "trainer.eval_interval=3",
                                  f"data.path={out / 'data' / 'no_dedup'}", f"data.valid_path={valid}",
                                  f"run_dir={alone}"])).fit()
    losses = lambda d: [(m["step"], m.get("loss"), m.get("val_loss")) for m in read_metrics(d)]  # noqa: E731
    assert losses(alone) == losses(out / "runs" / "no_dedup")

    # a given folder with another tokenizer is refused before any training, naming it
    other = tmp_path / "other"
    (other / "tokenizer").mkdir(parents=True)
    manifest = json.loads((out / "data" / "no_dedup" / "manifest.json").read_text())
    tok = json.loads((out / "data" / "no_dedup" / "tokenizer" / "tokenizer.json").read_text())
    tok["added_tokens"][0]["content"] = "<|other|>"
    (other / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok))
    manifest["tokenizer"] = str(other / "tokenizer" / "tokenizer.json")
    (other / "manifest.json").write_text(json.dumps(manifest))
    bad = ["--out", str(tmp_path / "bad"), "--data", f"a={out / 'data' / 'dedup'}", "--data", f"b={other}",
           "--valid", str(valid), *TINY]
    assert ablate.main(bad) == 2
    err = capsys.readouterr().err
    assert "variant 'b'" in err and "another tokenizer" in err and not (tmp_path / "bad" / "runs").exists()
