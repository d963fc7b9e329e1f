"""Tokenizers for the three model families, and tokenizing documents into indexed token shards.

Training goes through Hugging Face ``tokenizers`` (Rust, multi-threaded) rather than anything hand-written:

* ``bpe`` (GPT): byte-level BPE as in GPT-2: every byte is in the initial alphabet, so no text is ever
  unknown; ``<|endoftext|>`` separates documents.
* ``wordpiece`` (BERT): BERT normaliser and pre-tokenizer, ``##`` continuation prefix, the special tokens
  ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0..4) and the ``[CLS] $A [SEP]`` template; ``[SEP]`` ends documents.
* ``unigram`` (T5): SentencePiece-style Unigram with ``▁`` metaspace, ``<pad>=0 </s>=1 <unk>=2`` and the
  sentinels ``<extra_id_0..N-1>`` at the top of the vocabulary (``<extra_id_0>`` has the highest id, as in
  T5); ``</s>`` ends documents.

A given ``tokenizer.json`` (``tokenizer.path``) is used as it is; its end-of-document token must exist.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from pretrain.core.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("bpe", "wordpiece", "unigram")
# What a kind uses when the config names no special tokens / end-of-document token.
DEFAULT_SPECIALS = {
    "bpe": ["<|endoftext|>"],
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "unigram": ["<pad>", "</s>", "<unk>"],
}
DEFAULT_EOD = {"bpe": "<|endoftext|>", "wordpiece": "[SEP]", "unigram": "</s>"}
DEFAULT_UNK = {"bpe": None, "wordpiece": "[UNK]", "unigram": "<unk>"}


@dataclass
class TokenizerSpec:
    """Plain-Python view of ``cfg.tokenizer`` (see :class:`data_pipelines.config.TokenizerConfig`)."""

    kind: str = "bpe"
    path: str | None = None
    vocab_size: int = 32768
    min_frequency: int = 2
    special_tokens: Sequence[str] | None = None
    eod_token: str | None = None
    unk_token: str | None = None
    sentinel_tokens: int = 0
    lowercase: bool = False
    max_train_bytes: int = 1 << 30

    @classmethod
    def from_config(cls, cfg) -> "TokenizerSpec":
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        spec = cls(**{k: get(k, getattr(cls, k)) for k in cls.__dataclass_fields__})
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"tokenizer.kind: unknown tokenizer kind '{self.kind}'; expected one of {', '.join(KINDS)}")
        if self.path is not None and not os.path.isfile(self.path):
            raise ConfigError(f"tokenizer.path: no tokenizer file at '{self.path}' (expected a Hugging Face tokenizer.json)")
        if self.path is None and self.vocab_size < 32 + self.sentinel_tokens:
            raise ConfigError(f"tokenizer.vocab_size: {self.vocab_size} is too small (need at least {32 + self.sentinel_tokens})")
        if self.sentinel_tokens < 0:
            raise ConfigError(f"tokenizer.sentinel_tokens: must be >= 0, got {self.sentinel_tokens}")

    @property
    def specials(self) -> list[str]:
        return list(self.special_tokens) if self.special_tokens else list(DEFAULT_SPECIALS[self.kind])

    @property
    def eod(self) -> str:
        return self.eod_token or DEFAULT_EOD[self.kind]

    @property
    def unk(self) -> str | None:
        return self.unk_token if self.unk_token is not None else DEFAULT_UNK[self.kind]


def sentinel_names(n: int) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(n)]


def build_untrained(spec: TokenizerSpec):
    """The tokenizer pipeline (normaliser, pre-tokenizer, model, decoder) and its trainer for ``spec.kind``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = spec.specials
    if spec.eod not in specials:
        specials.append(spec.eod)
    if spec.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=spec.vocab_size, min_frequency=spec.min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
    elif spec.kind == "wordpiece":
        unk = spec.unk or "[UNK]"
        if unk not in specials:
            specials.append(unk)
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=spec.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=spec.vocab_size, min_frequency=spec.min_frequency, special_tokens=specials,
            continuing_subword_prefix="##", show_progress=False,
        )
    else:  # unigram
        unk = spec.unk or "<unk>"
        if unk not in specials:
            specials.append(unk)
        tok = Tokenizer(models.Unigram())
        norms = [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
        if spec.lowercase:
            norms.append(normalizers.Lowercase())
        tok.normalizer = normalizers.Sequence(norms)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(
            vocab_size=spec.vocab_size - spec.sentinel_tokens, special_tokens=specials, unk_token=unk,
            show_progress=False,
        )
    return tok, trainer


def _add_post_processor(tok, spec: TokenizerSpec) -> None:
    """Templates a model-side user expects (``[CLS] A [SEP]`` for BERT, ``A </s>`` for T5, none for GPT)."""
    from tokenizers import processors

    if spec.kind == "bpe":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    elif spec.kind == "wordpiece":
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        if cls_id is not None and sep_id is not None:
            tok.post_processor = processors.TemplateProcessing(
                single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
            )
    else:
        eos_id = tok.token_to_id(spec.eod)
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {spec.eod}", pair=f"$A {spec.eod} $B:1 {spec.eod}:1", special_tokens=[(spec.eod, eos_id)],
        )


