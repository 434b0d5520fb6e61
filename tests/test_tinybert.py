"""TinyBERT: layer maps, pre-softmax attention capture, losses, projections, stages, augmentation."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertTokenizerFast,
)

from bertdistill import load_config
from bertdistill.cli import main as cli_main
from bertdistill.config import ConfigError
from bertdistill.data.augment import (
    STOP_WORDS,
    AugmentConfig,
    Augmenter,
    GloVeNeighbours,
    augment_examples,
    is_candidate_word,
    non_wordpiece,
    word_start_mark,
)
from bertdistill.data.loading import Collator, Examples, tokenize
from bertdistill.layer_map import tinybert_layer_maps
from bertdistill.losses import (
    attention_kl,
    attention_prob_mse,
    attention_score_mse,
    average_heads,
    soft_cross_entropy,
    zero_masked_scores,
)
from bertdistill.methods.tinybert import SCORES_ATTENTION, use_score_attention
from bertdistill.protocol import Needs
from bertdistill.teachers import CachedTeacher
from bertdistill.training.loop import Trainer, distill
from bertdistill.training.optim import build_optimizer
from conftest import SPECIAL, assert_same_run, kill_then_resume, method_terms, recipe, tiny_bert_config

NARROW = {"init": "random", "config_overrides": {"hidden_size": 16, "intermediate_size": 32}}


def _cfg(teacher_dir, data_dir, tmp_path, method=None, **sections):
    sections.setdefault("student", {"num_layers": 2})
    r = recipe("tinybert", teacher_dir, data_dir, tmp_path / "out", tmp_path / "cache", **sections)
    r["method"].update({"intermediate_lr": 1e-3, "prediction_lr": 1e-3, **(method or {})})
    return load_config(r)


def _batch(tr, n=8):
    data = tr.datasets["train"]
    return Collator(tr.tokenizer.pad_token_id)([data[i] for i in range(n)])


# ----------------------------------------------------------------------------------------------- layer maps


def test_layer_maps_uniform_embeddings_and_attentions():
    hidden, att = tinybert_layer_maps(12, 4)
    assert hidden == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]  # embeddings 0→0, m → 3m
    assert att == [(0, 2), (1, 5), (2, 8), (3, 11)]  # official teacher_atts[i·k + k − 1], no embedding
    hidden, att = tinybert_layer_maps(6, 2)
    assert hidden == [(0, 0), (1, 3), (2, 6)] and att == [(0, 2), (1, 5)]
    hidden, att = tinybert_layer_maps(6, 4)  # k = 1.5: g(m) rounded half up
    assert hidden == [(0, 0), (1, 2), (2, 3), (3, 5), (4, 6)] and att == [(0, 1), (1, 2), (2, 4), (3, 5)]
    with pytest.raises(ValueError):
        tinybert_layer_maps(4, 6)


def test_method_builds_maps_needs_and_saves_them(teacher_dir, sst2_dir, tmp_path):
    tr = Trainer(_cfg(teacher_dir, sst2_dir, tmp_path), quiet=True)  # 4-layer teacher, 2-layer student
    m, b = tr.method, tr.unwrapped()
    assert b.hidden_map == [(0, 0), (1, 2), (2, 4)] and b.attention_map == [(0, 1), (1, 3)]
    needs = m.teacher_needs(tr.stages[0], tr.unwrapped())
    assert needs.hidden_layers == (0, 2, 4) and needs.attention_layers == (1, 3) and not needs.logits
    pred = m.teacher_needs(tr.stages[1], tr.unwrapped())
    assert pred.logits and not pred.attentions
    student = m.export_model(tr.unwrapped())
    assert student.config.bertdistill_layer_map == {
        "hidden": [[0, 0], [1, 2], [2, 4]],
        "attention": [[0, 1], [1, 3]],
    }
    with pytest.raises(ConfigError, match="hidden-state indices"):
        Trainer(_cfg(teacher_dir, sst2_dir, tmp_path, method={"hidden_map": [[0, 0], [3, 4]]}), quiet=True)


def test_config_validation():
    with pytest.raises(ConfigError, match="order"):
        load_config({"method": {"name": "tinybert", "stages": ["task_prediction", "task_intermediate"]}})
    with pytest.raises(ConfigError, match="corpus"):
        load_config({"method": {"name": "tinybert", "stages": ["general"]}})
    general = {"name": "tinybert", "stages": ["general"], "corpus": ["c.txt"]}
    with pytest.raises(ConfigError, match="corpus_max_lines"):
        load_config({"method": {**general, "corpus_max_lines": 0}})
    with pytest.raises(ConfigError, match="hf_data_files needs method.hf_dataset"):
        load_config({"method": {**general, "hf_data_files": ["c.jsonl"]}})
    with pytest.raises(ConfigError, match="attention_loss"):
        load_config({"method": {"name": "tinybert", "attention_loss": "cosine"}})


@pytest.mark.parametrize(
    "student_init, stages, set_lrs, expected",
    [
        ("random", ["task_intermediate", "task_prediction"], {}, (1e-4, 1e-4)),  # the shipped recipes
        (
            "pretrained",
            ["task_intermediate", "task_prediction"],
            {},
            (5e-5, 3e-5),
        ),  # a General TinyBERT: official
        (
            "random",
            ["general", "task_intermediate", "task_prediction"],
            {},
            (5e-5, 3e-5),
        ),  # general stage first
        ("random", ["task_prediction"], {"prediction_lr": 2e-5}, (1e-4, 2e-5)),  # a set rate is kept
    ],
)
def test_task_learning_rates_follow_the_students_start(
    student_init, stages, set_lrs, expected, tmp_path, caplog
):
    """Unset task-stage rates are the official ones for a student that starts trained, 1e-4 for a random one
    (a smaller rate set for a random one is warned about); the no-KD control fine-tunes (from the same start,
    without the general stage) at the classifier's rate."""
    from bertdistill.data.tasks import get_task
    from bertdistill.methods.tinybert import TinyBERT

    method = {"name": "tinybert", "stages": stages, "corpus": [str(tmp_path / "c.txt")], **set_lrs}
    student = {"init": student_init, "path": str(tmp_path) if student_init == "pretrained" else None}
    run = load_config({"method": method, "student": student, "data": {"task": "sst2"}})
    assert run.method.intermediate_lr == set_lrs.get(
        "intermediate_lr"
    )  # unset stays unset in the dumped config
    with caplog.at_level("WARNING", logger="bertdistill.methods.tinybert"):
        tb = TinyBERT(run, get_task("sst2"))
    warned = "method.prediction_lr=2e-05 with a random-init student" in caplog.text
    assert warned == (student_init == "random" and "general" not in stages and bool(set_lrs))
    assert tb.task_lrs() == expected
    lrs = {st.name: st.lr for st in tb.stages()}
    assert [lrs.get("task_intermediate", expected[0]), lrs["task_prediction"]] == list(expected)
    control = TinyBERT.control_recipe(copy.deepcopy(run.to_dict()), steps=40)
    assert control["method"] == {"name": "finetune"} and control["train"]["max_steps"] == 40
    random_control = student_init == "random" and "prediction_lr" not in set_lrs
    assert control["train"]["lr"] == (1e-4 if random_control else expected[1])


# ----------------------------------------------------------------------------------------------- attention


def test_captured_scores_softmax_to_eager_maps(tiny_model):
    ids = torch.randint(5, 40, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    eager = tiny_model(input_ids=ids, attention_mask=mask, output_attentions=True)
    scored = use_score_attention(copy.deepcopy(tiny_model))
    assert scored.config._attn_implementation == SCORES_ATTENTION
    out = scored(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert torch.allclose(out.logits, eager.logits, atol=1e-6)  # the model's outputs are unchanged
    for s, p in zip(out.attentions, eager.attentions, strict=True):
        assert torch.allclose(s.softmax(-1), p, atol=1e-6)
        assert (s[1, :, :, 5:] <= -1e2).all() and (s[1, :, :, :5] > -1e2).all()  # mask added, pre-softmax


def test_masked_scores_are_zeroed_and_padding_ignored():
    s = torch.tensor([[[[1.0, 2.0, -1e4], [0.5, -3.4e38, -150.0]]]])
    assert torch.equal(zero_masked_scores(s), torch.tensor([[[[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]]]]))
    b, h, t = 2, 3, 5
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 3:] = 0
    st, te = torch.randn(b, h, t, t), torch.randn(b, h, t, t)
    pad = mask[:, None, :, None].bool() & mask[:, None, None, :].bool()
    te_garbage = torch.where(pad, te, torch.randn_like(te) * 100)  # padded entries differ arbitrarily
    expected = ((st - te).pow(2) * pad).sum() / (pad.sum() * h)  # mean over heads × real pairs
    assert torch.allclose(attention_score_mse(st, te_garbage, mask), expected)
    # the additive mask (dtype min) in both sides contributes nothing
    key_pad = ~mask.bool()[:, None, None, :]
    assert torch.allclose(
        attention_score_mse(st.masked_fill(key_pad, -3.4e38), te.masked_fill(key_pad, -1e4), mask), expected
    )
    assert attention_prob_mse(st, st, mask) == 0 and attention_kl(st, st, mask).abs() < 1e-6
    assert attention_kl(st, te, mask) > 0


def test_per_head_averaging_and_fewer_student_heads(teacher_dir, sst2_dir, tmp_path):
    att = torch.arange(4.0).reshape(1, 4, 1, 1).expand(2, 4, 3, 3)
    avg = average_heads(att, 2)
    assert avg.shape == (2, 2, 3, 3) and avg[0, 0, 0, 0] == 0.5 and avg[0, 1, 0, 0] == 2.5
    assert average_heads(att, 4) is att
    with pytest.raises(ValueError):
        average_heads(att, 3)
    student = {
        "num_layers": 2,
        "init": "random",
        "config_overrides": {"num_attention_heads": 8, "hidden_size": 32},
    }
    with pytest.raises(ConfigError, match="heads"):
        Trainer(_cfg(teacher_dir, sst2_dir, tmp_path, student=student), quiet=True)


# scores [B = 2, heads = 2, T = 3, T]; example 0 has a padded last token
MASK = [[1, 1, 0], [1, 1, 1]]
S_SCORES = [
    [
        [[0.0, 1.0, 5.0], [2.0, 0.0, 5.0], [9.0, 9.0, 9.0]],
        [[1.0, 1.0, 5.0], [0.0, 3.0, 5.0], [9.0, 9.0, 9.0]],
    ],
    [
        [[0.0, 1.0, 2.0], [1.0, 0.0, 0.5], [0.0, 0.0, 3.0]],
        [[2.0, 0.0, 0.0], [0.5, 0.5, 1.0], [1.0, 2.0, 0.0]],
    ],
]
T_SCORES = [  # more peaked than the student's: KL(T ‖ S) and KL(S ‖ T) differ clearly
    [
        [[6.0, 0.0, -4.0], [0.0, 5.0, -4.0], [-9.0, 0.0, 9.0]],
        [[0.0, 4.0, -4.0], [5.0, 0.0, -4.0], [0.0, 0.0, 0.0]],
    ],
    [
        [[6.0, 0.0, 1.0], [0.0, 6.0, 0.0], [4.0, 1.0, 1.0]],
        [[0.0, 0.0, 5.0], [5.0, 0.0, 0.0], [0.0, 6.0, 0.0]],
    ],
]


def _row_probs(scores, real):
    """softmax over the real keys of one query row."""
    e = [math.exp(x) if keep else 0.0 for x, keep in zip(scores, real, strict=True)]
    return [x / sum(e) for x in e]


def _per_real_row(fn):
    """``fn(p_S, p_T, real_keys)`` for every head and real query row of S_SCORES / T_SCORES."""
    out = []
    for b, real in enumerate(MASK):
        for h in range(2):
            for q in range(3):
                if real[q]:
                    p_s = _row_probs(S_SCORES[b][h][q], real)
                    p_t = _row_probs(T_SCORES[b][h][q], real)
                    out.append(fn(p_s, p_t, real))
    return out


def _attention_args():
    return torch.tensor(S_SCORES), torch.tensor(T_SCORES), torch.tensor(MASK)


def test_attention_kl_direction_and_normalisation_by_hand():
    """``KL(softmax(A_T) ‖ softmax(A_S))`` over the real keys of each query row, averaged over heads × real query
    rows (here 2 heads × (2 + 3) rows = 10): not KL(S ‖ T), and padded rows neither count nor dilute."""

    def kl(p, q, real):
        return sum(a * math.log(a / b) for a, b, keep in zip(p, q, real, strict=True) if keep)

    forward = _per_real_row(lambda p_s, p_t, real: kl(p_t, p_s, real))
    reverse = _per_real_row(lambda p_s, p_t, real: kl(p_s, p_t, real))
    assert len(forward) == 10
    expected = sum(forward) / 10
    assert expected != pytest.approx(sum(reverse) / 10, rel=0.05)  # the direction shows in the value
    assert attention_kl(*_attention_args()).item() == pytest.approx(expected, rel=1e-5)


def test_attention_prob_mse_by_hand():
    """MSE of the post-softmax maps (padded keys excluded from the softmax), averaged over heads × real
    (query, key) pairs: 2 heads × (2·2 + 3·3) = 26."""
    rows = _per_real_row(
        lambda p_s, p_t, real: [(a - b) ** 2 for a, b, keep in zip(p_s, p_t, real, strict=True) if keep]
    )
    squares = [x for row in rows for x in row]
    assert len(squares) == 26
    assert attention_prob_mse(*_attention_args()).item() == pytest.approx(sum(squares) / 26, rel=1e-5)


@pytest.mark.parametrize("attention_loss", ["mse_scores", "mse_probs", "kl_probs"])
def test_fewer_student_heads_learn_averages_of_consecutive_teacher_heads(
    attention_loss, teacher_dir, sst2_dir, tmp_path
):
    """A 2-head student of the 4-head teacher: student head 0 learns the mean of teacher heads 0, 1 and head 1
    of heads 2, 3 — the *pre-softmax scores* are averaged, also under the post-softmax loss options."""
    student = {"num_layers": 2, "init": "random", "config_overrides": {"num_attention_heads": 2}}
    method = {"attention_loss": attention_loss, "embedding_weight": 0.0, "hidden_weight": 0.0}
    tr = Trainer(_cfg(teacher_dir, sst2_dir, tmp_path, student=student, method=method), quiet=True)
    batch, stage = _batch(tr), tr.stages[0]
    terms, s_out, t_out = method_terms(tr, batch, stage)
    assert set(terms) == {"att"}
    loss = {"mse_scores": attention_score_mse, "mse_probs": attention_prob_mse, "kl_probs": attention_kl}
    mask = batch["inputs"]["attention_mask"]
    expected = 0.0
    for s, t in tr.unwrapped().attention_map:
        heads = t_out.attentions[t]
        averaged = torch.stack([(heads[:, 0] + heads[:, 1]) / 2, (heads[:, 2] + heads[:, 3]) / 2], dim=1)
        expected += loss[attention_loss](s_out.attentions[s], averaged, mask).item()
    assert terms["att"].item() == pytest.approx(expected, rel=1e-5)


def test_soft_cross_entropy_official_reduction():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    hand = -(t.softmax(-1) * s.log_softmax(-1)).sum() / 12  # mean over examples and classes, no t²
    assert torch.allclose(soft_cross_entropy(s, t), hand)
    assert torch.allclose(
        soft_cross_entropy(s, t, 2.0), -(torch.softmax(t / 2, -1) * torch.log_softmax(s / 2, -1)).mean()
    )


# ----------------------------------------------------------------------------------------------- projections


@pytest.mark.parametrize("projection", ["shared", "per_layer"])
def test_projections_get_gradients_and_are_optimised(projection, teacher_dir, sst2_dir, tmp_path):
    cfg = _cfg(
        teacher_dir,
        sst2_dir,
        tmp_path,
        method={"projection": projection},
        student={"num_layers": 2, **NARROW},
    )
    tr = Trainer(cfg, quiet=True)
    bundle = tr.bundle
    assert len(bundle.fit_dense) == (1 if projection == "shared" else 3)
    assert bundle.fit_dense[0].weight.shape == (32, 16)  # student width 16 → teacher width 32
    batch, stage = _batch(tr), tr.stages[0]
    terms, _, _ = method_terms(tr, batch, stage)
    assert set(terms) == {"emb", "hidden", "att"}
    sum(terms.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bundle.fit_dense.parameters())
    groups = (
        [{"params": list(bundle.named_parameters())}]
        if stage.param_groups is None
        else stage.param_groups(bundle)
    )
    opt = build_optimizer(groups, cfg.train, 1e-3)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in bundle.fit_dense.parameters())
    names = {n for g in groups for n, _ in g["params"]}  # intermediate: no pooler / head (no gradient there)
    assert not any("classifier" in n or "pooler" in n for n in names) and "fit_dense.0.weight" in names
    pred_groups = tr.stages[1].param_groups(bundle)  # prediction stage: the student proper only
    assert not {id(p) for _, p in pred_groups[0]["params"]} & {id(p) for p in bundle.fit_dense.parameters()}


