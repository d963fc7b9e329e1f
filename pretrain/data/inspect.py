"""Which documents a training step was cut from.

    python -m pretrain.data.inspect <run_dir> --step N [--rank R] [--chars 120] [--json]

Rebuilds the run's training data from ``<run_dir>/config.yaml`` as the Trainer does (the same data lines of
:class:`pretrain.trainer.Trainer`, the same index cache, the same blend or ``data.schedule``, with the mixture
history of the latest checkpoint), without a process group or a model. Then: step N -> the global samples of
its batch (from ``metrics.jsonl``'s ``consumed_samples``, so resumes with another global batch are followed) ->
the samples data-parallel rank R read (the sampler's strides; all ranks by default) -> the corpus and its sample
(the blend) -> the token ranges of the documents it was cut from -> each document's provenance record (the
sidecar beside its shard: source, input file, id, URL/title, pipeline fingerprint) and its first characters.

It also recomputes the step's batch checksum (the sum of the token ids the step trained on, after the model
family's objective) and prints it beside the one ``metrics.jsonl`` logged: when they agree, the documents
listed are exactly what the step read. A shard without a sidecar prints "no provenance" for its documents.
:func:`inspect_step` returns the same as data, for tools (the guardrails use it to name the samples behind
a loss spike).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from pretrain.core.errors import DataError, UserError
from pretrain.core.provenance import read_provenance


@dataclass
class Piece:
    """One document's token range inside a sample."""

    shard: str  # the shard's prefix
    document: int  # document number within the shard (= its provenance record)
    start: int  # token range of the document that the sample holds
    end: int
    length: int  # tokens of the whole document
    provenance: dict[str, Any] | None  # the sidecar record, None when the shard has no sidecar
    text: str | None = None  # the document's text (detokenized), when a tokenizer is known


@dataclass
class SampleInfo:
    rank: int  # data-parallel rank that read it
    micro_batch: int  # position in the step's gradient accumulation
    index: int  # global sample index
    source: str  # corpus name
    corpus_sample: int  # sample index within that corpus's training split
    tokens: np.ndarray  # the sample's tokens (seq_length + 1)
    pieces: list[Piece] = field(default_factory=list)


@dataclass
class StepInfo:
    step: int
    first_sample: int
    global_batch_size: int
    micro_batch_size: int
    data_parallel_size: int
    samples: list[SampleInfo]
    checksum: int  # recomputed over the samples listed (all ranks: comparable with metrics.jsonl)
    logged_checksum: int | None  # metrics.jsonl's batch_checksum of the step (None: not logged)


