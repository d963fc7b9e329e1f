"""GPT pretraining samples from token shards: split, per-epoch shuffled sample index, weighted blend.

A sample is ``seq_length + 1`` consecutive tokens of a corpus's token stream, read straight across document
boundaries (the EOD token the tokenizer appended marks them); consecutive samples overlap by one token, as
in Megatron, so inputs ``x[:-1]`` and labels ``x[1:]`` cover the stream once.

Per corpus and split (train/valid), each epoch is built on its own:

1. the split's documents in an order drawn from ``RandomState((seed, corpus, split, epoch))``;
2. the token stream of that order cut into ``(tokens - 1) // seq_length`` windows (the tail that does not
   fill a window is dropped; windows never span two epochs);
3. the windows of the epoch in an order drawn from the same generator.

Because an epoch depends on nothing but its own number, sample ``i`` of a run never depends on how many
samples the run asks for: a run stopped at step 10 and resumed to step 20 reads the same data as one that
ran 20 steps. Corpora are interleaved by :class:`pretrain.data.blend.Blend`, which has the same property.

Each epoch's index (document order, window starts, window order) is one ``.npy`` file under
``cache_dir/<corpus>-<split>-<key>/``; the key hashes every input it depends on (shard paths, sizes and
modification times, document range of the split, sequence length, seed, index version). Blend weights do
not enter it: the blend is computed on the fly from the weights, in vectorised windows, so two runs with
different mixtures share the per-corpus indices. Builders lock the folder with ``fcntl`` and write
through ``pretrain.core.atomic`` (temporary file, fsync, rename), so concurrent ranks build each epoch once and readers never
see half a file. We use the legacy ``RandomState`` because its streams are frozen across NumPy releases
(``Generator`` streams are not), so a rebuilt cache gives the same order after an upgrade.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from omegaconf import DictConfig, OmegaConf

from pretrain.core.atomic import atomic_open
from pretrain.core.errors import DataError
from pretrain.core.indexed import IndexedDataset, bin_path, idx_path
from pretrain.core.manifest import Manifest, read_manifest
from pretrain.data.blend import Blend
from pretrain.data.locking import file_lock

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when the index layout or the shuffling recipe changes
SPLITS = ("train", "valid")


# --------------------------------------------------------------------------------------------------- config


def parse_split(split: Any) -> tuple[float, ...]:
    """``"98,2"`` (or Megatron's three-way ``"969,30,1"``; the third part is held out, read by neither)
    -> normalised fractions of each corpus's documents: ``(train, valid[, test])``."""
    text = str(split).strip()
    parts = [p.strip() for p in re.split(r"[,/]", text)]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (2, 3) or any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise DataError(
            f"data.split={split!r} is malformed: expected 2 or 3 non-negative numbers separated by commas, "
            f"train,valid[,test] as fractions of each corpus's documents, e.g. '98,2' (on a command line: data.split=98/2)"
        )
    total = sum(values)
    return tuple(v / total for v in values)


def split_bounds(num_documents: int, fractions: tuple[float, ...]) -> list[int]:
    """Megatron's rounding of split fractions to contiguous document ranges; returns the boundaries."""
    bounds = [0]
    for f in fractions:
        bounds.append(bounds[-1] + round(f * num_documents))
    diff = bounds[-1] - num_documents
    return [0] + [min(max(b - diff, 0), num_documents) for b in bounds[1:]]


def _resolve_weights(raw: Any, manifest: Manifest, tokens: Mapping[str, int] | None) -> dict[str, float]:
    names = list(manifest.corpora)
    if raw is None:
        if tokens is None:
            raise ValueError("token counts are needed for token-proportional weights")
        return {n: float(tokens[n]) for n in names}
    if isinstance(raw, DictConfig):
        raw = OmegaConf.to_container(raw, resolve=True)
    if not isinstance(raw, Mapping):
        raise DataError(f"data.weights must map corpus names to numbers (available: {', '.join(names)}), got {raw!r}")
    out = {}
    for name, w in raw.items():
        if name not in manifest.corpora:
            raise DataError(
                f"data.weights names corpus '{name}', which {manifest.root / 'manifest.json'} does not have; "
                f"available corpora: {', '.join(names)}"
            )
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise DataError(f"data.weights.{name}={w!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise DataError(f"data.weights.{name}={w} must be a finite number >= 0")
        out[name] = w
    if not any(v > 0 for v in out.values()):
        raise DataError(f"data.weights gives every corpus weight 0: {dict(out)}")
    return out


def check_weights(raw: Any, manifest: Manifest) -> None:
    """Check ``data.weights`` against the manifest's corpora (names, numbers) without opening any shard; an
    empty map or None (proportional to tokens) has nothing to check."""
    if raw is not None and len(raw) > 0:
        _resolve_weights(raw, manifest, None)


# --------------------------------------------------------------------------------------------------- corpus


class CorpusShards:
    """The shards of one corpus seen as one list of sequences and documents.

    Shards are opened lazily in each process (so the object pickles cheaply into DataLoader workers).
    """

    def __init__(self, name: str, prefixes: list[str]):
        self.name = name
        self.prefixes = list(prefixes)
        self._shards: list[IndexedDataset] | None = None
        self._seq_offsets: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"name": self.name, "prefixes": self.prefixes, "_shards": None, "_seq_offsets": None}

    @property
    def shards(self) -> list[IndexedDataset]:
        if self._shards is None:
            shards = [IndexedDataset(p) for p in self.prefixes]  # validates magic, sizes, truncation
            for ds in shards:
                _check_doc_idx(ds)
            self._seq_offsets = np.cumsum([0] + [len(s) for s in shards], dtype=np.int64)
            self._shards = shards
        return self._shards

    @property
    def seq_offsets(self) -> np.ndarray:
        self.shards  # noqa: B018 - opens them
        assert self._seq_offsets is not None
        return self._seq_offsets

    def sizes(self) -> np.ndarray:
        """Tokens of every sequence, all shards concatenated."""
        return np.concatenate([np.asarray(s.sizes, dtype=np.int64) for s in self.shards])

    def doc_starts(self) -> np.ndarray:
        """Global sequence index where each document starts, plus the end sentinel (Megatron's doc_idx)."""
        parts = [np.asarray(s.doc_idx[:-1], dtype=np.int64) + off for s, off in zip(self.shards, self.seq_offsets)]
        return np.concatenate(parts + [np.asarray([self.seq_offsets[-1]], dtype=np.int64)])

    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.shards)

    def fingerprint(self) -> list:
        out = []
        for p in self.prefixes:
            for f in (idx_path(p), bin_path(p)):
                st = os.stat(f)
                out.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
        return out

    def read(self, seq: int, offset: int, length: int) -> np.ndarray:
        k = int(np.searchsorted(self.seq_offsets, seq, side="right")) - 1
        return self.shards[k].get(int(seq - self.seq_offsets[k]), offset, length)

    def seq_size(self, seq: int) -> int:
        k = int(np.searchsorted(self.seq_offsets, seq, side="right")) - 1
        return int(self.shards[k].sizes[seq - self.seq_offsets[k]])

    def check_eod(self, eod_id: int, probe: int = 64) -> None:
        """Warn when documents do not end with EOD: samples would then run documents together unmarked."""
        ds = self.shards[0]
        ends = [int(ds.doc_idx[d + 1]) - 1 for d in range(min(probe, len(ds.doc_idx) - 1))]
        last = [int(ds.get(s, int(ds.sizes[s]) - 1, 1)[0]) for s in ends if s >= 0 and ds.sizes[s] > 0]
        if last and sum(t == eod_id for t in last) < len(last) / 2:
            log.warning("corpus '%s' (%s): most documents do not end with the EOD token %d; samples will join "
                        "documents without a separator", self.name, ds.prefix, eod_id)


