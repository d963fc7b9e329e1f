"""The built-in sample data: what ``python -m pretrain.train`` trains on when ``data.path`` is not given.

The repository bundles a small corpus (``sample_corpus/{prose,code}.jsonl.gz``: CPython standard-library
docstrings and sources, PSF licence). :func:`ensure_sample_data` turns it, once per machine, into exactly
what the data pipeline would hand the trainer: a byte-level BPE tokenizer (Hugging Face ``tokenizers``,
vocabulary 4096, ``<|endoftext|>`` = id 0 = EOD), one token shard per corpus in the indexed format (EOD
appended to every document) and a ``manifest.json``. ``kind="wordpiece"`` (BERT: ``[PAD] [UNK] [CLS] [SEP]
[MASK]``, ``[SEP]`` = EOD) and ``kind="unigram"`` (T5: ``<pad> </s> <unk>`` + 100 sentinels, ``</s>`` = EOD)
build the same corpus with the data pipeline's own tokenizer trainer (:mod:`pretrain.core.tokenizer`),
each in its own cache folder (``data.sample_tokenizer``).

Several processes may call it at once (all torchrun ranks do, before any process group exists), so the
build runs under an ``fcntl`` lock into a temporary folder that is renamed into place: a reader either sees
no folder or a complete one. Once built, a call only checks that ``manifest.json`` and the build stamp are
there. The output is byte-identical for the same corpus and builder version.

Every shard has its provenance sidecar (:mod:`pretrain.core.provenance`), as the pipeline's shards do: per
document its source (corpus name), the bundled file (relative to the repository) and the record's own ``id``,
so ``python -m pretrain.data.inspect`` names the documents of any step of a run on the sample data. A cache
built before sidecars existed gets them added on first use (same data, nothing else rewritten).

    python -m pretrain.data.sample [--root DIR]     # build (or find) the sample data and print its folder
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pretrain.core.errors import DataError
from pretrain.core.indexed import IndexedDatasetWriter, best_dtype
from pretrain.core.manifest import MANIFEST_NAME, write_manifest
from pretrain.data.locking import file_lock

log = logging.getLogger(__name__)

CORPUS_DIR = Path(__file__).resolve().parent / "sample_corpus"
CORPORA = ("prose", "code")
BUILDER_VERSION = 1  # bump when the tokenizer recipe or the shard layout below changes
VOCAB_SIZE = 4096
EOD_TOKEN = "<|endoftext|>"
STAMP_NAME = "sample_build.json"
TOKENIZER_FILE = "tokenizer/tokenizer.json"


def corpus_files() -> list[Path]:
    files = [CORPUS_DIR / f"{name}.jsonl.gz" for name in CORPORA]
    for f in files:
        if not f.is_file():
            raise DataError(f"the bundled sample corpus file {f} is missing (reinstall the package or restore it from git)")
    return files


KINDS = ("bpe", "wordpiece", "unigram")
SENTINELS = 100  # T5's <extra_id_0..99> in the unigram variant


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise DataError(f"data.sample_tokenizer={kind!r}: expected one of {', '.join(KINDS)}")


def build_key(kind: str = "bpe") -> str:
    """Hash of the bundled corpus bytes, the builder version and the tokenizer kind: names the cache folder."""
    h = hashlib.sha256(f"sample-builder-v{BUILDER_VERSION}\n".encode())
    if kind != "bpe":  # the BPE key predates the other kinds: keep it, so existing caches stay valid
        h.update(f"kind={kind}\n".encode())
    if kind == "unigram":  # Unigram training made deterministic (kept characters in sorted order): rebuild once
        h.update(b"unigram-kept-chars-v2\n")
    for f in corpus_files():
        h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    """``$PRETRAIN_CACHE`` or ``~/.cache/pretrain``: where the sample data (and, by convention, sample indices) live."""
    return Path(os.environ.get("PRETRAIN_CACHE") or Path.home() / ".cache" / "pretrain").expanduser()


def default_root(kind: str = "bpe") -> Path:
    infix = "" if kind == "bpe" else f"{kind}-"
    return cache_root() / f"sample-v{BUILDER_VERSION}-{infix}{build_key(kind)}"


def ensure_sample_data(root: str | os.PathLike | None = None, kind: str = "bpe") -> Path:
    """Return a folder holding the sample tokenizer, token shards and ``manifest.json``, building it if needed.

    ``root`` defaults to ``$PRETRAIN_CACHE/sample-v1-<hash>`` (``PRETRAIN_CACHE`` defaults to
    ``~/.cache/pretrain``; ``sample-v1-<kind>-<hash>`` for ``kind`` wordpiece/unigram). Safe to call from many
    processes at once; cheap when the folder exists.
    """
    check_kind(kind)
    key = build_key(kind)
    root = Path(root).expanduser().resolve() if root is not None else default_root(kind)
    if _is_complete(root, key):
        if not _has_provenance(root):
            try:
                _add_provenance(root, key)
            except OSError as e:  # a read-only shared cache: train all the same, without provenance
                log.warning("cannot add provenance sidecars to the sample data in %s (%s); "
                            "pretrain.data.inspect will print 'no provenance' for its documents", root, e)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f".{root.name}.lock"):
        if _is_complete(root, key):  # another process built it while we waited for the lock
            return root
        if root.exists() and any(root.iterdir()):
            raise DataError(
                f"{root} exists but does not hold sample data of this version (no {MANIFEST_NAME} or a "
                f"{STAMP_NAME} from another corpus/builder); remove it or choose another folder"
            )
        for stale in root.parent.glob(f".{root.name}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by a group
        try:
            t0 = time.perf_counter()
            log.info("building sample data in %s", root)
            _build(tmp, key, kind)
            os.replace(tmp, root)  # also replaces an empty folder of that name
            log.info("built sample data in %.1f s", time.perf_counter() - t0)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def _is_complete(root: Path, key: str) -> bool:
    stamp = root / STAMP_NAME
    if not (root / MANIFEST_NAME).is_file() or not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def _prefixes(root: Path) -> dict[str, Path]:
    return {name: root / "tokens" / name / "part-00000" for name in CORPORA}


def _has_provenance(root: Path) -> bool:
    from pretrain.core.provenance import prov_paths

    return all(prov_paths(p)[0].is_file() for p in _prefixes(root).values())


def _add_provenance(root: Path, key: str) -> None:
    """Sidecars for a cache built before they existed (under the build lock; the shards are left as they are)."""
    with file_lock(root.parent / f".{root.name}.lock"):
        if not _has_provenance(root):
            for name, path in zip(CORPORA, corpus_files()):
                _write_provenance(_prefixes(root)[name], name, path, key)


def _write_provenance(prefix: Path, name: str, path: Path, key: str) -> None:
    from pretrain.core.provenance import ProvenanceWriter

    rel = path.relative_to(CORPUS_DIR.parents[2]).as_posix()  # pretrain/data/sample_corpus/<name>.jsonl.gz
    with ProvenanceWriter(prefix, f"pretrain-sample-{key}") as w:
        for lineno, rec_id in enumerate(read_corpus_ids(path), 1):
            w.add({"source": name, "file": rel, "id": rec_id if rec_id is not None else f"{name}:{path.name}:{lineno}"})


def read_corpus_ids(path: Path) -> list[str | None]:
    """The ``id`` of every record of a bundled corpus file (None where a record has none), in file order."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line).get("id") for line in f]