def train_tokenizer(spec: TokenizerSpec, texts: Callable[[], Iterable[str]]):
    """Train a tokenizer of ``spec.kind`` on the texts ``texts()`` yields (streamed into the Rust trainer).

    ``texts`` is a callable because WordPiece needs two passes. The result is canonicalised so that the same
    corpus gives a byte-identical ``tokenizer.json`` (``tokenizers`` itself does not promise that, see
    :func:`_wordpiece_alphabet` and :func:`_canonical_unigram`).
    """
    tok, trainer = build_untrained(spec)
    if spec.kind == "wordpiece":
        tok, trainer = _pin_wordpiece_alphabet(tok, spec, texts)
    tok.train_from_iterator(texts(), trainer=trainer)
    if spec.kind == "wordpiece":
        tok = _rebuild(tok, spec)
    elif spec.kind == "unigram":
        tok = _canonical_unigram(tok, spec)
        if spec.sentinel_tokens:
            from tokenizers import AddedToken

            # T5 puts <extra_id_0> at the very top of the vocabulary: add in reverse order, so <extra_id_{N-1}>
            # gets the first new id and <extra_id_0> the last.
            names = list(reversed(sentinel_names(spec.sentinel_tokens)))
            tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    _add_post_processor(tok, spec)
    if tok.token_to_id(spec.eod) is None:  # cannot happen for trained tokenizers: the eod token is a special
        raise ConfigError(f"tokenizer.eod_token: '{spec.eod}' is not in the trained vocabulary")
    return tok


def _wordpiece_alphabet(tok, texts: Callable[[], Iterable[str]]) -> list[str]:
    """Every non-space character of the normalised corpus, sorted.

    Why: the ``tokenizers`` WordPiece trainer numbers the ``##x`` continuation symbols in hash-map order, and
    merge ties are broken by those numbers, so two trainings on one corpus can differ. Registering the
    alphabet and its ``##`` forms up front (as trainer specials, in sorted order) pins every initial id.
    """
    chars: set[str] = set()
    norm = tok.normalizer
    for t in texts():
        chars.update(norm.normalize_str(t) if norm is not None else t)
    return sorted(c for c in chars if not c.isspace())


def _pin_wordpiece_alphabet(tok, spec: TokenizerSpec, texts):
    from tokenizers import trainers

    specials = spec.specials
    for extra in (spec.eod, spec.unk or "[UNK]"):
        if extra not in specials:
            specials.append(extra)
    alphabet = _wordpiece_alphabet(tok, texts)
    pinned = specials + [c for c in alphabet if c not in specials] + ["##" + c for c in alphabet]
    trainer = trainers.WordPieceTrainer(
        vocab_size=max(spec.vocab_size, len(pinned)), min_frequency=spec.min_frequency, special_tokens=pinned,
        continuing_subword_prefix="##", show_progress=False,
    )
    return tok, trainer


def _rebuild(trained, spec: TokenizerSpec):
    """A WordPiece tokenizer with the trained vocabulary whose only added tokens are the real specials."""
    from tokenizers import AddedToken, Tokenizer, models

    vocab = trained.get_vocab(with_added_tokens=True)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=spec.unk or "[UNK]", continuing_subword_prefix="##"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = trained.normalizer, trained.pre_tokenizer, trained.decoder
    specials = spec.specials + [t for t in (spec.eod, spec.unk or "[UNK]") if t not in spec.specials]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


# The Unigram trainer scores each character it must keep but lost in training (a "kept character") min, min + 1e-4,
# min + 2e-4, ... where min is the lowest score of the trained pieces.
KEPT_CHAR_STEP = 1e-4
_SCORE_EPS = 1e-9  # far above the run-to-run noise of the scores (~1e-14), far below the 1e-6 they are rounded to