def _check_doc_idx(ds: IndexedDataset) -> None:
    d = ds.doc_idx
    if len(d) < 1 or d[0] != 0 or d[-1] != len(ds) or np.any(np.diff(d) < 0):
        raise DataError(
            f"{idx_path(ds.prefix)}: malformed document index (expected non-decreasing sequence indices from 0 to "
            f"{len(ds)}, found {len(d)} entries from {d[0] if len(d) else None} to {d[-1] if len(d) else None})"
        )


# --------------------------------------------------------------------------------------------------- epochs


def _seed_words(seed: int, name: str, split: str, epoch: int) -> np.ndarray:
    h = hashlib.sha256(name.encode()).digest()
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    words = [s & 0xFFFFFFFF, s >> 32, int.from_bytes(h[:4], "little"), int.from_bytes(h[4:8], "little"),
             SPLITS.index(split), int(epoch), INDEX_VERSION]
    return np.asarray(words, dtype=np.uint32)


class EpochIndex:
    """One epoch of one corpus split, as one int64 array (mmapped from the cache)::

        [n_seq, n_samples, seq_order[n_seq], starts[n_samples + 1, 2] (position, offset), shuffle[n_samples]]
    """

    def __init__(self, packed: np.ndarray):
        n_seq, n = int(packed[0]), int(packed[1])
        o = 2
        self.seq_order = packed[o : o + n_seq]
        o += n_seq
        self.starts = packed[o : o + 2 * (n + 1)].reshape(n + 1, 2)
        o += 2 * (n + 1)
        self.shuffle = packed[o : o + n]
        self.num_samples = n

    @staticmethod
    def build(sizes: np.ndarray, doc_starts: np.ndarray, doc_lo: int, doc_hi: int, seq_length: int,
              rng: np.random.RandomState) -> np.ndarray:
        perm = doc_lo + rng.permutation(doc_hi - doc_lo).astype(np.int64)
        first, lens = doc_starts[perm], doc_starts[perm + 1] - doc_starts[perm]
        if np.all(lens == 1):  # one sequence per document: the usual layout
            seq_order = first
        else:
            excl = np.cumsum(lens) - lens
            seq_order = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(excl, lens) + np.repeat(first, lens)
        seq_sizes = sizes[seq_order]
        cum = np.cumsum(seq_sizes)
        total = int(cum[-1]) if cum.size else 0
        n = (total - 1) // seq_length if total > 0 else 0
        tok = np.arange(n + 1, dtype=np.int64) * seq_length
        pos = np.searchsorted(cum, tok, side="right")
        off = tok - (cum[pos] - seq_sizes[pos])
        shuffle = rng.permutation(n).astype(np.int64)
        head = np.asarray([seq_order.size, n], dtype=np.int64)
        return np.concatenate([head, seq_order, np.stack([pos, off], 1).reshape(-1), shuffle])