def read_corpus(path: Path) -> list[str]:
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError) as e:
                raise DataError(f"{path}:{lineno}: not a JSON object with a 'text' field ({e})") from None
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """GPT-2 style byte-level BPE; the special token comes first in the trainer, so it gets id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    assert tok.token_to_id(EOD_TOKEN) == 0, "the EOD token must be id 0"
    return tok


def _build(out: Path, key: str, kind: str = "bpe") -> None:
    texts = {name: read_corpus(path) for name, path in zip(CORPORA, corpus_files())}
    everything = [t for name in CORPORA for t in texts[name]]
    if kind == "bpe":
        tok = train_tokenizer(everything)
        eod = tok.token_to_id(EOD_TOKEN)
    else:
        from pretrain.core.tokenizer import TokenizerSpec, eod_id
        from pretrain.core.tokenizer import train_tokenizer as train_pipeline_tokenizer

        spec = TokenizerSpec(kind=kind, vocab_size=VOCAB_SIZE, sentinel_tokens=SENTINELS if kind == "unigram" else 0)
        spec.validate()
        # Unigram's EM trainer takes ~70 s on the whole 5 MB here; every fifth document (1 MB, ~5 s) is plenty
        # for a 4096-piece vocabulary (all documents are still tokenized below).
        train_texts = everything[::5] if kind == "unigram" else everything
        tok = train_pipeline_tokenizer(spec, lambda: iter(train_texts))
        eod = eod_id(tok, spec)
    tok_path = out / TOKENIZER_FILE
    tok_path.parent.mkdir(parents=True)
    tok.save(str(tok_path))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = best_dtype(vocab)
    corpora = {}
    for name in CORPORA:
        prefix = out / "tokens" / name / "part-00000"
        n_tokens = 0
        with IndexedDatasetWriter(prefix, dtype=dtype) as w:
            for enc in tok.encode_batch(texts[name], add_special_tokens=False):
                ids = np.asarray(enc.ids + [eod], dtype=dtype)
                w.add_document(ids)
                n_tokens += ids.size
        _write_provenance(prefix, name, CORPUS_DIR / f"{name}.jsonl.gz", key)
        corpora[name] = {"prefixes": [str(prefix)], "documents": len(texts[name]), "tokens": n_tokens}
    write_manifest(out, tokenizer=str(tok_path), vocab_size=vocab, eod_id=eod, dtype=np.dtype(dtype).name,
                   corpora=corpora)
    (out / STAMP_NAME).write_text(json.dumps({"key": key, "builder_version": BUILDER_VERSION,
                                              "source": "pretrain/data/sample_corpus (CPython stdlib, PSF licence)"},
                                             indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description="Build (or find) the built-in sample data and print its folder.")
    ap.add_argument("--root", default=None, help="target folder (default: $PRETRAIN_CACHE/sample-v1-<hash>)")
    ap.add_argument("--tokenizer", default="bpe", choices=KINDS, help="tokenizer kind (bpe: GPT, wordpiece: BERT, unigram: T5)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_sample_data(args.root, args.tokenizer))


if __name__ == "__main__":
    main()
