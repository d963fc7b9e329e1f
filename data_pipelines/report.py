"""The run's report (``report.json``, ``report.md`` + PNG plots) and the token-shard manifest.

For every source, the report lists its stages in order -- ``read`` (the reader), ``filter:<block>`` (each
cleaning block), ``dedup`` (exact and near duplicates removed from this source), ``tokenize`` -- with
documents and bytes in and out and every removal by reason. The counts chain and add up::

    stage.docs_in == stage.docs_out + sum(stage.dropped) + sum(stage.skipped)
    next_stage.docs_in == stage.docs_out

(a reader's ``skipped`` are input records it could not read: corrupt gzip, cut WARC record...). The global
``dedup`` section has the cluster-size histogram. With decontamination on, each source has a ``decontaminate``
stage after ``dedup``, and the ``decontamination`` section lists the eval sets (records, skipped records, n-grams)
and every hit: documents per eval set and source, and each document hit (id, examples, dropped or cut). Nothing time- or machine-dependent is written, so the
report is byte-identical across reruns; timings go to ``logs/``.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from data_pipelines.executor import Part, dump_json
from data_pipelines.stats import StageStats
from pretrain.core.atomic import atomic_write
from pretrain.core.errors import DataError

log = logging.getLogger(__name__)

REPORT_FORMAT = "pipeline-report/1"
PLOTS = ("funnel.png", "removals.png", "clusters.png", "tokens.png")


def _merged(dicts: Sequence[dict[str, Any] | None]) -> StageStats:
    total = StageStats()
    for d in dicts:
        if d:
            total.merge(StageStats.from_dict(d))
    return total


def _stage_row(name: str, stats: StageStats) -> dict[str, Any]:
    return {"stage": name, **stats.to_dict()}


def build_report(
    parts: Sequence[Part],
    per_part: dict[int, dict[str, dict[str, Any] | None]],
    cluster: dict[str, Any] | None,
    tokenizer: dict[str, Any] | None,
    dedup_on: bool,
    decontam: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-able dict, from the completion markers of every part and global stage.

    ``decontam``: ``{"config": the decontamination section, "eval_sets": the index summary}`` when it ran."""
    by_source: dict[str, list[Part]] = {}
    for p in parts:
        by_source.setdefault(p.source, []).append(p)
    sources: dict[str, Any] = {}
    totals_removed: Counter = Counter()
    for name in sorted(by_source):
        ps = by_source[name]
        marks = [per_part[p.global_index] for p in ps]
        stages = [_stage_row("read", _merged([m["read"]["read"] for m in marks]))]
        n_blocks = len(marks[0]["read"]["filters"]) if marks else 0
        seen: Counter = Counter()
        for i in range(n_blocks):
            block = marks[0]["read"]["filters"][i]["name"]
            seen[block] += 1
            label = f"filter:{block}" if seen[block] == 1 else f"filter:{block}#{seen[block]}"
            stages.append(_stage_row(label, _merged([m["read"]["filters"][i]["stats"] for m in marks])))
        if dedup_on:
            stages.append(_stage_row("dedup", _merged([m["documents"]["dedup"] for m in marks])))
        if decontam is not None:
            stages.append(_stage_row("decontaminate", _merged([m["documents"]["decontam"]["stats"] for m in marks])))
        docs = sum(int(m["tokenize"]["docs"]) for m in marks)
        nbytes = sum(int(m["tokenize"]["bytes"]) for m in marks)
        tokens = sum(int(m["tokenize"]["tokens"]) for m in marks)
        tok_stats = StageStats(docs, docs, nbytes, nbytes, extra={"tokens": tokens})
        stages.append(_stage_row("tokenize", tok_stats))
        removed: Counter = Counter()
        for st in stages:
            removed.update(st["dropped"])
            removed.update(st["skipped"])
        totals_removed.update(removed)
        sources[name] = {
            "kind": ps[0].kind,
            "parts": len(ps),
            "input_files": len({f for p in ps for f in p.files}),  # a split file once, however many parts
            "input_bytes": sum(p.size for p in ps),
            "stages": stages,
            "removed": dict(sorted(removed.items())),
            "documents": docs,
            "bytes": nbytes,
            "tokens": tokens,
        }
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "sources": sources,
        "totals": {
            "records_in": sum(s["stages"][0]["docs_in"] for s in sources.values()),
            "documents": sum(s["documents"] for s in sources.values()),
            "bytes": sum(s["bytes"] for s in sources.values()),
            "tokens": sum(s["tokens"] for s in sources.values()),
            "removed": dict(sorted(totals_removed.items())),
        },
        "dedup": {"enabled": dedup_on, **(cluster or {}).get("stats", {})},
        "tokenizer": {k: v for k, v in (tokenizer or {}).items() if k != "fingerprint"},
    }
    if decontam is not None:
        report["decontamination"] = _decontamination(parts, per_part, decontam)
    return report