class CorpusSplit:
    """Samples of one corpus's train or valid documents, epoch after epoch, built lazily and cached."""

    def __init__(self, corpus: CorpusShards, split: str, doc_lo: int, doc_hi: int, tokens: int, seq_length: int,
                 seed: int, cache_dir: Path):
        self.corpus, self.split = corpus, split
        self.doc_lo, self.doc_hi, self.tokens = doc_lo, doc_hi, tokens
        self.seq_length, self.seed = seq_length, seed
        self.samples_per_epoch = max(0, (tokens - 1) // seq_length)
        key = {
            "index_version": INDEX_VERSION, "corpus": corpus.name, "split": split, "documents": [doc_lo, doc_hi],
            "seq_length": seq_length, "seed": int(seed), "shards": corpus.fingerprint(),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", corpus.name)[:48]
        self.dir = Path(cache_dir) / f"{safe}-{split}-{digest}"
        self._key = key
        self._epochs: OrderedDict[int, EpochIndex] = OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_epochs"] = OrderedDict()
        return state

    def _path(self, epoch: int) -> Path:
        return self.dir / f"epoch-{epoch:06d}.npy"

    def ensure_epochs(self, n_epochs: int) -> None:
        """Build (once, under a lock) every epoch below ``n_epochs`` that is not cached yet."""
        missing = [e for e in range(n_epochs) if not self._path(e).is_file()]
        if not missing:
            return
        with file_lock(self.dir / ".lock"):
            missing = [e for e in missing if not self._path(e).is_file()]
            if not missing:
                return
            key_file = self.dir / "key.json"
            if not key_file.is_file():
                key_file.write_text(json.dumps(self._key, indent=2, sort_keys=True) + "\n")
            sizes, doc_starts = self.corpus.sizes(), self.corpus.doc_starts()
            log.info("building %d epoch(s) of the %s index of corpus '%s' in %s", len(missing), self.split,
                     self.corpus.name, self.dir)
            for e in missing:
                rng = np.random.RandomState(_seed_words(self.seed, self.corpus.name, self.split, e))
                packed = EpochIndex.build(sizes, doc_starts, self.doc_lo, self.doc_hi, self.seq_length, rng)
                assert int(packed[1]) == self.samples_per_epoch
                with atomic_open(self._path(e), "wb") as f:
                    np.save(f, packed)

    def epoch(self, e: int) -> EpochIndex:
        if e in self._epochs:
            self._epochs.move_to_end(e)
            return self._epochs[e]
        if not self._path(e).is_file():
            self.ensure_epochs(e + 1)
        idx = EpochIndex(np.load(self._path(e), mmap_mode="r"))
        self._epochs[e] = idx
        if len(self._epochs) > 8:
            self._epochs.popitem(last=False)
        return idx

    def pieces(self, m: int) -> list[tuple[int, int, int]]:
        """What sample ``m`` of this split is cut from: ``(sequence, start, end)`` token ranges, in order
        (``sequence`` indexes all shards of the corpus concatenated; see :meth:`CorpusShards.doc_starts`)."""
        e, j = divmod(int(m), self.samples_per_epoch)
        idx = self.epoch(e)
        s = int(idx.shuffle[j])
        (p0, o0), (p1, o1) = idx.starts[s], idx.starts[s + 1]
        out = []
        for p in range(int(p0), int(p1) + 1):
            seq = int(idx.seq_order[p])
            start = int(o0) if p == p0 else 0
            end = int(o1) + 1 if p == p1 else self.corpus.seq_size(seq)
            if end > start:
                out.append((seq, start, end))
        return out

    def sample(self, m: int) -> np.ndarray:
        """Sample ``m`` of this split: ``seq_length + 1`` tokens as int64."""
        pieces = [self.corpus.read(seq, start, end - start) for seq, start, end in self.pieces(m)]
        out = np.concatenate(pieces).astype(np.int64)
        if out.size != self.seq_length + 1:  # cannot happen with a consistent index; never train on garbage
            raise DataError(f"corrupt sample index in {self.dir} (sample {m} has {out.size} tokens); delete the folder")
        return out


# --------------------------------------------------------------------------------------------------- dataset


class GPTDataset(torch.utils.data.Dataset):
    """``len(ds)`` samples; ``ds[i]`` is an int64 array of ``seq_length + 1`` tokens. Index ``i`` maps through the
    blend to a corpus and a sample of that corpus; the mapping does not depend on ``len(ds)``."""

    def __init__(self, parts: list[CorpusSplit], weights: list[float], num_samples: int, seq_length: int,
                 blend: Any = None):
        self.parts = parts
        self.weights = list(weights)
        self.num_samples = int(num_samples)
        self.seq_length = seq_length
        self.blend = Blend(self.weights) if blend is None else blend  # a schedule's blend has the same interface
        counts = self.blend.counts(self.num_samples)
        for part, c in zip(parts, counts):
            part.ensure_epochs(math.ceil(int(c) / part.samples_per_epoch))

    @property
    def corpus_names(self) -> list[str]:
        return [p.corpus.name for p in self.parts]

    def __len__(self) -> int:
        return self.num_samples

    def source(self, i: int) -> tuple[str, int]:
        """(corpus name, sample index within that corpus's split) of global sample ``i``."""
        k, m = self.blend[int(i)]
        return self.parts[k].corpus.name, m

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for a dataset of {self.num_samples}")
        k, m = self.blend[i]
        return self.parts[k].sample(m)


@dataclass
class DataBundle:
    train: GPTDataset
    valid: GPTDataset | None  # None when the split gives no validation documents or no validation samples are asked
    manifest: Manifest
    tokenizer_path: Path | None
    vocab_size: int  # the tokenizer's (or the manifest's when it names no tokenizer)
    eod_id: int
    seq_length: int
    corpus_names: list[str] = field(default_factory=list)  # corpora with weight > 0, manifest order
    corpus_weights: list[float] = field(default_factory=list)  # normalised to sum 1
    corpus_tokens: list[int] = field(default_factory=list)  # all tokens of each corpus (both splits)
    # validation per source: corpus name -> its validation samples alone (``valid`` is their blend), and the
    # weights of the total (``val_loss``) over them, normalised to sum 1
    valid_sources: dict[str, GPTDataset] = field(default_factory=dict)
    valid_weights: dict[str, float] = field(default_factory=dict)
    valid_manifest: Manifest | None = None  # data.valid_path's manifest, when the validation set is its own


def tokenizer_vocab_size(path: str | os.PathLike) -> int:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file {path} (named in the data manifest) does not exist")
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise DataError(f"tokenizer file {path} cannot be loaded: {e}") from None


def check_vocab(bundle_or_manifest: DataBundle | Manifest, model_vocab_size: int) -> None:
    """Fail with a message naming the tokenizer file when its vocabulary does not fit the model's embedding."""
    if isinstance(bundle_or_manifest, DataBundle):
        vocab, tok, eod = bundle_or_manifest.vocab_size, bundle_or_manifest.tokenizer_path, bundle_or_manifest.eod_id
        mpath = bundle_or_manifest.manifest.root / "manifest.json"
    else:
        m = bundle_or_manifest
        tok, eod, mpath = m.tokenizer, m.eod_id, m.root / "manifest.json"
        vocab = tokenizer_vocab_size(tok) if tok is not None else m.vocab_size
    source = f"tokenizer {tok}" if tok is not None else f"data manifest {mpath}"
    if vocab > model_vocab_size:
        raise DataError(
            f"{source} has a vocabulary of {vocab} tokens but model.vocab_size is {model_vocab_size}; "
            f"set model.vocab_size >= {vocab} (e.g. {-(-vocab // 128) * 128}) or use a matching tokenizer"
        )
    if eod >= model_vocab_size:
        raise DataError(f"{source}: EOD id {eod} is outside model.vocab_size={model_vocab_size}")


def build_datasets(data_cfg: Any, *, seq_length: int, seed: int, num_train_samples: int, num_valid_samples: int,
                   cache_dir: str | os.PathLike, mixture: Any = None) -> DataBundle:
    """Validate the data configuration and files, then build (or load from ``cache_dir``) the sample indices.

    ``data_cfg`` has ``path`` (folder with ``manifest.json``; ``None`` = the built-in sample data),
    ``weights`` (corpus name -> weight, ``None`` or empty = proportional to tokens, 0 = excluded), ``split``
    and optionally ``valid_path`` (a second pipeline output whose corpora are the validation set; every
    document of ``path`` then trains). ``mixture`` (:class:`pretrain.data.schedule.Mixture`, from
    ``data.schedule``) replaces the fixed weights by a schedule.
    """
    if int(seq_length) < 1:
        raise DataError(f"seq_length must be >= 1, got {seq_length}")
    if num_train_samples < 0 or num_valid_samples < 0:
        raise DataError(f"sample counts must be >= 0 (train {num_train_samples}, valid {num_valid_samples})")
    split = getattr(data_cfg, "split", None)
    fractions = parse_split("98,2" if split is None else split)
    valid_path = getattr(data_cfg, "valid_path", None)
    if valid_path:  # the validation set is another folder: every document of data.path trains
        fractions = (1.0, 0.0)
    path = getattr(data_cfg, "path", None)
    if path is None:
        from pretrain.data.sample import ensure_sample_data

        path = ensure_sample_data(kind=getattr(data_cfg, "sample_tokenizer", None) or "bpe")
    manifest = read_manifest(Path(str(path)).expanduser())
    mpath = manifest.root / "manifest.json"
    raw_weights = getattr(data_cfg, "weights", None)
    if isinstance(raw_weights, (Mapping, DictConfig)) and len(raw_weights) == 0:
        raw_weights = None  # the schema's default: an empty map (settable from the command line) = by tokens

    if mixture is not None:  # a schedule: its sources, each weighted by its share of the last phase
        if raw_weights is not None:
            raise DataError("data.weights and data.schedule are both set; give the weights in the schedule's phases")
        weights = mixture.check_sources(manifest)
        names = [n for n in manifest.corpora if n in weights]
        corpora = {n: CorpusShards(n, manifest.corpora[n].prefixes) for n in names}
        tokens = {n: corpora[n].num_tokens() for n in names}
    elif raw_weights is not None:
        weights = _resolve_weights(raw_weights, manifest, None)
        names = [n for n in manifest.corpora if weights.get(n, 0.0) > 0]
        corpora = {n: CorpusShards(n, manifest.corpora[n].prefixes) for n in names}
        tokens = {n: corpora[n].num_tokens() for n in names}
    else:
        corpora = {n: CorpusShards(n, c.prefixes) for n, c in manifest.corpora.items()}
        tokens = {n: c.num_tokens() for n, c in corpora.items()}
        weights = _resolve_weights(None, manifest, tokens)
        names = [n for n in corpora if weights[n] > 0]
        if not names:
            raise DataError(f"every corpus in {mpath} is empty (0 tokens)")

    tok_path = manifest.tokenizer
    vocab = tokenizer_vocab_size(tok_path) if tok_path is not None else manifest.vocab_size
    if vocab != manifest.vocab_size:
        log.warning("%s says vocab_size %d but its tokenizer %s has %d tokens; using the tokenizer's",
                    mpath, manifest.vocab_size, tok_path, vocab)

    cache = Path(cache_dir).expanduser()
    parts: dict[str, dict[str, CorpusSplit]] = {s: {} for s in SPLITS}
    for n in names:
        c = corpora[n]
        c.check_eod(manifest.eod_id)
        doc_starts, sizes = c.doc_starts(), c.sizes()
        bounds = split_bounds(len(doc_starts) - 1, fractions)
        for s, (lo, hi) in zip(SPLITS, zip(bounds[:-1], bounds[1:])):
            split_tokens = int(sizes[doc_starts[lo] : doc_starts[hi]].sum())
            parts[s][n] = CorpusSplit(c, s, lo, hi, split_tokens, int(seq_length), seed, cache)
        tr = parts["train"][n]
        if num_train_samples > 0 and tr.samples_per_epoch < 1:
            raise DataError(
                f"corpus '{n}' ({', '.join(c.prefixes)}) has {tr.tokens} tokens in its train split "
                f"({tr.doc_hi - tr.doc_lo} documents), fewer than the {seq_length + 1} "
                f"needed for one sample of seq_length {seq_length}; give it weight 0 in data.weights, "
                f"add data, or shorten the sequence"
            )

    total_w = sum(weights[n] for n in names)
    norm = [weights[n] / total_w for n in names]
    if mixture is not None:
        train = GPTDataset([parts["train"][n] for n in names], norm, num_train_samples, int(seq_length),
                           blend=mixture.blend(names))
    else:
        train = GPTDataset([parts["train"][n] for n in names], norm, num_train_samples, int(seq_length))

    valid, vmanifest, vparts, vweights = None, None, {}, {}
    if num_valid_samples > 0 and valid_path:
        vmanifest = read_manifest(Path(str(valid_path)).expanduser())
        check_same_tokenizer(manifest, vmanifest)
        for n, entry in vmanifest.corpora.items():
            c = CorpusShards(n, entry.prefixes)
            vparts[n] = CorpusSplit(c, "valid", 0, len(c.doc_starts()) - 1, c.num_tokens(), int(seq_length), seed,
                                    cache)
            vweights[n] = float(vparts[n].tokens)  # the held-out set's own composition, whatever the training mix
        where = (f"data.valid_path={valid_path} leaves no corpus of {vmanifest.root / 'manifest.json'}", "add held-out data")
    elif num_valid_samples > 0 and fractions[1] > 0:
        vparts, vweights = parts["valid"], {n: weights[n] for n in names}
        where = (f"data.split={split!r} leaves no corpus of {mpath}", "raise the validation fraction or use more data")
    if vparts:
        usable = [n for n in vparts if vparts[n].samples_per_epoch >= 1]
        for n in vparts:
            if n not in usable:
                log.warning("corpus '%s' has only %d validation tokens (< %d): left out of validation",
                            n, vparts[n].tokens, seq_length + 1)
        if not usable:
            raise DataError(
                f"{where[0]} enough validation tokens for one sample of {seq_length + 1}; {where[1]}"
            )
        vw = [vweights[n] for n in usable]
        if sum(vw) <= 0:  # a schedule whose last phase has none of the validated sources: equal weights
            vw = [1.0] * len(usable)
        vweights = {n: w / sum(vw) for n, w in zip(usable, vw)}
        weighted = [n for n in usable if vweights[n] > 0]
        valid = GPTDataset([vparts[n] for n in weighted], [vweights[n] for n in weighted], num_valid_samples,
                           int(seq_length))
        by_source = {n: GPTDataset([vparts[n]], [1.0], num_valid_samples, int(seq_length)) for n in usable}
    else:
        vweights, by_source = {}, {}

    log.info("data: %s", ", ".join(f"{n} w={w:.3f} tokens={tokens[n]:,}" for n, w in zip(names, norm)))
    return DataBundle(train=train, valid=valid, manifest=manifest, tokenizer_path=tok_path, vocab_size=vocab,
                      eod_id=manifest.eod_id, seq_length=int(seq_length), corpus_names=names, corpus_weights=norm,
                      corpus_tokens=[tokens[n] for n in names], valid_sources=by_source, valid_weights=vweights,
                      valid_manifest=vmanifest)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_same_tokenizer(train: Manifest, valid: Manifest) -> None:
    """The validation folder must be tokenized exactly like the training data, or its losses mean nothing."""
    tp, vp = train.root / "manifest.json", valid.root / "manifest.json"
    if (train.vocab_size, train.eod_id) != (valid.vocab_size, valid.eod_id):
        raise DataError(f"data.valid_path: {vp} has vocab_size {valid.vocab_size} / EOD {valid.eod_id} but the training "
                        f"data {tp} has {train.vocab_size} / {train.eod_id}; tokenize both with the same tokenizer")
    if (train.tokenizer is None) != (valid.tokenizer is None) or (
            train.tokenizer is not None and _file_digest(train.tokenizer) != _file_digest(valid.tokenizer)):
        raise DataError(f"data.valid_path: the tokenizer of {vp} ({valid.tokenizer}) differs from the training data's "
                        f"({tp}: {train.tokenizer}); tokenize both with the same tokenizer file (the pipeline's "
                        f"tokenizer.path={train.tokenizer} for the held-out folder)")
