"""Proxy ablations: train one small model per data-pipeline variant and compare their validation losses per source.

    python -m pretrain.ablate --out runs/ablation \\
        --variant dedup= --variant no_dedup="dedup=none" --variant no_filters="filters=none" \\
        --valid-pipeline "sources=none +sources.held='{kind: jsonl, paths: [/data/held/*.jsonl]}'" \\
        experiment=gpt_tiny trainer.max_steps=500

Each ``--variant NAME=OVERRIDES`` is a data-pipeline run (``python -m data_pipelines.run`` in a subprocess, into
``<out>/data/NAME``; ``--pipeline`` holds overrides common to all, e.g. the sources); ``--data NAME=DIR`` takes a
folder the pipeline already wrote instead. What is held fixed, so that only the data differs:

* **one tokenizer**: ``--tokenizer FILE``, or the one the first built variant trains; every other pipeline run
  gets it as ``tokenizer.path`` (given folders must already share one: their tokenizer files are compared);
* **one validation set**: ``--valid DIR`` or ``--valid-pipeline OVERRIDES`` (built like a variant), given to every
  run as ``data.valid_path``: held-out data, so every document of a variant trains and all are scored alike;
* **the model shape, seed and token budget**: the training overrides (after the options) are the same for every
  variant, and the runs' consumed tokens are checked to agree.

The proxies train one after another in this process (``Trainer(cfg).fit()`` into ``<out>/runs/NAME``); a variant
whose run finished with the same settings is not trained again. The last evaluation of each run
(``val_loss/<source>`` and the weighted total ``val_loss`` in ``metrics.jsonl``) goes into one table, printed and
written to ``<out>/ablation.md`` and ``ablation.json``, and one plot, ``<out>/ablation.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pretrain.core.atomic import atomic_write
from pretrain.core.errors import ConfigError, DataError, UserError

log = logging.getLogger("pretrain.ablate")
REPO = Path(__file__).resolve().parents[1]
RESULT = "ablation_result.json"


@dataclass
class Variant:
    name: str
    overrides: list[str] | None = None  # pipeline overrides: built by this command
    folder: Path | None = None  # or a given pipeline output
    result: dict[str, Any] = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"[ablate] {msg}", file=sys.stderr, flush=True)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------- the data
def _tokenizer_of(folder: Path) -> Path:
    from pretrain.core.manifest import read_manifest

    m = read_manifest(folder)
    if m.tokenizer is None or not Path(m.tokenizer).is_file():
        raise DataError(f"{folder / 'manifest.json'} names no tokenizer file; the variants must share one tokenizer")
    return Path(m.tokenizer)


def build_data(name: str, out: Path, overrides: Sequence[str], tokenizer: Path | None, logs: Path) -> Path:
    """One pipeline run (a subprocess: ``pretrain`` never imports ``data_pipelines``); complete parts are
    skipped by the pipeline itself, so a rerun of the ablation costs nothing here."""
    cmd = [sys.executable, "-m", "data_pipelines.run", f"output_dir={out}", *overrides, "executor.progress=false"]
    if tokenizer is not None:
        cmd.append(f"tokenizer.path={tokenizer}")
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{name}.pipeline.log"
    _say(f"{name}: building its data: {shlex.join(cmd[1:])} (log: {log_file})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with open(log_file, "w") as f:
        # in the caller's directory: relative input paths in the overrides mean what they mean on a command line
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise DataError(f"the data pipeline for variant '{name}' failed (exit {proc.returncode}): {tail[0]}; "
                        f"see {log_file}")
    return out


def prepare_data(variants: list[Variant], valid: Variant, out: Path, common: list[str], tokenizer: Path | None,
                 jobs: int = 1) -> Path:
    """Every variant's folder and the validation folder, all with one tokenizer; returns that tokenizer.

    Builds run ``jobs`` at a time; without a tokenizer, the first build trains it alone and the others follow."""
    from concurrent.futures import ThreadPoolExecutor

    logs = out / "logs"
    given = [v for v in [*variants, valid] if v.folder is not None]
    for v in given:
        if not (v.folder / "manifest.json").is_file():
            raise ConfigError(f"--data {v.name}={v.folder}: no manifest.json there; point it at a folder written by "
                              "`python -m data_pipelines.run`")
    if tokenizer is None and given:
        tokenizer = _tokenizer_of(given[0].folder)
    todo = [v for v in [*variants, valid] if v.folder is None]

    def build(v: Variant) -> None:
        v.folder = build_data(v.name, out / "data" / v.name, [*common, *v.overrides], tokenizer, logs)

    if todo and tokenizer is None:  # the first built variant trains it: every later one uses it
        build(todo[0])
        tokenizer = _tokenizer_of(todo[0].folder)
        todo = todo[1:]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for f in [pool.submit(build, v) for v in todo]:
            f.result()
    want = _digest(tokenizer)
    for v in [*variants, valid]:
        tok = _tokenizer_of(v.folder)
        if _digest(tok) != want:
            raise DataError(f"variant '{v.name}' ({v.folder}) has another tokenizer ({tok}) than {tokenizer}; "
                            f"rebuild it with tokenizer.path={tokenizer} so that losses compare")
    return tokenizer


# --------------------------------------------------------------------------------------------- the training
def compose_train(overrides: Sequence[str]):
    """``conf/train.yaml`` with the trainer's schema, as ``python -m pretrain.train`` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from pretrain.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"training overrides: {str(e).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()


