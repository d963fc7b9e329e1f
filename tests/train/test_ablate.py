"""``python -m pretrain.ablate``: two pipeline variants of the bundled samples (with and without dedup), one
tokenizer, one held-out validation folder, two tiny proxies of a few steps, one table and one plot."""

from __future__ import annotations

import json
import re

from conftest import TINY, read_metrics


def test_an_ablation_of_two_variants_runs_end_to_end(tmp_path, monkeypatch, cache_dir, capsys):
    from pretrain import ablate

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "ablation"
    argv = ["--out", str(out), "--variant", "dedup=", "--variant", "no_dedup=dedup=none",
            "--pipeline", "tokenizer.vocab_size=1000", "--valid-pipeline", "filters=none",
            *TINY, "trainer.max_steps=3"]
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
    toks = {(out / "data" / n / "tokenizer" / "tokenizer.json").read_bytes() for n in ("dedup", "no_dedup", "valid")}
    assert len(toks) == 1
    stages = {n: {s["stage"] for s in json.loads((out / "data" / n / "report.json").read_text())["sources"]["web"]
                  ["stages"]} for n in ("dedup", "no_dedup")}
    assert "dedup" in stages["dedup"] and "dedup" not in stages["no_dedup"]
    assert results["dedup"]["val_loss"] != results["no_dedup"]["val_loss"]

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
           "--valid", str(out / "data" / "valid"), *TINY]
    assert ablate.main(bad) == 2
    err = capsys.readouterr().err
    assert "variant 'b'" in err and "another tokenizer" in err and not (tmp_path / "bad" / "runs").exists()