def _decontamination(parts: Sequence[Part], per_part: dict[int, dict[str, Any]], decontam: dict[str, Any]) -> dict:
    """Eval sets, hit counts by eval set and source, and every document hit (in plan order)."""
    cfg = decontam["config"]
    sets = decontam["eval_sets"]
    by_set: dict[str, Counter] = {name: Counter() for name in sets}
    examples: dict[str, set[int]] = {name: set() for name in sets}
    listed: list[dict[str, Any]] = []
    for p in parts:
        for hit in per_part[p.global_index]["documents"]["decontam"]["hits"]:
            for name, exs in hit["eval"].items():
                by_set.setdefault(name, Counter())[p.source] += 1
                examples.setdefault(name, set()).update(exs)
            listed.append({"source": p.source, **hit})
    return {
        "mode": cfg["mode"], "ngram": cfg["ngram"], "min_words": cfg["min_words"],
        "eval_sets": {name: {**info, "examples_hit": len(examples.get(name, ()))} for name, info in sorted(sets.items())},
        "hits": {name: dict(sorted(c.items())) for name, c in sorted(by_set.items())},
        "documents_hit": len(listed),
        "documents": listed,
    }


def write_manifest_for(layout, parts: Sequence[Part], per_part: dict[int, dict[str, Any]], tokenizer: dict[str, Any]) -> Path:
    """``<output_dir>/manifest.json`` (pretrain/data/manifest.py): the non-empty shards of every source."""
    import numpy as np

    from pretrain.core.indexed import best_dtype
    from pretrain.core.manifest import write_manifest

    corpora: dict[str, dict[str, Any]] = {}
    for p in parts:
        tok = per_part[p.global_index]["tokenize"]
        c = corpora.setdefault(p.source, {"prefixes": [], "documents": 0, "tokens": 0})
        if int(tok["docs"]) > 0:
            c["prefixes"].append(str(layout.tokens_prefix(p)))
            c["documents"] += int(tok["docs"])
            c["tokens"] += int(tok["tokens"])
    empty = sorted(n for n, c in corpora.items() if not c["prefixes"])
    for n in empty:
        log.warning("source %s has no documents left after cleaning and dedup; it is not in manifest.json", n)
        del corpora[n]
    if not corpora:
        raise DataError(f"no source has any document left after cleaning and dedup (sources: {', '.join(empty)}); "
                        "see report.json for what removed them")
    vocab = int(tokenizer["vocab_size"])
    return write_manifest(
        layout.root, tokenizer=str(layout.tokenizer_file), vocab_size=vocab, eod_id=int(tokenizer["eod_id"]),
        dtype=np.dtype(best_dtype(vocab)).name, corpora=corpora,
    )