def _sort_kept_characters(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """``pieces`` with the kept characters' scores handed out in sorted character order.

    Why: ``UnigramTrainer.finalize`` walks its required characters in ``AHashSet`` order, randomly seeded in
    every process, and gives each one missing from the trained model the next score of the ladder
    ``min, min + 1e-4, ...``; which character gets which rung changes from run to run. The lowest rung is
    exactly the score of the trained model's lowest piece, so a trained single character of that score ties
    with whichever kept character drew that rung, and from one output nobody can tell the two apart.

    So a group is every single character whose score lies on one chain of gaps of 1e-4 or 0 (descending):
    the characters of a chain and the multiset of its scores are the same in every run, only their pairing
    is not, and the chain's scores go to its characters in sorted order. A chain without ties is exactly
    what the trainer's ladder is, so outputs that never had a tie stay as they were.
    """
    singles = sorted((i for i, (p, _) in enumerate(pieces) if len(p) == 1), key=lambda i: -pieces[i][1])
    chains: list[list[int]] = []
    for i in singles:
        gap = pieces[chains[-1][-1]][1] - pieces[i][1] if chains else None
        if gap is not None and (abs(gap - KEPT_CHAR_STEP) < _SCORE_EPS or abs(gap) < _SCORE_EPS):
            chains[-1].append(i)
        else:
            chains.append([i])
    out = list(pieces)
    for chain in (c for c in chains if len(c) > 1):
        chars = sorted(pieces[i][0] for i in chain)
        for i, c in zip(chain, chars):  # chain order is descending score: the first character gets the highest
            out[i] = (c, pieces[i][1])
    return out


def _canonical_unigram(trained, spec: TokenizerSpec):
    """Unigram scores rounded to 1e-6 and pieces ordered by (score, piece), kept characters in sorted order.

    Why: the Unigram trainer's E-step adds up per-thread partial sums in an order that depends on rayon's
    scheduling, so scores differ in the last digits from run to run and equal-score pieces swap ids; the characters it
    adds at the end are scored in hash-set order (:func:`_sort_kept_characters`). Rounding far above that
    noise and sorting with the piece as tie-breaker makes the file byte-identical; 1e-6 in log-probability
    does not change any segmentation that matters.
    """
    import json

    from tokenizers import AddedToken, Tokenizer, models

    state = json.loads(trained.to_str())["model"]
    specials = spec.specials + [t for t in (spec.eod, spec.unk or "<unk>") if t not in spec.specials]
    pieces = _sort_kept_characters([(p, float(s)) for p, s in state["vocab"] if p not in specials])
    head = [(p, 0.0) for p in specials]
    rest = sorted(((p, round(s, 6)) for p, s in pieces), key=lambda x: (-x[1], x[0]))
    vocab = head + rest
    unk = spec.unk or "<unk>"
    tok = Tokenizer(models.Unigram(vocab, unk_id=[p for p, _ in vocab].index(unk), byte_fallback=False))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = trained.normalizer, trained.pre_tokenizer, trained.decoder
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def load_tokenizer(path: str | os.PathLike):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for unreadable JSON
        raise ConfigError(f"tokenizer.path: cannot load '{path}' as a Hugging Face tokenizer.json: {e}") from None


def eod_id(tok, spec: TokenizerSpec, where: str = "tokenizer") -> int:
    """Id of the end-of-document token; a clear error when the tokenizer lacks it."""
    i = tok.token_to_id(spec.eod)
    if i is None:
        raise ConfigError(
            f"tokenizer.eod_token: '{spec.eod}' is not in {where}; set tokenizer.eod_token to its end-of-document token"
        )
    return int(i)


def save_tokenizer(tok, path: str | os.PathLike) -> None:
    """Write ``tokenizer.json`` atomically (a killed run never leaves a half-written file)."""
    from pretrain.core.atomic import atomic_write

    atomic_write(path, tok.to_str(pretty=True).encode("utf-8"))


def encode_documents(tok, texts: Sequence[str], eod: int) -> list[np.ndarray]:
    """Token ids of each text with the end-of-document token appended (no BOS/CLS templates)."""
    encs = tok.encode_batch_fast(list(texts), add_special_tokens=False) if hasattr(tok, "encode_batch_fast") \
        else tok.encode_batch(list(texts), add_special_tokens=False)
    out = []
    for e in encs:
        ids = np.empty(len(e.ids) + 1, dtype=np.int64)
        ids[:-1] = e.ids
        ids[-1] = eod
        out.append(ids)
    return out


def batched(it: Iterable[str], n: int) -> Iterator[list[str]]:
    buf: list[str] = []
    for x in it:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf
