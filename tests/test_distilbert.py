"""DistilBERT (pre-training distillation) and the ``mlm`` head-training method: the paper's rules, tested on
tiny random models (see conftest)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForMaskedLM,
    DistilBertForMaskedLM,
    DistilBertForSequenceClassification,
)

from bertdistill import cli, load_config
from bertdistill.config import ConfigError, StudentConfig
from bertdistill.data.corpus import (
    CorpusConfig,
    build_token_store,
    corpus_datasets,
    corpus_splits,
    mlm_mask,
    smoothed_token_probs,
)
from bertdistill.data.tasks import get_task
from bertdistill.losses import masked_cosine, masked_soft_target_kl
from bertdistill.methods.distilbert import (
    DistilBert,
    distilbert_from_teacher,
    load_mlm_teacher,
    student_layers,
)
from bertdistill.protocol import takes_token_types
from bertdistill.students import copy_layers, encoder_layers
from bertdistill.training.loop import Trainer, distill
from conftest import (
    OTHER_ENCODERS,
    assert_same_run,
    kill_then_resume,
    other_encoder,
    save_teacher,
    tiny_bert_config,
)

# ----------------------------------------------------------------------------------------------- fixtures


def _recipe(teacher: Path, corpus: Path, tmp_path: Path, out: str = "out", **sections) -> dict:
    r = {
        "method": {"name": "distilbert", "corpus": [str(corpus)], "heldout_fraction": 0.1},
        "teacher": {"path": str(teacher), "cache_dir": str(tmp_path / "cache")},
        "student": {"num_layers": 2},
        "data": {"task": "mlm", "max_length": 24},
        "train": {"max_steps": 4, "batch_size": 16, "lr": 1e-3, "log_every": 1, "seed": 0},
        "output_dir": str(tmp_path / out),
    }
    for k, v in sections.items():
        r.setdefault(k, {}).update(v)
    return r


# ----------------------------------------------------------------------------------------------- student init


def test_layer_selection_12_to_6_copies_teacher_layers_and_embeddings():
    torch.manual_seed(0)
    teacher = BertForMaskedLM(tiny_bert_config(num_hidden_layers=12)).eval()
    layers = student_layers(12, StudentConfig(), "uniform")
    assert layers == [0, 2, 4, 7, 9, 11]
    student = distilbert_from_teacher(teacher, layers).eval()
    assert student.config.bertdistill_copied_layers == layers
    assert student.config.n_layers == 6 and not student.config.sinusoidal_pos_embds
    assert student.config.activation == teacher.config.hidden_act == "gelu"
    assert not any("token_type" in k or "pooler" in k for k in student.state_dict())

    t, s = teacher.bert, student.distilbert
    torch.testing.assert_close(s.embeddings.word_embeddings.weight, t.embeddings.word_embeddings.weight)
    torch.testing.assert_close(
        s.embeddings.position_embeddings.weight,
        t.embeddings.position_embeddings.weight + t.embeddings.token_type_embeddings.weight[0],
    )
    torch.testing.assert_close(s.embeddings.LayerNorm.weight, t.embeddings.LayerNorm.weight)
    for i, j in enumerate(layers):
        sl, tl = s.transformer.layer[i], t.encoder.layer[j]
        for a, b in [
            (sl.attention.q_lin, tl.attention.self.query),
            (sl.attention.k_lin, tl.attention.self.key),
            (sl.attention.v_lin, tl.attention.self.value),
            (sl.attention.out_lin, tl.attention.output.dense),
            (sl.sa_layer_norm, tl.attention.output.LayerNorm),
            (sl.ffn.lin1, tl.intermediate.dense),
            (sl.ffn.lin2, tl.output.dense),
            (sl.output_layer_norm, tl.output.LayerNorm),
        ]:
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), (i, j)
    p = teacher.cls.predictions
    assert torch.equal(student.vocab_transform.weight, p.transform.dense.weight)
    assert torch.equal(student.vocab_layer_norm.bias, p.transform.LayerNorm.bias)
    assert torch.equal(student.vocab_projector.bias, p.bias)
    assert student.vocab_projector.weight is s.embeddings.word_embeddings.weight  # tied, like the teacher's

    # the student computes exactly what a BERT made of the same teacher layers computes (segment-0 input)
    bert6 = copy_layers(teacher, layers).eval()
    ids = torch.randint(5, 40, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    with torch.no_grad():
        a = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        b = bert6(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    for m in range(7):
        torch.testing.assert_close(
            a.hidden_states[m][mask.bool()], b.hidden_states[m][mask.bool()], atol=1e-5, rtol=1e-4
        )
    torch.testing.assert_close(a.logits[mask.bool()], b.logits[mask.bool()], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- masking


def test_masking_proportions_and_special_tokens_never_masked():
    torch.manual_seed(0)
    vocab, mask_id, specials = 60, 4, [0, 1, 2, 3, 4]
    probs = smoothed_token_probs(np.ones(vocab, dtype=np.int64), 0.0, specials)
    ids = torch.randint(5, vocab, (64, 128))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    lengths = torch.randint(20, 128, (64,))
    att = (torch.arange(128)[None, :] < lengths[:, None]).long()
    ids[att == 0] = 0
    for r, n in enumerate(lengths.tolist()):
        ids[r, n - 1] = 3
    maskable = (att == 1) & (ids > 4)
    out, labels = mlm_mask(ids, att, probs, mask_id, vocab, 0.15)
    chosen = labels != -100
    assert chosen.sum().item() == round(0.15 * maskable.sum().item())
    assert not (chosen & ~maskable).any()  # never a special or padded position
    assert torch.equal(out[~chosen], ids[~chosen])
    assert torch.equal(labels[chosen], ids[chosen])
    n = chosen.sum().item()
    frac_mask = (out[chosen] == mask_id).float().mean().item()
    frac_keep = (out[chosen] == ids[chosen]).float().mean().item()
    frac_rand = 1 - frac_mask - frac_keep
    assert abs(frac_mask - 0.8) < 0.03 and abs(frac_keep - 0.1) < 0.03 and abs(frac_rand - 0.1) < 0.03, n
    # dynamic: a second call masks other positions
    _, labels2 = mlm_mask(ids, att, probs, mask_id, vocab, 0.15)
    assert not torch.equal(labels, labels2)


def test_frequency_smoothing_prefers_rare_tokens_by_count_to_the_minus_0_7():
    counts = np.ones(20, dtype=np.int64)
    counts[10], counts[11] = 1000, 10  # token 10 frequent, token 11 rare
    probs = smoothed_token_probs(counts, 0.7, [0, 1, 2, 3, 4])
    assert probs[:5].eq(0).all()
    ids = torch.tensor([[10, 11] * 2500])
    att = torch.ones_like(ids)
    gen = torch.Generator().manual_seed(0)
    picked = {10: 0, 11: 0}
    for _ in range(60):
        _, labels = mlm_mask(ids, att, probs, 4, 20, 0.01, generator=gen)
        for tok in picked:
            picked[tok] += int((labels == tok).sum())
    ratio = picked[11] / picked[10]
    assert ratio == pytest.approx((1000 / 10) ** 0.7, rel=0.2), picked


# ----------------------------------------------------------------------------------------------- losses


def test_ce_and_cos_ignore_padding(corpus_file, mlm_teacher_dir, tmp_path):
    torch.manual_seed(0)
    b, t, v, h = 2, 6, 11, 8
    att = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    s_log, t_log = torch.randn(b, t, v), torch.randn(b, t, v)
    s_hid, t_hid = torch.randn(b, t, h), torch.randn(b, t, h)
    labels = torch.full((b, t), -100)
    labels[0, 1], labels[1, 4] = 3, 7
    cfg = load_config(_recipe(mlm_teacher_dir, corpus_file, tmp_path))
    method = DistilBert(cfg, get_task("mlm"))

    def terms(sl, tl, sh, th):
        batch = {
            "inputs": {"input_ids": torch.zeros(b, t, dtype=torch.long), "attention_mask": att},
            "mlm_labels": labels,
        }
        s_out = SimpleNamespace(logits=sl, hidden_states=(None, sh))
        t_out = SimpleNamespace(logits=tl, hidden_states={-1: th})
        return method.loss(method.stages()[0], batch, s_out, t_out, None)  # type: ignore[arg-type]

    base = terms(s_log, t_log, s_hid, t_hid)
    pad = att == 0
    s_log2, t_log2, s_hid2, t_hid2 = s_log.clone(), t_log.clone(), s_hid.clone(), t_hid.clone()
    for x in (s_log2, t_log2, s_hid2, t_hid2):
        x[pad] = torch.randn_like(x[pad]) * 50
    changed = terms(s_log2, t_log2, s_hid2, t_hid2)
    for k in ("ce", "mlm", "cos"):
        torch.testing.assert_close(base[k], changed[k])
    # and the values are the official normalisation: mean over the real tokens' rows, × t², × alpha
    rows = att.bool()
    p_t = torch.softmax(t_log[rows] / 2, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s_log[rows] / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(base["ce"], 5.0 * kl)
    cos = torch.nn.functional.cosine_similarity(s_hid[rows], t_hid[rows], dim=-1)
    torch.testing.assert_close(base["cos"], 1.0 * (1 - cos).mean())
    # restricted to the masked tokens: only those two rows count
    only = masked_soft_target_kl(s_log, t_log, labels != -100, 2.0)
    p_t2 = torch.softmax(t_log[labels != -100] / 2, -1)
    ref = (p_t2 * (p_t2.log() - torch.log_softmax(s_log[labels != -100] / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(only, ref)
    assert masked_cosine(s_hid, s_hid, att).abs() < 1e-6


# ----------------------------------------------------------------------------------------------- corpus store


def test_token_store_lines_packing_and_heldout(corpus_file, tiny_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    cfg = CorpusConfig(corpus=[str(corpus_file)], heldout_fraction=0.1)
    lines = [x for x in corpus_file.read_text().splitlines() if x.strip()]
    store = build_token_store(cfg, tok, 24, tmp_path / "store")
    assert len(store) == len(lines)
    assert store.sequence(5) == tok(lines[5])["input_ids"]
    assert int(store.counts.sum()) == int(store.lengths.sum())
    assert build_token_store(cfg, tok, 24, tmp_path / "store").root == store.root  # cached
    packed = build_token_store(
        CorpusConfig(corpus=[str(corpus_file)], pack=True), tok, 24, tmp_path / "store"
    )
    assert packed.root != store.root and (packed.lengths[:-1] == 24).all()
    train, held, counts = corpus_splits(cfg, tok, 24, tmp_path / "store", seed=0)
    assert len(held) == 16 and len(train) == len(lines) - 16
    assert not set(held.indices.tolist()) & set(train.indices.tolist())
    np.testing.assert_array_equal(counts, train.token_counts())
    # a separate held-out file: all corpus lines train, the file's lines are held out
    extra = tmp_path / "held.txt"
    extra.write_text("the plot was dull\na lovely film\n")
    tr2, held2, _ = corpus_splits(replace(cfg, heldout_file=str(extra)), tok, 24, tmp_path / "store", seed=0)
    assert len(tr2) == len(lines) and len(held2) == 2
    assert held2[1]["input_ids"] == tok("a lovely film")["input_ids"] and "mask_seed" in held2[1]
    # the held-out slice depends on method.heldout_seed only, not on train.seed: an MLM teacher and students
    # trained with other seeds hold out the same sequences
    helds = []
    for seed in (1, 2):
        run = SimpleNamespace(
            teacher=SimpleNamespace(cache_dir=None),
            data=SimpleNamespace(max_length=24, max_train_examples=None, max_eval_examples=None),
            train=SimpleNamespace(seed=seed),
        )
        data = corpus_datasets(replace(cfg, store_dir=str(tmp_path / "store")), run, tok)
        probs = data["train"].mask_weights
        helds.append(data["eval"].indices)
        assert probs[tok.cls_token_id] == 0 and probs[tok.pad_token_id] == 0
    np.testing.assert_array_equal(helds[0], helds[1])


# ----------------------------------------------------------------------------------------------- runs


def test_pretrain_stage_runs_and_saves_a_loadable_distilbert_dir(mlm_teacher_dir, corpus_file, tmp_path):
    cfg = load_config(_recipe(mlm_teacher_dir, corpus_file, tmp_path, train={"eval_every": 2}))
    result = distill(cfg, quiet=True)
    out = result.output_dir
    hist = [r for r in result.history if "loss" in r]
    assert len(hist) == 4 and {"ce", "mlm", "cos"} <= hist[0].keys()
    assert result.metrics["neg_perplexity"] == -result.metrics["perplexity"] < 0
    mlm = AutoModelForMaskedLM.from_pretrained(out)
    assert isinstance(mlm, DistilBertForMaskedLM) and mlm.config.n_layers == 2
    assert mlm.config.bertdistill_copied_layers == [0, 3]
    clf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
    assert isinstance(clf, DistilBertForSequenceClassification)
    torch.testing.assert_close(
        clf.distilbert.embeddings.word_embeddings.weight, mlm.distilbert.embeddings.word_embeddings.weight
    )
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["the movie was good"], return_tensors="pt")
    assert "token_type_ids" not in enc
    assert clf(**enc).logits.shape == (1, 2)
    assert load_config(out / "bertdistill.yaml") == cfg


@pytest.mark.parametrize("freeze", [None, False])
def test_position_embeddings_stay_frozen_in_pretraining_by_default(
    freeze, mlm_teacher_dir, corpus_file, tmp_path
):
    """``freeze_position_embeddings`` (default true, as the official config's ``sinusoidal_pos_embds: true``):
    after real ``pretrain`` steps the position embeddings are still those copied from the teacher; ``false``
    trains them. The rest of the student trains either way."""
    method = {} if freeze is None else {"freeze_position_embeddings": freeze}
    tr = Trainer(load_config(_recipe(mlm_teacher_dir, corpus_file, tmp_path, method=method)), quiet=True)
    before = {k: v.clone() for k, v in tr.unwrapped().state_dict().items()}
    tr.train()
    after = tr.unwrapped().state_dict()
    positions = "distilbert.embeddings.position_embeddings.weight"
    assert torch.equal(before[positions], after[positions]) == (freeze is None)
    assert not torch.equal(
        before["distilbert.embeddings.word_embeddings.weight"],
        after["distilbert.embeddings.word_embeddings.weight"],
    )
    assert not torch.equal(
        before["distilbert.transformer.layer.0.ffn.lin1.weight"],
        after["distilbert.transformer.layer.0.ffn.lin1.weight"],
    )


def test_teacher_without_mlm_head_is_refused(encoder_dir, corpus_file, tmp_path):
    with pytest.raises(ConfigError, match="finetune --task mlm"):
        load_mlm_teacher(str(encoder_dir))
    with pytest.raises(ConfigError, match="finetune --task mlm"):
        Trainer(load_config(_recipe(encoder_dir, corpus_file, tmp_path)), quiet=True)


def test_finetune_task_mlm_trains_a_tied_head_and_feeds_distilbert(encoder_dir, corpus_file, tmp_path):
    out = tmp_path / "mlm"
    rc = cli.main(
        ["finetune", "--task", "mlm", "--model", str(encoder_dir), "--corpus", str(corpus_file),
         "--max-steps", "6", "--lr", "1e-2", "--batch-size", "16", "--set", "train.log_every=1",
         "--set", f"method.store_dir={tmp_path / 'store'}", "--set", "data.max_length=32", "-o", str(out), "-q"]
    )  # fmt: skip
    assert rc == 0
    model = load_mlm_teacher(str(out))  # no missing head weights any more
    assert isinstance(model, BertForMaskedLM)
    assert model.get_output_embeddings().weight is model.bert.embeddings.word_embeddings.weight
    # head only (the default): the encoder is untouched, the head moved away from its random init
    enc = load_file(str(encoder_dir / "model.safetensors"))
    for k, v in model.bert.state_dict().items():
        if k in enc:
            assert torch.equal(v, enc[k]), k
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["mlm"] for r in log if "mlm" in r]
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < losses[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "mlm" and metrics["perplexity"] > 1
    # the MLM dir is a valid distilbert teacher
    cfg = load_config(_recipe(out, corpus_file, tmp_path, out="distil", train={"max_steps": 1}))
    assert Trainer(cfg, quiet=True).teacher is not None


@pytest.mark.parametrize("with_task", [False, True], ids=["pretrain", "pretrain+task"])
def test_resume_is_exact(
    with_task, mlm_teacher_dir, corpus_file, teacher_dir, sst2_dir, tmp_path, monkeypatch
):
    sections: dict = {"train": {"max_steps": 6, "save_every": 2, "lr": 5e-4}}
    crash_at = 2  # the second checkpoint: step 4 of the pretrain stage
    if with_task:  # 3 pretrain + 4 task steps; die at step 5 (second checkpoint of the task stage)
        sections = {
            "method": {"task_teacher": str(teacher_dir), "pretrain_steps": 3, "task_steps": 4},
            "data": {"task": "sst2", "path": str(sst2_dir), "max_length": 32},
            "train": {"max_steps": None, "save_every": 1, "lr": 5e-4},
        }
        crash_at = 5
    full = distill(
        load_config(_recipe(mlm_teacher_dir, corpus_file, tmp_path, out="full", **sections)), quiet=True
    )
    cfg = load_config(_recipe(mlm_teacher_dir, corpus_file, tmp_path, out="killed", **sections))
    last, resumed = kill_then_resume(cfg, monkeypatch, crash_at, tmp_path / "killed")
    assert last == ("step-0000005" if with_task else "step-0000004")
    assert_same_run(full, resumed)


def test_task_stage_kd_and_finetune_from_the_distilled_dir(
    mlm_teacher_dir, corpus_file, teacher_dir, sst2_dir, tmp_path
):
    distilled = distill(
        load_config(_recipe(mlm_teacher_dir, corpus_file, tmp_path, train={"max_steps": 2})), quiet=True
    )
    recipe = load_config("distilbert/sst2").to_dict()
    recipe = copy.deepcopy(recipe)
    recipe["teacher"].update(path=str(teacher_dir), cache_dir=str(tmp_path / "cache"))
    recipe["student"]["path"] = str(distilled.output_dir)
    recipe["data"].update(path=str(sst2_dir), max_length=32, max_train_examples=None)
    recipe["train"].update(max_steps=2, batch_size=16, epochs=1)
    recipe["output_dir"] = str(tmp_path / "kd")
    res = distill(load_config(recipe), quiet=True)
    model = AutoModelForSequenceClassification.from_pretrained(res.output_dir)
    assert isinstance(model, DistilBertForSequenceClassification) and "accuracy" in res.metrics
    assert {r["stage"] for r in res.history if "loss" in r} == {"train"}
    assert "kd" in next(r for r in res.history if "loss" in r)
    # plain fine-tuning of the distilled dir (the no-KD task step) works as well
    rc = cli.main(
        ["finetune", "--model", str(distilled.output_dir), "--task", "sst2", "--data", str(sst2_dir),
         "--max-steps", "2", "--batch-size", "16", "--set", "data.max_length=32", "-o", str(tmp_path / "ft"), "-q"]
    )  # fmt: skip
    assert rc == 0 and json.loads((tmp_path / "ft" / "metrics.json").read_text())["accuracy"] >= 0


def test_mlm_metrics_is_the_perplexity_over_all_predicted_tokens():
    from bertdistill.mlm_head import mlm_metrics

    torch.manual_seed(0)
    model = DistilBertForMaskedLM(
        distilbert_from_teacher(BertForMaskedLM(tiny_bert_config()), [0, 3]).config
    ).eval()
    batches = []
    for width in (5, 9):
        ids = torch.randint(5, 40, (3, width))
        labels = torch.full_like(ids, -100)
        labels[:, 1] = ids[:, 1]
        labels[0, 3] = ids[0, 3]
        batches.append(
            {"inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "mlm_labels": labels}
        )
    ces = []
    with torch.no_grad():
        for b in batches:
            lg = model(**b["inputs"]).logits
            m = b["mlm_labels"] != -100
            ces.append(torch.nn.functional.cross_entropy(lg[m], b["mlm_labels"][m], reduction="none"))
    ref = torch.cat(ces).mean()  # 4 + 4 predicted tokens, each weighs the same
    got = mlm_metrics(model, batches)
    assert got["mlm_loss"] == pytest.approx(float(ref), rel=1e-5)
    assert got["perplexity"] == pytest.approx(float(ref.exp()), rel=1e-5) and got["neg_perplexity"] < 0


def test_store_ignores_a_bom_and_is_rebuilt_when_a_local_hf_data_file_changes(
    corpus_file, tiny_tokenizer_dir, tmp_path
):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    lines = [x for x in corpus_file.read_text().splitlines() if x.strip()][:5]
    bom = tmp_path / "bom.txt"
    bom.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    store = build_token_store(CorpusConfig(corpus=[str(bom)]), tok, 24, tmp_path / "s1")
    assert store.sequence(0) == tok(lines[0])["input_ids"]  # the byte-order mark is not part of line 1
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"body": t}) for t in lines[:3]) + "\n")
    cfg = CorpusConfig(hf_dataset="json", hf_data_files=[str(jl)], hf_column="body")
    assert len(build_token_store(cfg, tok, 24, tmp_path / "s2")) == 3
    jl.write_text("\n".join(json.dumps({"body": t}) for t in lines) + "\n")  # edited: 5 lines now
    assert len(build_token_store(cfg, tok, 24, tmp_path / "s2")) == 5
    # a missing file is a clear error and leaves nothing behind in the store dir
    with pytest.raises(ConfigError, match="not found"):
        build_token_store(CorpusConfig(corpus=[str(tmp_path / "nope.txt")]), tok, 24, tmp_path / "s3")
    assert not (tmp_path / "s3").exists() or not any((tmp_path / "s3").iterdir())


def test_corpus_from_an_hf_dataset_column(corpus_file, tiny_tokenizer_dir, tmp_path):
    lines = [x for x in corpus_file.read_text().splitlines() if x.strip()][:20]
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(lines)) + "\n")
    cfg = CorpusConfig(hf_dataset="json", hf_data_files=[str(jl)], hf_column="body")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    store = build_token_store(cfg, tok, 24, tmp_path / "store")
    assert len(store) == 20 and store.sequence(3) == tok(lines[3])["input_ids"]


def test_optional_task_stage_in_the_same_run(mlm_teacher_dir, corpus_file, teacher_dir, sst2_dir, tmp_path):
    """method.task_teacher adds the stage ``task``: the distilled body with a classification head, trained with
    Hinton KD from the fine-tuned classifier (the stage's own teacher) on data.task."""
    r = _recipe(
        mlm_teacher_dir,
        corpus_file,
        tmp_path,
        method={"task_teacher": str(teacher_dir), "pretrain_steps": 3, "task_steps": 4},
        data={"task": "sst2", "path": str(sst2_dir), "max_length": 32},
        train={"max_steps": None, "eval_every": 2},
    )
    result = distill(load_config(r), quiet=True)
    out = result.output_dir
    hist = [h for h in result.history if "loss" in h]
    assert [h["stage"] for h in hist] == ["pretrain"] * 3 + ["task"] * 4
    assert {"ce", "mlm", "cos"} <= hist[0].keys() and {"kd", "ce"} == hist[-1].keys() - {
        "step",
        "stage",
        "epoch",
        "lr",
        "loss",
        "sec_per_step",
    }
    evals = [h for h in result.history if "eval" in h]
    assert evals and all(h["stage"] == "task" and "accuracy" in h["eval"] for h in evals)
    assert "accuracy" in result.metrics
    pre = AutoModelForMaskedLM.from_pretrained(out / "stages" / "pretrain")
    assert isinstance(pre, DistilBertForMaskedLM)
    final = AutoModelForSequenceClassification.from_pretrained(out)
    assert isinstance(final, DistilBertForSequenceClassification) and final.config.num_labels == 2
    assert final.config.bertdistill_copied_layers == [0, 3]
    # the task stage trained the distilled body further (it is shared by both heads)
    w = "distilbert.transformer.layer.0.ffn.lin1.weight"
    assert not torch.equal(final.state_dict()[w], pre.state_dict()[w])


@pytest.mark.parametrize("arch", list(OTHER_ENCODERS))
def test_a_teacher_of_another_family_gives_a_student_of_its_own_family(arch):
    """From a RoBERTa / DistilBERT / ELECTRA / DeBERTa-v2 masked LM the student is that family's masked LM with
    fewer layers (DistilRoBERTa's recipe): student layer i is teacher layer layers[i], everything outside the
    stack is the teacher's. Every layer copied gives the teacher itself, to the bit."""
    torch.manual_seed(0)
    teacher = other_encoder(arch, "ForMaskedLM").eval()
    n = teacher.config.num_hidden_layers
    ids = torch.randint(5, 40, (3, 11))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    whole = copy_layers(teacher, list(range(n))).eval()
    assert torch.equal(
        whole(input_ids=ids, attention_mask=mask).logits, teacher(input_ids=ids, attention_mask=mask).logits
    )

    half = copy_layers(teacher, [0, n - 1])
    assert type(half) is type(teacher) and half.config.num_hidden_layers == 2
    assert half.config.bertdistill_copied_layers == [0, n - 1]
    stack = "(shared)" if arch == "albert" else encoder_layers(teacher)[0]  # ALBERT: one group at every depth
    t, s = teacher.state_dict(), half.state_dict()
    for key, value in s.items():
        if key.startswith(stack + "."):
            i, rest = key[len(stack) + 1 :].split(".", 1)
            assert torch.equal(value, t[f"{stack}.{[0, n - 1][int(i)]}.{rest}"]), key
        else:
            assert torch.equal(value, t[key]), key
    assert takes_token_types(half) == (arch != "distilbert")


def test_task_stage_from_an_electra_teacher_keeps_segment_ids(corpus_file, tiny_tokenizer_dir, tmp_path):
    """ELECTRA masked LM + an ELECTRA classifier for the task stage, on a pair task: the student is an ELECTRA at
    half depth; it keeps its token-type embeddings, so the saved tokenizer still gives segment ids (a DistilBERT
    student's stops)."""
    torch.manual_seed(0)
    mlm = save_teacher(other_encoder("electra", "ForMaskedLM"), tmp_path / "mlm", tiny_tokenizer_dir)
    clf = save_teacher(other_encoder("electra"), tmp_path / "clf", tiny_tokenizer_dir)
    mrpc = tmp_path / "MRPC"
    mrpc.mkdir()
    head = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = ["1\t1\t2\ta good film\ta fine film\n", "0\t3\t4\ta dull plot\ta good film\n"] * 12
    for split in ("train", "dev"):
        (mrpc / f"{split}.tsv").write_text(head + "".join(rows))
    r = _recipe(
        mlm,
        corpus_file,
        tmp_path,
        method={"task_teacher": str(clf), "pretrain_steps": 2, "task_steps": 2},
        data={"task": "mrpc", "path": str(mrpc), "max_length": 32},
        train={"max_steps": None},
    )
    result = distill(load_config(r), quiet=True)
    final = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert type(final).__name__ == "ElectraForSequenceClassification" and final.config.num_hidden_layers == 2
    assert "token_type_ids" in AutoTokenizer.from_pretrained(result.output_dir)("a", "b")


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta", "electra", "unknown-head"])
def test_masked_token_logits_equal_the_full_forward_at_the_predicted_positions(kind):
    from transformers import ElectraConfig, ElectraForMaskedLM, RobertaConfig, RobertaForMaskedLM

    from bertdistill.mlm_head import SparseMLM, masked_token_logits, split_mlm

    torch.manual_seed(0)
    bert = BertForMaskedLM(tiny_bert_config()).eval()
    shape = {k: getattr(bert.config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers")}
    shape.update(num_attention_heads=4, intermediate_size=64, pad_token_id=0)
    model = {
        "roberta": lambda: RobertaForMaskedLM(RobertaConfig(**shape)),
        "electra": lambda: ElectraForMaskedLM(
            ElectraConfig(**shape, embedding_size=16)
        ),  # a generator's head
        "distilbert": lambda: DistilBertForMaskedLM(distilbert_from_teacher(bert, [0, 3]).config),
    }.get(kind, lambda: bert)().eval()
    if kind == "unknown-head":  # a layout split_mlm does not know: the full forward is used and indexed
        model.base_model_prefix = "no_such_body"
        assert split_mlm(model) is None
    else:
        assert split_mlm(model) is not None
    ids = torch.randint(5, 40, (3, 7))
    attn = torch.ones_like(ids)
    attn[2, 5:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[1, 4], labels[2, 2] = ids[0, 1], ids[1, 4], ids[2, 2]
    inputs = {"input_ids": ids, "attention_mask": attn}
    with torch.no_grad():
        full = model(**inputs).logits
        got, picked = masked_token_logits(model, inputs, labels)
    keep = labels != -100
    assert got.shape == (3, full.shape[-1]) and torch.equal(picked, labels[keep])
    torch.testing.assert_close(got, full[keep], rtol=1e-5, atol=1e-5)
    # gradients reach the encoder and the head through the bundle, as through the full forward
    bundle = SparseMLM(model).train()
    out = bundle(labels, **inputs)
    logits, picked = out.logits, out.labels
    torch.nn.functional.cross_entropy(logits, picked).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "layer.0." in n)