# ----------------------------------------------------------------------------------------------- stages


def _corpus(tmp_path):
    rng = random.Random(1)
    words = ["good", "bad", "movie", "plot", "the", "is", "very", "dull", "nice"]
    f = tmp_path / "corpus.txt"
    f.write_text(
        "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(40)) + "\n\n"
    )
    return f


def test_all_stages_outputs_load_and_extras_resume(teacher_dir, sst2_dir, tmp_path):
    corpus = _corpus(tmp_path)
    method = {
        "stages": ["general", "task_intermediate", "task_prediction"],
        "corpus": [str(corpus)],
        "general_teacher": str(teacher_dir),
        "general_lr": 1e-3,
    }
    cfg = _cfg(
        teacher_dir,
        sst2_dir,
        tmp_path,
        method=method,
        student={"num_layers": 2, **NARROW},
        train={"max_steps": 3, "batch_size": 8},
    )
    result = distill(cfg, quiet=True)
    out = result.output_dir
    assert {r["stage"] for r in result.history if "loss" in r} == {
        "general",
        "task_intermediate",
        "task_prediction",
    }
    assert {"emb", "hidden", "att"} <= set(next(r for r in result.history if r.get("stage") == "general"))
    assert "accuracy" in result.metrics
    for name in method["stages"]:
        d = out / "stages" / name
        model = AutoModelForSequenceClassification.from_pretrained(d)
        assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 2
        assert set(load_file(str(d / "extras.safetensors"))) == {"fit_dense.0.weight", "fit_dense.0.bias"}
    final = AutoModelForSequenceClassification.from_pretrained(out)
    assert final.config._attn_implementation != SCORES_ATTENTION  # saved model loads with default attention
    # a later run goes on from the general stage: student weights + projections
    g = out / "stages" / "general"
    cfg2 = _cfg(
        teacher_dir,
        sst2_dir,
        tmp_path / "r2",
        method={"init_extras": str(g)},
        student={"num_layers": 2, "init": "pretrained", "path": str(g)},
    )
    tr2 = Trainer(cfg2, quiet=True)
    extras = load_file(str(g / "extras.safetensors"))
    assert torch.equal(tr2.bundle.fit_dense[0].weight, extras["fit_dense.0.weight"])
    g_model = AutoModelForSequenceClassification.from_pretrained(g)
    assert torch.equal(
        tr2.method.export_model(tr2.unwrapped()).bert.embeddings.word_embeddings.weight,
        g_model.bert.embeddings.word_embeddings.weight,
    )
    # --resume restores the bundle (projections included) from the run's last checkpoint
    tr3 = Trainer(cfg, quiet=True)
    before = tr3.bundle.fit_dense[0].weight.clone()
    tr3.train(resume=True)
    last = load_file(str(out / "stages" / "task_prediction" / "extras.safetensors"))
    assert not torch.equal(before, last["fit_dense.0.weight"])
    assert torch.equal(tr3.bundle.fit_dense[0].weight, last["fit_dense.0.weight"])