# ----------------------------------------------------------------------------------------------- writing
def write_report(root: str | os.PathLike, report: dict[str, Any]) -> None:
    """``report.json``, ``report/*.png`` and ``report.md`` under ``root`` (each written atomically)."""
    root = Path(root)
    plots = root / "report"
    plots.mkdir(parents=True, exist_ok=True)
    for name, fig in _figures(report).items():
        buf = io.BytesIO()
        # No "Software"/date chunks: the PNG bytes depend on the data only.
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        import matplotlib.pyplot as plt

        plt.close(fig)
        atomic_write(plots / name, buf.getvalue())
    atomic_write(root / "report.json", dump_json(report))
    atomic_write(root / "report.md", render_markdown(report).encode("utf-8"))


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    srcs = sorted(report["sources"])
    figs: dict[str, Any] = {}

    # 1. documents through the stages, per source
    fig, ax = plt.subplots(figsize=(8, 4))
    points = ["records in", "read", "filtered", "deduplicated"]
    width = 0.8 / max(1, len(points))
    for j, label in enumerate(points):
        vals = []
        for s in srcs:
            st = report["sources"][s]["stages"]
            filt = [x for x in st if x["stage"].startswith("filter:")]
            dedup = [x for x in st if x["stage"] == "dedup"]
            after_filters = filt[-1]["docs_out"] if filt else st[0]["docs_out"]
            vals.append({
                "records in": st[0]["docs_in"], "read": st[0]["docs_out"], "filtered": after_filters,
                "deduplicated": dedup[0]["docs_out"] if dedup else after_filters,
            }[label])
        ax.bar([i + j * width for i in range(len(srcs))], vals, width, label=label)
    ax.set_xticks([i + width * (len(points) - 1) / 2 for i in range(len(srcs))], srcs)
    ax.set_ylabel("documents")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Documents after each stage")
    ax.legend()
    fig.tight_layout()
    figs["funnel.png"] = fig

    # 2. removals by reason (top 25 over all sources), stacked by source
    total = Counter(report["totals"]["removed"])
    reasons = [r for r, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:25]]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(reasons) + 1)))
    left = [0] * len(reasons)
    for s in srcs:
        vals = [report["sources"][s]["removed"].get(r, 0) for r in reasons]
        ax.barh(range(len(reasons)), vals, left=left, label=s)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(reasons)), reasons)
    ax.invert_yaxis()
    ax.set_xlabel("documents / records removed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Removals by reason" if reasons else "Removals by reason (none)")
    if reasons:
        ax.legend()
    fig.tight_layout()
    figs["removals.png"] = fig

    # 3. duplicate cluster sizes
    sizes = {int(k): v for k, v in (report["dedup"].get("extra", {}).get("cluster_sizes") or {}).items()}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if sizes:
        ks = sorted(sizes)
        ax.bar([str(k) for k in ks], [sizes[k] for k in ks])
        ax.set_yscale("log")
    ax.set_xlabel("documents in the cluster")
    ax.set_ylabel("clusters")
    ax.set_title("Duplicate cluster sizes" if sizes else "Duplicate cluster sizes (no duplicates)")
    fig.tight_layout()
    figs["clusters.png"] = fig

    # 4. tokens per source
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(srcs, [report["sources"][s]["tokens"] for s in srcs])
    ax.set_ylabel("tokens")
    ax.set_title("Tokens per source")
    fig.tight_layout()
    figs["tokens.png"] = fig
    return figs


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable report: overview, per-source stage tables, removals, dedup, tokenizer, plots."""
    out: list[str] = ["# Data pipeline report", ""]
    t = report["totals"]
    out += [
        f"{t['records_in']:,} input records -> {t['documents']:,} documents ({_mb(t['bytes'])} MB), "
        f"{t['tokens']:,} tokens.", "",
        "| source | kind | input files | input MB | records in | documents out | kept % | MB out | tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["sources"].items():
        rin = s["stages"][0]["docs_in"]
        kept = 100.0 * s["documents"] / rin if rin else 0.0
        out.append(
            f"| {name} | {s['kind']} | {s['input_files']:,} | {_mb(s['input_bytes'])} | {rin:,} | {s['documents']:,} | "
            f"{kept:.1f} | {_mb(s['bytes'])} | {s['tokens']:,} |"
        )
    out += ["", "![documents after each stage](report/funnel.png)", ""]
    for name, s in report["sources"].items():
        out += [f"## {name} ({s['kind']})", "",
                "| stage | docs in | docs out | MB in | MB out | removed (reason: count) | modified |",
                "|---|---:|---:|---:|---:|---|---|"]
        for st in s["stages"]:
            removed = {**st["dropped"], **{f"{k} (skipped)": v for k, v in st["skipped"].items()}}
            rm = ", ".join(f"{k}: {v:,}" for k, v in sorted(removed.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"
            mod = ", ".join(f"{k}: {v:,}" for k, v in sorted(st["modified"].items())) or "-"
            out.append(
                f"| {st['stage']} | {st['docs_in']:,} | {st['docs_out']:,} | {_mb(st['bytes_in'])} | {_mb(st['bytes_out'])} | "
                f"{rm} | {mod} |"
            )
        out.append("")
    out += ["## Removals by reason", "", "![removals by reason](report/removals.png)", "",
            "| reason | " + " | ".join(report["sources"]) + " | total |",
            "|---|" + "---:|" * (len(report["sources"]) + 1)]
    for reason, n in sorted(t["removed"].items(), key=lambda kv: (-kv[1], kv[0])):
        per = " | ".join(f"{s['removed'].get(reason, 0):,}" for s in report["sources"].values())
        out.append(f"| {reason} | {per} | {n:,} |")
    out.append("")
    d = report["dedup"]
    out += ["## Deduplication", ""]
    if not d.get("enabled"):
        out += ["Deduplication was off (`dedup=none`).", ""]
    else:
        extra = d.get("extra", {})
        dropped = d.get("dropped", {})
        out += [
            f"{d.get('docs_in', 0):,} documents in, {d.get('docs_out', 0):,} kept; "
            f"{dropped.get('exact_duplicate', 0):,} exact and {dropped.get('near_duplicate', 0):,} near duplicates "
            f"removed in {extra.get('clusters', 0):,} clusters.", "",
        ]
        sizes = sorted((extra.get("cluster_sizes") or {}).items(), key=lambda kv: int(kv[0]))
        if sizes:
            out += ["| cluster size | clusters |", "|---:|---:|", *(f"| {k} | {v:,} |" for k, v in sizes), ""]
        out += ["![duplicate cluster sizes](report/clusters.png)", ""]
    if "decontamination" in report:
        out += _decontamination_md(report["decontamination"], list(report["sources"]))
    tok = report["tokenizer"]
    out += ["## Tokenizer", ""]
    if tok:
        origin = f"given file `{tok['given']}`" if tok.get("given") else (
            f"trained on {tok.get('train_docs', 0):,} documents ({_mb(tok.get('train_bytes', 0))} MB)")
        out += [f"`{tok.get('kind')}`, vocabulary {tok.get('vocab_size', 0):,}, end of document `{tok.get('eod_token')}` "
                f"= {tok.get('eod_id')}; {origin}. Saved as `tokenizer/tokenizer.json`; shards in `tokens/`, "
                "listed in `manifest.json`.", ""]
    out += ["![tokens per source](report/tokens.png)", ""]
    return "\n".join(out)


def _decontamination_md(d: dict[str, Any], sources: list[str], shown: int = 50) -> list[str]:
    out = ["## Decontamination", "",
           f"Mode `{d['mode']}`, {d['ngram']}-grams of normalised words; eval texts of {d['min_words']} to "
           f"{d['ngram'] - 1} words are matched whole. {d['documents_hit']:,} documents hit.", "",
           "| eval set | file | records | skipped | texts | n-grams | short texts | too short | examples hit | "
           + " | ".join(sources) + " |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(sources)]
    for name, e in d["eval_sets"].items():
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(e["skipped"].items())) or "0"
        per = " | ".join(f"{d['hits'].get(name, {}).get(s, 0):,}" for s in sources)
        out.append(f"| {name} | `{e['file']}` | {e['records']:,} | {skipped} | {e['texts']:,} | {e['ngrams']:,} | "
                   f"{e['short_texts']:,} | {e['too_short']:,} | {e['examples_hit']:,} | {per} |")
    out.append("")
    if d["documents"]:
        out += ["| source | document | eval set: examples | action |", "|---|---|---|---|"]
        for h in d["documents"][:shown]:
            ev = "; ".join(f"{k}: {', '.join(map(str, v[:10]))}{' ...' if len(v) > 10 else ''}"
                           for k, v in h["eval"].items())
            out.append(f"| {h['source']} | `{h['id']}` | {ev} | {h['action']} |")
        if len(d["documents"]) > shown:
            out.append(f"\n... and {len(d['documents']) - shown:,} more in report.json (`decontamination.documents`).")
        out.append("")
    return out
