"""Document masking of packed sequences (``data.document_mask=true``): the ids the windows' EOD tokens give; two
packed documents give the per-token losses (and logits) of the two documents run separately, for GPT (learned,
rotary, ALiBi + window) and BERT; the pipeline stages carry the ids; the trainer's loader delivers the ids from
real shards. Tensor and sequence parallelism with document ids, ALiBi and a window: tests/train/test_parallelize.py
(its two-process checks hold a ``*_docs`` model each)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.data.documents import DocumentMask, document_ids
from pretrain.models.bert.model import BERT, BERTArgs
from pretrain.models.gpt.model import GPT, GPTArgs

EOD = 0


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_document_ids_restart_after_each_eod():
    ids = np.array([[5, 6, EOD, 7, EOD, EOD, 8, 9], [EOD, 1, 2, 3, 4, 5, 6, 7]])
    seg, pos = document_ids(ids, EOD)
    assert seg.tolist() == [[0, 0, 0, 1, 1, 2, 3, 3], [0, 1, 1, 1, 1, 1, 1, 1]]  # an EOD ends its own document
    assert pos.tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], [0, 0, 1, 2, 3, 4, 5, 6]]
    # GPT without a transform of its own: the causal-LM split plus the ids of the inputs
    out = DocumentMask(None, EOD)(3, np.array([5, 6, EOD, 7, 8], dtype=np.uint16))
    assert out["input_ids"].tolist() == [5, 6, EOD, 7] and out["labels"].tolist() == [6, EOD, 7, 8]
    assert out["segment_ids"].tolist() == [0, 0, 0, 1] and out["position_ids"].tolist() == [0, 1, 2, 0]
    assert out["input_ids"].dtype == np.int64


def gpt_args(**kw) -> GPTArgs:
    return GPTArgs(**{**dict(vocab_size=64, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                             ffn_hidden_size=64, seq_length=32), **kw})


def packed(*docs: torch.Tensor) -> dict[str, torch.Tensor]:
    ids = torch.cat(docs)[None]
    seg, pos = document_ids(ids.numpy(), EOD)
    return {"input_ids": ids, "segment_ids": torch.from_numpy(seg), "position_ids": torch.from_numpy(pos)}


def per_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none")


@pytest.mark.parametrize("kw", [{}, {"position_embedding": "rope"},
                                {"position_embedding": "alibi", "embedding_norm": True, "sliding_window": 4}],
                         ids=["learned", "rope", "alibi-window"])
def test_gpt_packed_documents_equal_the_documents_run_separately(kw):
    torch.manual_seed(0)
    model = GPT(gpt_args(**kw)).eval()
    g = torch.Generator().manual_seed(1)
    a = torch.cat([torch.randint(1, 64, (6,), generator=g), torch.tensor([EOD])])  # 6 tokens + EOD
    b = torch.cat([torch.randint(1, 64, (9,), generator=g), torch.tensor([EOD])])
    with torch.no_grad():
        both = model(**packed(a, b))
        alone = [model(d[None]) for d in (a, b)]
        unmasked = model(torch.cat([a, b])[None])
    torch.testing.assert_close(both[:, :7], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[:, 7:], alone[1], rtol=1e-5, atol=1e-5)
    ids = torch.cat([a, b])[None]
    losses = per_token_loss(both, ids)
    # each document's own next-token predictions (the EOD's prediction of the next document has no counterpart)
    torch.testing.assert_close(losses[:6], per_token_loss(alone[0], a[None]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses[7:], per_token_loss(alone[1], b[None]), rtol=1e-5, atol=1e-6)
    assert (unmasked[:, 7:] - alone[1]).abs().max() > 1e-3  # without the mask the second document sees the first


def test_bert_packed_documents_equal_the_documents_run_separately():
    torch.manual_seed(0)
    args = BERTArgs(vocab_size=64, num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                    seq_length=16, hidden_dropout=0.0, attention_dropout=0.0)
    model = BERT(args).eval()
    cls, sep, pad = 1, 2, 3
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(5, 64, (4,), generator=g), torch.randint(5, 64, (5,), generator=g)
    # [CLS] a EOD b [SEP] [PAD] x 3: [CLS] joins the first document, [SEP] and the padding the last
    ids = torch.cat([torch.tensor([cls]), a, torch.tensor([EOD]), b, torch.tensor([sep, pad, pad, pad])])[None]
    mask = (ids != pad).long()
    seg, pos = (torch.from_numpy(x) for x in document_ids(ids.numpy(), EOD))
    with torch.no_grad():
        both = model(ids, attention_mask=mask, position_ids=pos, segment_ids=seg)
        first = model(ids[:, :6])  # [CLS] a EOD
        second = model(ids[:, 6:], attention_mask=mask[:, 6:])  # b [SEP] + padding
    torch.testing.assert_close(both[:, :6], first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[:, 6:12], second[:, :6], rtol=1e-5, atol=1e-5)


def chained_stages(family_name: str, model, batch: dict) -> torch.Tensor:
    """The loss of the pipeline stage layers chained by hand (what DeepSpeed runs across the stages)."""
    from pretrain.models import get_family

    family = get_family(family_name)
    layers, loss_fn = family.pipeline_stages(model, None)
    x, labels = family.to_pipe_batch(batch)
    for spec in layers:  # a TiedLayerSpec (the embedding, and the output layer with its forward_fn) or a module
        fn = getattr(spec, "forward_fn", None)
        layer = spec.build() if hasattr(spec, "build") else spec
        x = fn(layer, x) if fn is not None else layer(x)
    return loss_fn(x, labels)


def test_pipeline_stages_carry_the_document_ids():
    """GPT and BERT stage layers chained by hand give the one-module loss of a packed batch (and it differs from
    the unmasked loss: the ids reach every layer)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 64, (2, 33), generator=g)
    ids[0, 9], ids[1, 20] = EOD, EOD
    seg, pos = (torch.from_numpy(x) for x in document_ids(ids[:, :-1].numpy(), EOD))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "segment_ids": seg, "position_ids": pos}
    for kw in ({"position_embedding": "rope", "sliding_window": 5}, {"position_embedding": "alibi",
                                                                      "embedding_norm": True}):
        torch.manual_seed(0)
        model = GPT(gpt_args(**kw))
        loss = chained_stages("gpt", model, batch)
        torch.testing.assert_close(loss, model(**batch), rtol=1e-6, atol=1e-6)
        assert abs(float(loss) - float(model(batch["input_ids"], batch["labels"]))) > 1e-6  # tiny init: small
    torch.manual_seed(0)
    bert = BERT(BERTArgs(vocab_size=64, num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                         seq_length=32, hidden_dropout=0.0, attention_dropout=0.0))
    labels = torch.where(torch.arange(32) % 4 == 1, batch["labels"], -100)
    mlm = {"input_ids": batch["input_ids"], "token_type_ids": torch.zeros_like(seg),
           "attention_mask": torch.ones_like(seg), "labels": labels, "segment_ids": seg, "position_ids": pos}
    torch.testing.assert_close(chained_stages("bert", bert, mlm), bert(**mlm), rtol=1e-6, atol=1e-6)


def test_the_trainer_loader_gives_document_ids_from_the_shards(tmp_path, compose_cfg, monkeypatch, cache_dir):
    from conftest import TINY
    from pretrain.trainer import Trainer

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    cfg = compose_cfg(*TINY, "trainer.max_steps=8", "data.document_mask=true", f"run_dir={tmp_path}")
    trainer = Trainer(cfg).plan()
    trainer.dp_rank = 0
    batches = list(trainer.loader(trainer.data.train, trainer.num_train_samples, 0))
    assert set(batches[0]) == {"input_ids", "labels", "segment_ids", "position_ids"}
    eod = trainer.tokenizer.eod_id
    for b in batches:
        seg, pos = document_ids(b["input_ids"].numpy(), eod)
        assert np.array_equal(b["segment_ids"].numpy(), seg) and np.array_equal(b["position_ids"].numpy(), pos)
        assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:])  # the causal split is the usual one
    assert max(int(b["segment_ids"].max()) for b in batches) >= 1  # some windows do pack several documents