def _general(teacher_dir, sst2_dir, tmp_path, method, **sections):
    method = {"stages": ["general"], "general_teacher": str(teacher_dir), "general_lr": 1e-3, **method}
    sections.setdefault("train", {"max_steps": 2, "batch_size": 8})
    return _cfg(teacher_dir, sst2_dir, tmp_path, method=method, **sections)


def test_general_only_run(teacher_dir, sst2_dir, tmp_path):
    """Default: one sequence per line, batched exactly as the tokenised lines (segment ids included, no
    masking); ``corpus_max_lines`` keeps the first lines."""
    corpus = _corpus(tmp_path)
    cfg = _general(teacher_dir, sst2_dir, tmp_path, {"corpus": [str(corpus)], "corpus_max_lines": 16})
    tr = Trainer(cfg, quiet=True)
    data = tr.datasets["corpus"]
    assert tr.teacher is None and len(data) == 16 and "train" not in tr.datasets
    lines = [(x,) for x in corpus.read_text().splitlines() if x.strip()][:16]
    ref = tokenize(Examples(lines, None), tr.tokenizer, cfg.data.max_length)
    assert data.lengths == ref.lengths
    got, want = tr.collate([data[i] for i in range(5)]), tr.collate([ref[i] for i in range(5)])
    assert got["inputs"].keys() == {"input_ids", "attention_mask", "token_type_ids"} and "labels" not in got
    for k in want["inputs"]:
        assert torch.equal(got["inputs"][k], want["inputs"][k])
    result = tr.train()
    assert (result.output_dir / "config.json").is_file() and not (result.output_dir / "stages").exists()
    assert {"emb", "hidden", "att"} <= {k for r in result.history if r.get("stage") == "general" for k in r}


def test_general_stage_packed_sequences(teacher_dir, sst2_dir, tmp_path):
    corpus = _corpus(tmp_path)
    method = {"corpus": [str(corpus)], "pack": True}
    cfg = _general(teacher_dir, sst2_dir, tmp_path, method, data={"max_length": 16})
    tr = Trainer(cfg, quiet=True)
    lengths = tr.datasets["corpus"].lengths
    lines = [x for x in corpus.read_text().splitlines() if x.strip()]
    n_tokens = sum(len(ids) for ids in tr.tokenizer(lines, add_special_tokens=False)["input_ids"])
    assert all(n == 16 for n in lengths[:-1]) and 3 <= lengths[-1] <= 16
    assert sum(n - 2 for n in lengths) == n_tokens  # every token once, [CLS] … [SEP] around each block
    result = tr.train()
    assert [r["stage"] for r in result.history if "loss" in r] == ["general"]
    capped = _general(
        teacher_dir, sst2_dir, tmp_path, {**method, "corpus_max_lines": 3}, data={"max_length": 16}
    )
    tr2 = Trainer(capped, quiet=True)
    assert tr2.datasets["corpus"].lengths == lengths[:3]  # the first 3 blocks, from the cached store
    assert tr2.datasets["corpus"].store.root == tr.datasets["corpus"].store.root


def test_general_stage_reads_an_hf_dataset_column(teacher_dir, sst2_dir, tmp_path):
    lines = [x for x in _corpus(tmp_path).read_text().splitlines() if x.strip()]
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(lines)) + "\n")
    method = {"hf_dataset": "json", "hf_data_files": [str(jl)], "hf_column": "body", "corpus_max_lines": 30}
    tr = Trainer(_general(teacher_dir, sst2_dir, tmp_path, method), quiet=True)
    data = tr.datasets["corpus"]
    assert len(data) == 30 and data[7]["input_ids"] == tr.tokenizer(lines[7])["input_ids"]
    result = tr.train()
    assert [r["stage"] for r in result.history if "loss" in r] == ["general"]


def test_general_stage_resume_is_exact(teacher_dir, sst2_dir, tmp_path, monkeypatch):
    """Killed in the general stage (packed corpus store), resumed: the same weights and losses as a run
    that was never interrupted."""
    method = {
        "stages": ["general", "task_intermediate"],
        "corpus": [str(_corpus(tmp_path))],
        "pack": True,
        "general_steps": 4,
        "intermediate_steps": 2,
    }
    sections = {"train": {"max_steps": None, "save_every": 2, "batch_size": 4}, "data": {"max_length": 16}}
    full = distill(_general(teacher_dir, sst2_dir, tmp_path / "full", method, **sections), quiet=True)
    cfg = _general(teacher_dir, sst2_dir, tmp_path / "killed", method, **sections)
    last, resumed = kill_then_resume(cfg, monkeypatch, 1, tmp_path / "killed" / "out")
    assert last == "step-0000002"
    assert [r["stage"] for r in full.history if "loss" in r] == ["general"] * 2 + ["task_intermediate"]
    assert_same_run(full, resumed)


def test_general_teacher_of_another_shape_is_refused(teacher_dir, sst2_dir, tmp_path):
    other = tmp_path / "other-teacher"
    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2)).save_pretrained(other)
    method = {"stages": ["general"], "corpus": [str(_corpus(tmp_path))], "general_teacher": str(other)}
    cfg = _cfg(teacher_dir, sst2_dir, tmp_path, method=method, train={"max_steps": 1})
    with pytest.raises(ConfigError, match="one shape"):
        Trainer(cfg, quiet=True).train()


# ----------------------------------------------------------------------------------------------- augmentation

AUG_VOCAB = [
    *SPECIAL,
    "the",
    "movie",
    "is",
    "was",
    "very",
    "good",
    "bad",
    "plot",
    "fun",
    "##ny",
    "dull",
    "nice",
    "great",
    "##ly",
    "w0",
    "w1",
    "w2",
    "w3",
    "w4",
    "w5",
    "##x",
    ".",
    ",",
]
GLOVE = {
    "funny": [1.0, 0.1, 0.0],
    "hilarious": [0.9, 0.2, 0.0],
    "witty": [0.8, 0.3, 0.1],
    "comic": [0.7, 0.1, 0.3],
    "boring": [-1.0, 0.0, 0.2],
    "tedious": [-0.9, 0.1, 0.2],
    "movie": [0.0, 1.0, 0.0],
}


@pytest.fixture(scope="module")
def augmenter_parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("aug")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(AUG_VOCAB)}, do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(AUG_VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    mlm = BertForMaskedLM(cfg).eval()
    glove = d / "glove.txt"
    glove.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in GLOVE.items()))
    mlm.save_pretrained(d / "mlm")
    tok.save_pretrained(d / "mlm")
    return mlm, tok, GloVeNeighbours(glove), d


def _aug(parts, **kw):
    mlm, tok, glove, _ = parts
    return Augmenter(mlm, tok, glove, AugmentConfig(**{"k": 4, "n": 10, "seed": 0, **kw}))


SENTS = ["the movie was funny", "the plot is very dull .", "good , great and nice", "the w3 greatly movie"]


def test_candidates_single_piece_mlm_multi_piece_glove_stop_words_kept(augmenter_parts):
    aug = _aug(augmenter_parts)
    words = aug.candidates(SENTS)
    first = words[0]
    assert first.words == ["the", "movie", "was", "funny"]
    assert set(first.candidates) == {1, 3}  # "the", "was" are stop words
    assert first.candidates[3] == ["hilarious", "witty", "comic", "movie"]  # fun ##ny → GloVe neighbours
    assert len(first.candidates[1]) <= 4 and not any(
        c.startswith("##") or c in SPECIAL for c in first.candidates[1]
    )
    assert 5 not in words[1].candidates and 4 in words[1].candidates  # "." is not alphabetic; "dull" is
    assert words[3].candidates[2] == ["greatly"]  # great ##ly, no GloVe vector: kept as it is
    assert 1 not in words[3].candidates  # "w3" is not alphabetic
    assert aug.stats["glove_words"] == 1 and aug.stats["mlm_words"] >= 5
    assert not is_candidate_word("don't") and "the" in STOP_WORDS


def test_augmentation_deterministic_p_and_n_respected(augmenter_parts):
    ex = Examples([(s,) for s in SENTS], [0, 1, 1, 0])
    a = augment_examples(ex, _aug(augmenter_parts))
    b = augment_examples(ex, _aug(augmenter_parts, batch_size=1), chunk=1)  # batching does not matter
    assert a.examples.texts == b.examples.texts and a.source_index == b.source_index
    c = augment_examples(ex, _aug(augmenter_parts, seed=1))
    assert c.examples.texts != a.examples.texts
    assert a.examples.labels is None  # never copies gold labels
    for i, s in enumerate(SENTS):
        rows = [t[0] for t, j in zip(a.examples.texts, a.source_index, strict=True) if j == i]
        assert rows[0] == s and len(rows) == len(set(rows)) and 1 <= len(rows) <= 11  # original + ≤ N new
        for r in rows[1:]:
            words, orig = r.split(), s.split()
            assert len(words) == len(orig)
            assert all(w == o for w, o in zip(words, orig, strict=True) if o in STOP_WORDS or not o.isalpha())
    none = augment_examples(ex, _aug(augmenter_parts, p=0.0))
    assert none.examples.texts == [(s,) for s in SENTS]  # p = 0: nothing but the originals
    full = augment_examples(Examples([("the movie was funny",)], None), _aug(augmenter_parts, p=1.0, n=30))
    for (r,) in full.examples.texts[1:]:  # p = 1: every candidate word replaced, stop words never
        w = r.split()
        assert w[0] == "the" and w[2] == "was" and w[3] in {"hilarious", "witty", "comic", "movie"}


def test_cli_augment_a_custom_task_through_its_recipe(augmenter_parts, teacher_dir, tmp_path, capsys):
    """Your own JSONL data: ``augment --recipe`` reads the task, files, text field and train split from the recipe
    of the run the file is for, writes that field, and the run trains on it; without --task or --recipe, or on
    the recipe's evaluation split, it refuses."""
    from conftest import make_sentence

    *_, d = augmenter_parts
    data = tmp_path / "reviews"
    data.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 16), ("valid", 8)):
        rows = [{"review": make_sentence(rng, i % 2), "stars": ["low", "high"][i % 2]} for i in range(n)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    custom = {"task": "custom", "path": str(data), "text_fields": ["review"], "label_field": "stars",
              "labels": ["low", "high"], "eval_split": "valid"}  # fmt: skip
    cfg = _cfg(teacher_dir, data, tmp_path, data=custom, train={"max_steps": 2})
    rec = tmp_path / "reviews.yaml"
    rec.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "aug.jsonl"
    common = ["--mlm", str(d / "mlm"), "--glove", str(d / "glove.txt"), "--n", "3", "--quiet"]
    assert cli_main(["augment", "--recipe", str(rec), "--output", str(out), *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["augmented_examples"] > 16 and all(
        set(r) == {"review", "source_index"} for r in rows
    )
    prov = json.loads(Path(str(out) + ".provenance.json").read_text())["source"]
    assert prov == {
        "task": "custom",
        "recipe": str(rec),
        "data": str(data),
        "split": "train",
        "max_examples": None,
    }
    for argv, message in (
        (["augment", "--output", str(tmp_path / "x.jsonl")], "give --task (a GLUE task) or --recipe"),
        (["augment", "--recipe", str(rec), "--split", "valid", "--output", str(tmp_path / "x.jsonl")],
         "never augment evaluation data"),
    ):  # fmt: skip
        assert cli_main([*argv, *common]) == 2 and message in capsys.readouterr().err
    tr = Trainer(_cfg(teacher_dir, data, tmp_path, data=custom, method={"train_data": str(out)}), quiet=True)
    assert tr.datasets["train"].labels is None and len(tr.datasets["train"]) == len(rows)
    assert tr.datasets["eval"].labels is not None


def _marked_tokenizer(kind, pre_tokenizer=None, text=SENTS):
    """A RoBERTa-style byte-level BPE (``Ġgreat``) or SentencePiece-style Unigram (``▁great``) tokenizer trained on
    SENTS, with RoBERTa's pair template; ``WordLevel``: one that marks no word start."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    if kind == "BPE":
        backend = Tokenizer(models.BPE(unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials)
    elif kind == "Unigram":  # SentencePiece-style pieces given, not trained (too little text to learn words)
        words = sorted({w for line in SENTS for w in line.split()})
        chars = sorted({c for w in words for c in w} | set("tedious"))
        pieces = [(t, 0.0) for t in specials] + [("▁" + w, -1.0) for w in words] + [("▁", -4.0)]
        backend = Tokenizer(models.Unigram([*pieces, *((c, -5.0) for c in chars)], unk_id=3))
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        backend.add_special_tokens(specials)
        trainer = None
    else:
        backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=specials)
    if trainer is not None:
        backend.train_from_iterator(text * 20, trainer)
    ids = {t: backend.token_to_id(t) for t in ("<s>", "</s>")}
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=list(ids.items())
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", cls_token="<s>", sep_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>")  # fmt: skip


@pytest.mark.parametrize("kind", ["BPE", "Unigram"])
def test_augmentation_with_a_bpe_or_sentencepiece_mlm(kind, augmenter_parts):
    """A RoBERTa-style byte-level BPE or SentencePiece-style Unigram MLM: words are plain text (no 'Ġ' / '▁'); a
    one-token word takes the MLM's predicted whole words, decoded; a word of several tokens its GloVe neighbours;
    the MLM reads the tokenizer's own pair encoding (<s> masked </s></s> original </s>) with the word masked."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    tok = _marked_tokenizer(kind)
    mark = "Ġ" if kind == "BPE" else "▁"
    assert non_wordpiece(tok) == kind and word_start_mark(tok) == mark
    torch.manual_seed(0)
    shape = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    mlm = RobertaForMaskedLM(
        RobertaConfig(vocab_size=len(tok), max_position_embeddings=130, type_vocab_size=1, **shape)
    ).eval()
    # the MLM's top 5 everywhere: three whole words (marked) and two pieces that start no word
    top = [mark + "good", mark + "great", mark + "dull", "u", "e"]
    with torch.no_grad():
        for rank, t in enumerate(top):
            mlm.lm_head.bias[tok.convert_tokens_to_ids(t)] += 100.0 - rank
    aug = Augmenter(mlm, tok, augmenter_parts[2], AugmentConfig(k=5, n=10, seed=0))
    sentence = "the movie was tedious ."
    words = aug.split_words(sentence)
    assert words == ["the", "movie", "was", "tedious", "."]
    pieces = aug._pieces(words)
    assert [len(p) for p in pieces[:3]] == [1, 1, 1] and len(pieces[3]) > 1  # "tedious" is not in the corpus
    assert tok.decode([i for p in pieces for i in p]).strip() == sentence

    ids, segs, pos = aug._marked_job(words, 1)  # "movie": the sentence's token 1
    pair = tok(sentence, sentence)[
        "input_ids"
    ]  # the tokenizer's own pair encoding of the original, twice ...
    assert pos == 2 and tok.convert_ids_to_tokens(pair[pos]) == mark + "movie"
    assert ids == [*pair[:pos], tok.mask_token_id, *pair[pos + 1 :]]  # ... with that one token masked
    assert set(segs) == {0}  # RoBERTa's pair template: no segment ids

    [item] = aug.candidates([sentence])
    assert item.candidates == {
        1: ["good", "great", "dull"],  # "movie": the MLM's whole words, decoded; the pieces dropped
        3: augmenter_parts[2].neighbours("tedious", 5),  # several tokens: GloVe
    }  # "the", "was": stop words; ".": not a word
    assert aug.stats["mlm_words"] == 1 and aug.stats["glove_words"] == 1
    rows = aug.augment_texts([(sentence,)])[0]
    assert rows[0] == (sentence,) and len(rows) > 1 and len(rows) == len(set(rows))
    assert all(mark not in r[0] for r in rows)


def test_a_first_word_without_the_mark_takes_unmarked_candidates(augmenter_parts):
    """RoBERTa's own setting (add_prefix_space false): a sentence's first word has no word-start mark, so its
    candidates are the predicted tokens without one that also start words after a space ("the": "Ġthe"), not
    the middles of words; a later word's are the marked ones."""
    from tokenizers import pre_tokenizers
    from transformers import RobertaConfig, RobertaForMaskedLM

    text = [*SENTS, "a good movie , the dull plot"]  # "good" and "the" also after a space
    tok = _marked_tokenizer("BPE", pre_tokenizers.ByteLevel(add_prefix_space=False), text)
    vocab = tok.get_vocab()
    middle = next(
        t for t in sorted(vocab) if t.isalpha() and len(t) > 1 and "Ġ" + t not in vocab
    )  # e.g. "ny"
    torch.manual_seed(0)
    shape = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    mlm = RobertaForMaskedLM(RobertaConfig(vocab_size=len(tok), max_position_embeddings=130, **shape)).eval()
    with torch.no_grad():  # the top 5 everywhere: two words with the mark, two without, a word's middle
        for rank, t in enumerate(["Ġgreat", "good", "Ġdull", "the", middle]):
            mlm.lm_head.bias[tok.convert_tokens_to_ids(t)] += 100.0 - rank
    aug = Augmenter(mlm, tok, None, AugmentConfig(k=5, n=10, seed=0))
    assert not aug.first_marked
    [item] = aug.candidates(["good movie"])
    assert item.candidates == {0: ["good", "the"], 1: ["great", "dull"]}


def test_augmentation_refuses_a_tokenizer_that_marks_no_word_start(augmenter_parts):
    """A non-WordPiece tokenizer without a word-start mark (here WordLevel on whitespace): refused with what to
    do instead, rather than guessing its words."""
    tok = _marked_tokenizer("WordLevel")
    mlm, _, glove, _ = augmenter_parts
    assert non_wordpiece(tok) == "WordLevel" and word_start_mark(tok) is None
    for model in (mlm, None):  # with an MLM, and GloVe-only with --tokenizer
        with pytest.raises(ConfigError, match="WordLevel\\) marks neither"):
            Augmenter(model, tok, glove, AugmentConfig())


def test_sentence_pairs_augment_each_side_with_the_other_original(augmenter_parts):
    ex = Examples([("the movie was funny", "the plot is dull")], [1])
    rows = augment_examples(ex, _aug(augmenter_parts)).examples.texts
    assert rows[0] == ex.texts[0] and len(rows) == len(set(rows))
    assert all(a == "the movie was funny" or b == "the plot is dull" for a, b in rows)
    assert any(a != "the movie was funny" for a, _ in rows) and any(b != "the plot is dull" for _, b in rows)


def test_cli_augment_then_teacher_labels_it(augmenter_parts, teacher_dir, sst2_dir, tmp_path, capsys):
    *_, d = augmenter_parts
    out = tmp_path / "aug" / "train.tsv"
    rc = cli_main(
        [
            "augment",
            "--task",
            "sst2",
            "--data",
            str(sst2_dir),
            "--mlm",
            str(d / "mlm"),
            "--glove",
            str(d / "glove.txt"),
            "--output",
            str(out),
            "--n",
            "3",
            "--max-examples",
            "12",
            "--quiet",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    prov = json.loads((tmp_path / "aug" / "train.tsv.provenance.json").read_text())
    assert (
        prov["parameters"]["n"] == 3 and prov["parameters"]["p"] == 0.4 and prov["source"]["task"] == "sst2"
    )
    assert (
        summary["augmented_examples"] == prov["augmented_examples"] > 12
        and summary["source_sentences_per_s"] > 0
    )
    header = out.read_text().splitlines()[0].split("\t")
    assert header == ["sentence", "source_index"]  # no label column
    assert (
        cli_main(
            [
                "augment",
                "--task",
                "sst2",
                "--data",
                str(sst2_dir),
                "--split",
                "dev",
                "--mlm",
                str(d / "mlm"),
                "--output",
                str(tmp_path / "x.tsv"),
            ]
        )
        == 2
    )  # never augment eval data
    # training on it: no gold labels, the teacher's soft targets; evaluation on the labelled dev set
    cfg = _cfg(
        teacher_dir,
        sst2_dir,
        tmp_path,
        method={"train_data": str(out), "stages": ["task_prediction"]},
        train={"max_steps": 2},
    )
    tr = Trainer(cfg, quiet=True)
    train = tr.datasets["train"]
    assert train.labels is None and len(train) == summary["augmented_examples"]
    assert tr.datasets["eval"].labels is not None
    batch = _batch(tr)
    assert "labels" not in batch
    terms, s_out, t_out = method_terms(tr, batch, tr.stages[0])
    assert torch.allclose(terms["pred"], soft_cross_entropy(s_out.logits, t_out.logits))
    result = tr.train()
    assert "accuracy" in result.metrics
    cache = list((tmp_path / "cache" / "teacher").iterdir())  # relabelled through the teacher cache
    assert len(cache) == 1 and CachedTeacher.open(cache[0], Needs()).tensors["logits"].shape == (
        len(train),
        2,
    )


def test_prediction_stage_fits_the_teacher(teacher_dir, sst2_dir, tmp_path):
    sharp = tmp_path / "sharp-teacher"  # a teacher with confident, varied soft targets
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    with torch.no_grad():
        model.classifier.weight.mul_(300.0)
    model.save_pretrained(sharp)
    BertTokenizerFast.from_pretrained(teacher_dir).save_pretrained(sharp)
    method = {"stages": ["task_prediction"], "prediction_lr": 3e-3}
    train = {"max_steps": 30, "batch_size": 16, "log_every": 1, "save_every": 1000, "warmup_ratio": 0.0}
    cfg = _cfg(sharp, sst2_dir, tmp_path, method=method, data={"max_train_examples": 16}, train=train)
    cfg.student.init, cfg.student.config_overrides = "random", {"hidden_size": 16, "intermediate_size": 32}
    losses = [r["pred"] for r in distill(cfg, quiet=True).history if "pred" in r]
    tr = Trainer(cfg, quiet=True)
    p_t = tr.teacher.features(_batch(tr, 16), Needs(logits=True)).logits.softmax(-1)
    floor = float(-(p_t * p_t.clamp_min(1e-12).log()).sum(-1).mean() / 2)  # soft CE ≥ teacher entropy / C
    assert losses[0] - floor > 0.05  # something to learn
    assert losses[-1] - floor < 0.5 * (losses[0] - floor), (
        losses[-5:],
        floor,
    )  # excess over the floor halved


def test_bench_train_only_shares_runs_and_augmented_files_across_names(
    tmp_path, monkeypatch, teacher_dir, sst2_dir
):
    """``tinybert_bench --train-only``: one core's share of the table trains its rows and writes no result; the
    augmented training file is named by its content, not by ``--name``, so the rows of another name (the scoring
    run's) have the same full config and a run trained under one name is linked, not retrained."""
    from benchmarks import harness as H
    from benchmarks import tinybert_bench
    from bertdistill.training.runs import comparable

    monkeypatch.setattr(tinybert_bench, "WORK", tmp_path / "work")
    monkeypatch.setattr(H, "WORK", tmp_path / "work")
    common = ["--teacher", str(teacher_dir), "--data", str(sst2_dir), "--steps", "2", "--threads", "1"]
    common += ["--max-train-examples", "32", "--aug-examples", "4", "--eval-examples", "16"]

    def configs(name: str) -> dict:
        args = tinybert_bench.parse_args(
            [*common, "--rows", "tinybert_aug-2x192", "nokd-2x192", "--name", name]
        )
        table = tinybert_bench.build_table(args)
        # what decides reuse (everything but the output paths), as run_or_reuse compares it
        return {row.name: comparable(row.config(1, table.common, tmp_path / name)) for row in table.rows}

    assert configs("tinybert_sst2_c0") == configs("tinybert_sst2")
    results = tmp_path / "results"
    argv = [*common, "--rows", "nokd-2x192", "--name", "c0", "--results-dir", str(results), "--train-only"]
    assert tinybert_bench.main(argv) == 0
    assert H.is_finished(tmp_path / "work" / "c0" / "nokd-2x192-seed1")
    assert not results.exists()
