"""Tokenizer kinds (GPT byte-level BPE, BERT WordPiece, T5 Unigram), their special tokens, determinism, EOD."""

from __future__ import annotations

import inspect
import json

import pytest

from pretrain.core.errors import ConfigError
from pretrain.core.tokenizer import (
    TokenizerSpec,
    encode_documents,
    eod_id,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real text: the source of a few standard-library modules (prose docstrings and code)."""
    import bisect
    import heapq
    import shlex
    import textwrap

    out = []
    for mod in (textwrap, heapq, shlex, bisect):
        src = inspect.getsource(mod)
        out += [src[i : i + 2000] for i in range(0, len(src), 2000)]
    return out + ["Ünïcödé façade — naïve café, 東京 and emoji 🙂."]


def _train(kind: str, texts: list[str], **kw):
    spec = TokenizerSpec(kind=kind, vocab_size=kw.pop("vocab_size", 600), **kw)
    spec.validate()
    return spec, train_tokenizer(spec, lambda: iter(texts))


def test_bpe_gpt_byte_level(texts):
    spec, tok = _train("bpe", texts)
    assert tok.token_to_id("<|endoftext|>") == eod_id(tok, spec) == 0
    assert tok.get_vocab_size() == 600
    text = "def naïve(x): return 東京 🙂"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: nothing is ever unknown


def test_wordpiece_bert_special_tokens(texts):
    spec, tok = _train("wordpiece", texts)
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert eod_id(tok, spec) == 3
    enc = tok.encode("heap queue algorithm")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert any(t.startswith("##") for t in tok.encode("heapreplace heappushpop").tokens)


def test_unigram_t5_special_and_sentinel_tokens(texts):
    spec, tok = _train("unigram", texts, sentinel_tokens=100, vocab_size=700)
    assert [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert eod_id(tok, spec) == 1
    n = tok.get_vocab_size()
    # As in T5: <extra_id_0> is the highest id, <extra_id_99> the lowest sentinel.
    assert tok.token_to_id("<extra_id_0>") == n - 1 and tok.token_to_id("<extra_id_99>") == n - 100
    assert tok.encode("heap queue").tokens[-1] == "</s>"


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_training_is_byte_identical(kind, texts, tmp_path):
    a = _train(kind, texts, sentinel_tokens=5 if kind == "unigram" else 0)[1]
    b = _train(kind, texts, sentinel_tokens=5 if kind == "unigram" else 0)[1]
    save_tokenizer(a, tmp_path / "a.json")
    save_tokenizer(b, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_encode_appends_eod_and_treats_special_text_as_text(texts, tmp_path):
    spec, tok = _train("bpe", texts)
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    tok.encode_special_tokens = True  # what the tokenize stage does
    ids = encode_documents(tok, ["plain text", "a fake <|endoftext|> marker"], eod_id(tok, spec))
    assert all(int(x[-1]) == 0 for x in ids)
    assert 0 not in ids[1][:-1].tolist()  # the literal marker inside a document is not an EOD


def test_given_tokenizer_file_and_errors(texts, tmp_path):
    spec, tok = _train("wordpiece", texts)
    path = tmp_path / "bert.json"
    save_tokenizer(tok, path)
    given = TokenizerSpec(kind="wordpiece", path=str(path))
    given.validate()
    assert eod_id(load_tokenizer(path), given) == 3
    with pytest.raises(ConfigError, match="tokenizer.eod_token"):
        eod_id(load_tokenizer(path), TokenizerSpec(kind="bpe", path=str(path)))  # no <|endoftext|> in a BERT vocab
    with pytest.raises(ConfigError, match="tokenizer.path"):
        TokenizerSpec(path=str(tmp_path / "missing.json")).validate()
    (tmp_path / "broken.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ConfigError, match="broken.json"):
        load_tokenizer(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        TokenizerSpec(kind="sentencepiece").validate()