def last_evaluation(run_dir: Path) -> dict[str, Any]:
    """The last record of ``metrics.jsonl`` with ``val_loss`` (and its ``val_loss/<source>`` keys)."""
    from pretrain.metrics import METRICS_FILE

    path = run_dir / METRICS_FILE
    evals = [r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip()) if "val_loss" in r]
    if not evals:
        raise DataError(f"{path} has no evaluation record; the run evaluated nothing (trainer.eval_interval)")
    return evals[-1]


def train_variant(v: Variant, valid: Path, overrides: Sequence[str], out: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from pretrain.trainer import Trainer

    run_dir = out / "runs" / v.name
    args = [*overrides, f"data.path={v.folder}", f"data.valid_path={valid}", f"run_dir={run_dir}"]
    cfg = compose_train(args)
    if int(cfg.trainer.eval_interval) <= 0:  # the comparison needs an evaluation: at least the last step
        cfg.trainer.eval_interval = int(cfg.trainer.max_steps)
    settings = {"overrides": list(overrides), "config": OmegaConf.to_container(cfg, resolve=True),
                "data": _digest(v.folder / "manifest.json"), "valid": _digest(valid / "manifest.json")}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    done = run_dir / RESULT
    if done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("key") == key:
            _say(f"{v.name}: already trained with these settings ({done}); not trained again")
            return prev
        raise ConfigError(f"{run_dir} holds a proxy trained with other settings or data; remove it or use another "
                          "--out")
    if (run_dir / "checkpoints").exists() or (run_dir / "metrics.jsonl").exists():
        _say(f"{v.name}: resuming the unfinished run in {run_dir}")
    summary = Trainer(cfg).fit()
    record = last_evaluation(run_dir)
    losses = {k.split("/", 1)[1]: float(val) for k, val in record.items() if k.startswith("val_loss/")}
    result = {"key": key, "variant": v.name, "data": str(v.folder), "step": record["step"],
              "val_loss": float(record["val_loss"]), "val_loss_per_source": dict(sorted(losses.items())),
              "consumed_tokens": summary["consumed_tokens"], "parameters": summary["parameters"],
              "wall_time_s": summary["wall_time_s"]}
    atomic_write(done, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    return result


# ----------------------------------------------------------------------------------------------- the results
def table(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    sources = sorted({s for r in results for s in r["val_loss_per_source"]})
    header = ["variant", *sources, "total", "tokens"]
    rows = []
    for r in results:
        per = r["val_loss_per_source"]
        rows.append([r["variant"], *(f"{per[s]:.4f}" if s in per else "-" for s in sources), f"{r['val_loss']:.4f}",
                     f"{r['consumed_tokens']:,}"])
    return header, rows


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                          for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ("-" if i == 0 else ":")) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({s for r in results for s in r["val_loss_per_source"]})
    groups = [*sources, "total"]
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 4))
    for j, r in enumerate(results):
        vals = [r["val_loss_per_source"].get(s, float("nan")) for s in sources] + [r["val_loss"]]
        ax.bar([i + j * width for i in range(len(groups))], vals, width, label=r["variant"])
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(groups))], groups)
    lo = min(min([*r["val_loss_per_source"].values(), r["val_loss"]]) for r in results)
    ax.set_ylim(bottom=max(0.0, lo - 0.5))
    ax.set_ylabel("validation loss (lower is better)")
    ax.set_title("Proxy ablation: validation loss per source")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_results(out: Path, results: list[dict[str, Any]], tokenizer: Path, valid: Path) -> str:
    header, rows = table(results)
    text = render_table(header, rows)
    md = ["# Proxy ablation", "", f"Validation set `{valid}` (per source, `val_loss/<source>`; total = `val_loss`, "
          f"weighted by the validation set's token shares). One tokenizer: `{tokenizer}`.", "", text, "",
          "![validation loss per source](ablation.png)", ""]
    atomic_write(out / "ablation.md", "\n".join(md).encode())
    atomic_write(out / "ablation.json", (json.dumps({"valid": str(valid), "tokenizer": str(tokenizer),
                                                      "results": results}, indent=1, sort_keys=True) + "\n").encode())
    plot(results, out / "ablation.png")
    return text


# ------------------------------------------------------------------------------------------------ the command
def _named(values: Sequence[str], flag: str) -> list[tuple[str, str]]:
    out, seen = [], set()
    for v in values:
        name, eq, rest = v.partition("=")
        if not eq or not name.strip():
            raise ConfigError(f"{flag} {v!r}: expected NAME=VALUE")
        if name in seen:
            raise ConfigError(f"{flag} {v!r}: the variant name '{name}' is used twice")
        seen.add(name)
        out.append((name, rest))
    return out


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain.ablate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the ablation folder (data/, runs/, ablation.{md,json,png})")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="a pipeline variant built here: data_pipelines.run overrides (may be empty)")
    p.add_argument("--data", action="append", default=[], metavar="NAME=DIR", help="a variant already built")
    p.add_argument("--pipeline", default="", metavar="OVERRIDES", help="pipeline overrides common to built variants")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                   help="pipeline builds at a time (default: min(4, CPUs))")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json for every pipeline run (default: the first "
                                                     "variant's)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--valid", default=None, metavar="DIR", help="the held-out validation folder (data.valid_path)")
    g.add_argument("--valid-pipeline", default=None, metavar="OVERRIDES", help="build the validation folder")
    p.add_argument("overrides", nargs="*", help="training overrides, the same for every variant")
    args = p.parse_intermixed_args(list(argv))
    return args


def run(argv: Sequence[str]) -> list[dict[str, Any]]:
    args = parse(argv)
    out = Path(args.out).absolute()
    variants = [Variant(n, overrides=shlex.split(o)) for n, o in _named(args.variant, "--variant")]
    variants += [Variant(n, folder=Path(d).expanduser().absolute()) for n, d in _named(args.data, "--data")]
    names = [v.name for v in variants]
    if len(variants) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"give at least two variants with distinct names (--variant/--data), got {names}")
    bad = [o for o in args.overrides if o.split("=", 1)[0].lstrip("+~") in ("data.path", "data.valid_path", "run_dir")]
    if bad:
        raise ConfigError(f"{bad[0]}: the ablation sets data.path, data.valid_path and run_dir per variant")
    tokenizer = Path(args.tokenizer).absolute() if args.tokenizer else None
    if tokenizer is not None and not tokenizer.is_file():
        raise ConfigError(f"--tokenizer {tokenizer}: no such file")
    if args.valid is not None:
        valid = Variant("valid", folder=Path(args.valid).expanduser().absolute())
    else:
        valid = Variant("valid", overrides=shlex.split(args.valid_pipeline))
    compose_train(args.overrides)  # a bad training override fails before any pipeline runs
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokenizer = prepare_data(variants, valid, out, shlex.split(args.pipeline), tokenizer, args.jobs)
    _say(f"data ready in {time.perf_counter() - t0:.1f} s: {len(variants)} variants, validation {valid.folder}, "
         f"tokenizer {tokenizer}")
    results = []
    for i, v in enumerate(variants):
        t = time.perf_counter()
        _say(f"variant {i + 1}/{len(variants)} '{v.name}': training on {v.folder}")
        v.result = train_variant(v, valid.folder, args.overrides, out)
        results.append(v.result)
        took = time.perf_counter() - t
        eta = took * (len(variants) - i - 1)  # the last run's time: the first one also paid for the imports
        _say(f"variant {i + 1}/{len(variants)} '{v.name}': val_loss {v.result['val_loss']:.4f} at step "
             f"{v.result['step']} ({took:.1f} s; ETA {eta:.0f} s for the rest)")
    budgets = {r["variant"]: r["consumed_tokens"] for r in results}
    if len(set(budgets.values())) != 1:
        raise DataError(f"the proxies trained on different token budgets {budgets}; they are not comparable")
    text = write_results(out, results, tokenizer, valid.folder)
    print(text, flush=True)
    _say(f"done in {time.perf_counter() - t0:.1f} s: {out / 'ablation.md'}, {out / 'ablation.png'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
