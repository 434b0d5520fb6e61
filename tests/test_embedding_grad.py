"""``train.persistent_embedding_grad``: the persistent gradient buffer of large embedding tables gives the same
training as autograd's dense gradient — bit-identical weights with one lookup per micro-batch, equal up to float
rounding with several lookups or gradient accumulation — and is installed only where it is safe."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertForMaskedLM, BertForSequenceClassification

from bertdistill.recipes import load_config
from bertdistill.training import embedding_grad
from bertdistill.training.loop import Trainer
from conftest import recipe, tiny_bert_config

VOCAB = 5000  # above MIN_ROWS: the word table is eligible with the module's real threshold


@pytest.fixture(autouse=True)
def _real_threshold(monkeypatch):
    """conftest lowers ``MIN_ROWS`` for the whole suite; here the module's own 4,096 applies (only the word
    table gets a buffer), but for the loop test, which lowers it again for the tiny test vocabulary."""
    monkeypatch.setattr(embedding_grad, "MIN_ROWS", 4096)


def _student() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = tiny_bert_config(vocab_size=VOCAB, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return BertForSequenceClassification(cfg).train()


def _batches(n: int, lookups: int = 1) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        micro = []
        for _ in range(lookups):
            ids = torch.randint(5, VOCAB, (4, 6 + i % 3), generator=g)
            ids[:, -2:] = 0  # padding ids: their rows never get a gradient
            ids[0, 1] = ids[1, 2]  # a repeated id within the batch
            micro.append((ids, (ids[:, 0] % 2)))
        out.append(micro)
    return out


def _train(
    model: nn.Module, batches, *, persistent: bool, accum: int = 1, set_to_none: bool = True
) -> nn.Module:
    if persistent:
        assert embedding_grad.install(model)
    torch.manual_seed(123)  # the dropout masks
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for step in batches:
        for micro in [step[i : i + accum] for i in range(0, len(step), accum)]:
            loss = sum(
                nn.functional.cross_entropy(model(input_ids=ids, attention_mask=(ids != 0).long()).logits, y)
                for ids, y in micro
            )
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=set_to_none)
    embedding_grad.uninstall(model)
    return model


def _assert_same(a: nn.Module, b: nn.Module, exact: bool) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if exact:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)


def test_one_lookup_per_step_gives_bit_identical_weights():
    base = _student()
    batches = _batches(6)
    dense = _train(copy.deepcopy(base), batches, persistent=False)
    persistent = _train(copy.deepcopy(base), batches, persistent=True)
    _assert_same(dense, persistent, exact=True)
    w0 = base.bert.embeddings.word_embeddings.weight
    # rows no batch touched still got AdamW's weight decay (the dense update): nothing became sparse
    untouched = torch.ones(VOCAB, dtype=torch.bool)
    untouched[torch.cat([ids.reshape(-1) for step in batches for ids, _ in step])] = False
    moved = persistent.bert.embeddings.word_embeddings.weight[untouched] != w0[untouched]
    assert moved.all()


@pytest.mark.parametrize("case", ["accumulation", "two_lookups", "zero_grad_keeps_tensors"])
def test_other_schedules_give_the_same_training_up_to_rounding(case):
    base = _student()
    kw = {
        "accumulation": dict(accum=1),  # two micro-batches, one optimizer step
        "two_lookups": dict(accum=2),  # two forwards summed into one loss (a siamese pair)
        "zero_grad_keeps_tensors": dict(accum=2, set_to_none=False),
    }[case]
    batches = _batches(5, lookups=2)
    dense = _train(copy.deepcopy(base), batches, persistent=False, **kw)
    persistent = _train(copy.deepcopy(base), batches, persistent=True, **kw)
    _assert_same(dense, persistent, exact=False)


def test_buffer_rows_are_zeroed_between_steps():
    model = _student()
    table = embedding_grad.install(model)[0]
    ids = torch.tensor([[7, 8, 9, 0]])
    model(input_ids=ids).logits.sum().backward()
    grad = table.weight.grad
    assert grad is not None and grad[[7, 8, 9]].abs().sum() > 0 and grad[0].abs().sum() == 0
    table.weight.grad = None  # zero_grad(set_to_none=True)
    model(input_ids=torch.tensor([[10, 11]])).logits.sum().backward()
    assert table.weight.grad is grad  # the same buffer, re-attached
    nonzero = grad.abs().sum(1).nonzero().flatten().tolist()
    assert nonzero == [10, 11]
    embedding_grad.uninstall(model)
    assert "forward" not in vars(table) and not hasattr(table, embedding_grad._STATE)


def test_no_grad_and_eval_use_the_plain_lookup():
    model = _student()
    table = embedding_grad.install(model)[0]
    with torch.no_grad():
        model(input_ids=torch.tensor([[7, 8]]))
    assert table.weight.grad is None


def test_only_large_untied_trainable_plain_tables_are_eligible():
    model = _student()
    assert embedding_grad.eligible(model) == [model.bert.embeddings.word_embeddings]  # not positions / types
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    assert embedding_grad.eligible(model) == []
    torch.manual_seed(0)
    mlm = BertForMaskedLM(tiny_bert_config(vocab_size=VOCAB, tie_word_embeddings=True))
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert embedding_grad.eligible(mlm) == []  # the tied decoder makes the gradient dense anyway
    assert embedding_grad.eligible(nn.Embedding(VOCAB, 8, max_norm=1.0)) == []
    assert embedding_grad.eligible(nn.Embedding(VOCAB, 8, sparse=True)) == []
    assert embedding_grad.eligible(nn.Embedding(embedding_grad.MIN_ROWS - 1, 8)) == []


def test_training_loop_installs_it_and_trains_the_same(teacher_dir, sst2_dir, tmp_path, monkeypatch, caplog):
    """The loop gives the student's table a buffer (the tiny vocabulary made eligible), restores it after each
    stage, and the run's weights equal those of a run with ``train.persistent_embedding_grad: false``."""
    monkeypatch.setattr(embedding_grad, "MIN_ROWS", 1)
    installed: list[nn.Module] = []
    original = embedding_grad.install

    def install(model):
        tables = original(model)
        installed.extend(tables)
        return tables

    monkeypatch.setattr(embedding_grad, "install", install)
    weights = {}
    for on in (True, False):
        raw = recipe("kd", teacher_dir, sst2_dir, tmp_path / f"o{on}", tmp_path / "c", train={"max_steps": 4})
        raw["train"]["persistent_embedding_grad"] = on
        raw["student"]["config_overrides"] = {"hidden_dropout_prob": 0.1}
        tr = Trainer(load_config(raw), quiet=True)
        installed.clear()
        res = tr.train()
        assert bool(installed) is on
        assert all("forward" not in vars(m) for m in tr.unwrapped().modules())
        weights[on] = load_file(str(res.output_dir / "model.safetensors"))
    assert weights[True].keys() == weights[False].keys()
    for k in weights[True]:
        assert torch.equal(weights[True][k], weights[False][k]), k


@pytest.mark.parametrize("kind", ["adamw", "adadelta", "sgd"])
@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_steps_and_clipping_leave_zero_rows_of_the_gradient_zero(kind, fused):
    """What the buffer relies on: the optimizers bertdistill builds (weight decay on, SGD with momentum), gradient
    clipping never write a nonzero into a gradient row that was zero, nor replace the gradient tensor."""
    from bertdistill.config import TrainConfig
    from bertdistill.training.optim import build_optimizer

    weight = nn.Parameter(torch.randn(VOCAB, 8))
    tr = TrainConfig(weight_decay=0.1, momentum=0.9, fused_adam=fused)
    opt = build_optimizer([{"params": [("word_embeddings.weight", weight)]}], tr, 1e-2, kind)
    grad = torch.zeros_like(weight)
    weight.grad = grad
    for _ in range(2):
        grad[[3, 7]] = 5.0
        torch.nn.utils.clip_grad_norm_([weight], 1.0)
        opt.step()
        assert weight.grad is grad
        grad[[3, 7]] = 0.0
        assert not grad.any()