class RunData:
    """A run's training data, rebuilt from its directory."""

    def __init__(self, run_dir: str | Path):
        from pretrain.trainer import Trainer

        self.run_dir = Path(run_dir)
        cfg_file = self.run_dir / "config.yaml"
        if not cfg_file.is_file():
            raise DataError(f"{cfg_file} does not exist: {self.run_dir} is not a run directory of pretrain.train")
        self.cfg = OmegaConf.load(cfg_file)
        layout = self.run_dir / "deepspeed.json"  # the layout of the run's last launch
        if not layout.is_file():
            raise DataError(f"{layout} does not exist: the run never started training")
        ds = json.loads(layout.read_text())
        self.micro = int(ds["train_micro_batch_size_per_gpu"])
        self.accum = int(ds["gradient_accumulation_steps"])
        self.global_batch = int(ds["train_batch_size"])
        self.dp = self.global_batch // (self.micro * self.accum)
        self.records = self._metrics()
        self.state = self._latest_state()

        trainer = Trainer(self.cfg)  # its data planning only: family, tokenizer, model arguments
        trainer.batch = SimpleNamespace(micro_batch_size=self.micro, data_parallel_size=self.dp,
                                        global_batch_size=self.global_batch)
        trainer._plan_data()
        self.family, self.args, self.tokenizer = trainer.family, trainer.args, trainer.tokenizer
        self.trainer = trainer

    def _metrics(self) -> dict[int, dict]:
        path = self.run_dir / "metrics.jsonl"
        out: dict[int, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    if "consumed_samples" in r:
                        out[int(r["step"])] = r
        return out

    def _latest_state(self) -> dict[str, Any]:
        ckpt_dir = Path(self.cfg.checkpoint.dir or self.run_dir / "checkpoints")
        latest = ckpt_dir / "latest"
        if latest.is_file():
            state = ckpt_dir / latest.read_text().strip() / "trainer_state.json"
            if state.is_file():
                return json.loads(state.read_text())
        return {}

    def step_range(self, step: int) -> tuple[int, int]:
        """(first global sample, global batch) of ``step``."""
        rec = self.records.get(step)
        if rec is None:
            return (step - 1) * self.global_batch, self.global_batch
        end = int(rec["consumed_samples"])
        prev = self.records.get(step - 1)
        gbs = end - int(prev["consumed_samples"]) if prev is not None else (end if step == 1 else self.global_batch)
        return end - gbs, gbs

    def datasets(self, num_samples: int):
        from pretrain.data.dataset import build_datasets
        from pretrain.data.schedule import plan_mixture

        cfg = self.cfg
        mixture = plan_mixture(cfg.data, self.state, self.family.tokens_per_sample(self.args), self.global_batch)
        return build_datasets(cfg.data, seq_length=self.family.sample_length(self.args) - 1, seed=cfg.seed,
                              num_train_samples=num_samples, num_valid_samples=0,
                              cache_dir=cfg.data.index_cache_dir or str(self.run_dir / "data_index"), mixture=mixture)


def _decoder(path: Path | None):
    if path is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def _document_pieces(corpus, pieces: list[tuple[int, int, int]], decode, eod: int) -> list[Piece]:
    out = []
    offsets = corpus.seq_offsets
    for seq, start, end in pieces:
        k = int(np.searchsorted(offsets, seq, side="right")) - 1
        shard, local = corpus.shards[k], int(seq - offsets[k])
        doc = int(np.searchsorted(shard.doc_idx, local, side="right")) - 1
        first, last = int(shard.doc_idx[doc]), int(shard.doc_idx[doc + 1])
        sizes = np.asarray(shard.sizes[first:last], dtype=np.int64)
        before = int(sizes[: local - first].sum())
        prov = read_provenance(shard.prefix)
        record = prov[doc] if prov is not None and doc < len(prov) else None
        text = None
        if decode is not None:
            ids = np.concatenate([shard.get(s) for s in range(first, last)]).tolist()
            if ids and ids[-1] == eod:  # the separator the tokenizer appended, not the document's text
                ids = ids[:-1]
            text = decode.decode(ids, skip_special_tokens=False)
        out.append(Piece(str(shard.prefix), doc, before + start, before + end, int(sizes.sum()), record, text))
    return out


def inspect_step(run_dir: str | Path, step: int, rank: int | None = None, run: RunData | None = None) -> StepInfo:
    """The samples (and their documents) step ``step`` of the run trained on; ``rank``: one data-parallel rank's."""
    run = run or RunData(run_dir)
    if step < 1:
        raise DataError(f"--step {step}: steps count from 1")
    last = max([*run.records, int(run.state.get("step", 0))], default=0)
    if step > last:
        raise DataError(f"--step {step}: the run in {run.run_dir} has trained {last} steps")
    if rank is not None and not 0 <= rank < run.dp:
        raise DataError(f"--rank {rank}: the run has data-parallel ranks 0..{run.dp - 1}")
    first, gbs = run.step_range(step)
    bundle = run.datasets(first + gbs)
    train = bundle.train
    transform = run.family.make_transform(run.args, run.tokenizer, run.cfg.seed)
    decode = _decoder(bundle.tokenizer_path)
    stride = run.micro * run.dp
    samples, checksum = [], 0
    for a in range(gbs // stride):
        for r in range(run.dp):
            lo = first + a * stride + r * run.micro
            for i in range(lo, lo + run.micro):
                k, m = train.blend[i]
                part = train.parts[k]
                tokens = part.sample(m)
                ids = tokens[:-1] if transform is None else transform(i, tokens)["input_ids"]
                checksum += int(np.asarray(ids, dtype=np.int64).sum())
                if rank is not None and r != rank:
                    continue
                samples.append(SampleInfo(r, a, i, part.corpus.name, m, tokens,
                                          _document_pieces(part.corpus, part.pieces(m), decode, bundle.eod_id)))
    rec = run.records.get(step)
    return StepInfo(step, first, gbs, run.micro, run.dp, samples, checksum,
                    int(rec["batch_checksum"]) if rec and "batch_checksum" in rec else None)


def _origin(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "no provenance"
    where = rec.get("url") or rec.get("title") or ""
    parts = [f"source={rec.get('source')}", f"file={rec.get('file')}", f"id={rec.get('id')}"]
    return " ".join(parts + ([where] if where else []))


def format_step(info: StepInfo, chars: int = 120) -> str:
    lines = [f"step {info.step}: global samples {info.first_sample}..{info.first_sample + info.global_batch_size - 1} "
             f"(global batch {info.global_batch_size} = micro {info.micro_batch_size} x dp {info.data_parallel_size} "
             f"x accum {info.global_batch_size // (info.micro_batch_size * info.data_parallel_size)})"]
    if info.logged_checksum is None:
        lines.append(f"batch checksum {info.checksum} (the step is not in metrics.jsonl)")
    else:
        verdict = "agrees" if info.checksum == info.logged_checksum else "DIFFERS: the data changed since the run"
        lines.append(f"batch checksum {info.checksum}, metrics.jsonl {info.logged_checksum}: {verdict}")
    for s in info.samples:
        lines.append(f"sample {s.index} (rank {s.rank}, micro-batch {s.micro_batch}): {s.source} sample "
                     f"{s.corpus_sample}, {len(s.pieces)} document(s)")
        for p in s.pieces:
            head = "" if p.text is None else json.dumps(p.text[:chars], ensure_ascii=False)
            lines.append(f"  {p.shard} doc {p.document} tokens {p.start}..{p.end} of {p.length} | "
                         f"{_origin(p.provenance)}" + (f" | {head}" if head else ""))
    return "\n".join(lines)


def to_json(info: StepInfo, chars: int | None = 120) -> dict[str, Any]:
    return {
        "step": info.step, "first_sample": info.first_sample, "global_batch_size": info.global_batch_size,
        "checksum": info.checksum, "logged_checksum": info.logged_checksum,
        "samples": [{"rank": s.rank, "micro_batch": s.micro_batch, "index": s.index, "source": s.source,
                     "corpus_sample": s.corpus_sample,
                     "documents": [{"shard": p.shard, "document": p.document, "tokens": [p.start, p.end],
                                    "length": p.length, "provenance": p.provenance,
                                    "text": p.text if p.text is None or chars is None else p.text[:chars]}
                                   for p in s.pieces]} for s in info.samples],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.data.inspect",
                                 description="Print the documents a training step's batch was cut from.")
    ap.add_argument("run_dir", help="the run directory (config.yaml, metrics.jsonl, checkpoints/)")
    ap.add_argument("--step", type=int, required=True, help="the optimizer step (1-based, as in metrics.jsonl)")
    ap.add_argument("--rank", type=int, default=None, help="one data-parallel rank's samples (default: all)")
    ap.add_argument("--chars", type=int, default=120, help="characters of each document to print")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        info = inspect_step(args.run_dir, args.step, args.rank)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(to_json(info, args.chars), ensure_ascii=False) if args.json else format_step(info, args.chars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
